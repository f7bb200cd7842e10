"""Teach dask about our blocks: concatenation, size accounting, meta."""

from __future__ import annotations

from dask.array.dispatch import concatenate_lookup, tensordot_lookup
from dask.sizeof import sizeof

from scdask._ops._sparse import CSCBlock, CSRBlock, concatenate


def _sizeof_block(x) -> int:
    return int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes)


def _tensordot(a, b, axes=2):
    import numpy as np

    a_axes, b_axes = axes
    a_axes = tuple(a_axes) if isinstance(a_axes, (list, tuple)) else (a_axes,)
    b_axes = tuple(b_axes) if isinstance(b_axes, (list, tuple)) else (b_axes,)
    if len(a_axes) != 1 or len(b_axes) != 1:
        raise NotImplementedError("tensordot on sparse blocks contracts exactly one axis")
    left = a if a_axes[0] % 2 == 1 else a.T
    right = b if b_axes[0] % 2 == 0 else b.T
    return np.matmul(left, right)


def register_dask() -> None:
    """Register the block types with dask's dispatch tables (idempotent)."""
    for cls in (CSRBlock, CSCBlock):
        concatenate_lookup.register(cls, concatenate)
        tensordot_lookup.register(cls, _tensordot)
        sizeof.register(cls, _sizeof_block)
