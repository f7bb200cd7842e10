"""Teach dask about our blocks: concatenation, contraction, size accounting, NaN counts."""

from __future__ import annotations

import numpy as np
from dask.array.dispatch import concatenate_lookup, nannumel_lookup, tensordot_lookup
from dask.sizeof import sizeof

from scdask._ops._sparse import CSCBlock, CSRBlock, _normalize_axis, concatenate


def _sizeof_block(x) -> int:
    return int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes)


def _tensordot(a, b, axes=2):
    a_axes, b_axes = axes
    a_axes = tuple(a_axes) if isinstance(a_axes, (list, tuple)) else (a_axes,)
    b_axes = tuple(b_axes) if isinstance(b_axes, (list, tuple)) else (b_axes,)
    if len(a_axes) != 1 or len(b_axes) != 1:
        raise NotImplementedError("tensordot on sparse blocks contracts exactly one axis")
    left = a if a_axes[0] % 2 == 1 else a.T
    right = b if b_axes[0] % 2 == 0 else b.T
    return np.matmul(left, right)


def _nannumel(x, axis=None, keepdims=False, dtype=None, **kwargs):
    """How many values are not NaN (dask's ``nanmean``/``nanvar``), from the stored values:
    an implicit zero is never NaN, so nothing is densified."""
    nan = x._with_data(np.isnan(x.data) if x.dtype.kind in "fc" else np.zeros(x.nnz, bool))
    missing = np.sum(nan.astype(np.intp), axis=axis, keepdims=keepdims)
    ax = _normalize_axis(axis, 2)
    total = x.shape[0] * x.shape[1] if ax is None else 1 if ax == () else x.shape[ax]
    return np.asarray(total - missing, dtype=dtype)


def register_dask() -> None:
    """Register the block types with dask's dispatch tables (idempotent)."""
    for cls in (CSRBlock, CSCBlock):
        concatenate_lookup.register(cls, concatenate)
        tensordot_lookup.register(cls, _tensordot)
        nannumel_lookup.register(cls, _nannumel)
        sizeof.register(cls, _sizeof_block)
