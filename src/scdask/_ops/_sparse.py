"""Sparse blocks that speak the numpy/dask array protocols.

scipy's CSR refuses what dask asks of a chunk: reductions are called with ``keepdims``,
``np.matmul`` is a ufunc, ``*`` on ``csr_matrix`` is a matrix product and ``x - 1`` raises.
pydata ``sparse.GCXS`` accepts all of it but was measured 100-250x slower than scipy for
column sums, scaling and ``log1p`` on a 20,000 x 20,000 block at 6% density (numba kernels),
so it cannot be the compute path.

:class:`CSRBlock` and :class:`CSCBlock` subclass scipy's CSR/CSC types and add the missing
protocol: numpy reductions with ``keepdims``, ``__array_ufunc__`` (elementwise semantics,
``out=`` written into), ``__array_function__`` for the functions dask calls on chunks, and
operators with numpy's elementwise semantics. Anything without a sparse rule is computed on
the dense block, so results are always right; only memory grows.

The base class is the one the installed scanpy checks for, chosen once at import
(:data:`BLOCK_BASE`): scanpy before 1.12 accepts only ``csr_matrix``/``csc_matrix`` (its
dask paths test ``isinstance(x._meta, csr_matrix)``), so there the blocks are matrices;
with scanpy 1.12 or newer, or without scanpy, they are ``csr_array``/``csc_array``. The
environment variable ``SCDASK_BLOCK_BASE=matrix|array`` overrides the choice. Whatever the
base, the constructor, ``copy()`` and pickling behave like the parent's, and on matrices so
do ``sum``/``mean``/``max``/``min`` called as scipy's or numpy's are on a ``csr_matrix``
(``x.sum(axis=0)``, ``np.sum(x, axis=0)``: an ``np.matrix``), which scanpy 1.11 relies on;
with ``keepdims`` (what dask passes) they answer as numpy does. ``size`` is numpy's
(rows x columns; scipy's is ``nnz``, which made dask's ``max`` skip blocks without stored
values). ``to_scipy()`` is always a plain ``csr_array``/``csc_array`` view.

Sparse or dense, the same for every block: whether a result is sparse depends only on the
operation, the dtypes and the values of Python numbers, never on the values in an array
operand (numpy scalars count as arrays: dask's 0-d results are numpy scalars in the blocks
and 0-d arrays in ``_meta``), so dask's ``_meta`` (the operation run on an empty block) has
the type of every computed block. With an array operand the result is sparse when the
operation maps an implicit zero to zero for ordinary values (``x * v``, ``x / v``,
``x & m``), dense otherwise (``x - v``, ``x > v``); where the values make an implicit zero
non-zero (``x / 0``, ``x * inf``) those entries are stored, so the values are numpy's.
numpy functions that write into an argument (``np.putmask``, ``np.copyto``, ...) refuse a
sparse block, as scipy's do, rather than write into a dense copy.
"""

from __future__ import annotations

import functools
import math
import os
import re
from importlib import metadata

import numpy as np
import scipy.sparse as sp

__all__ = ["BLOCK_BASE", "CSCBlock", "CSRBlock", "as_block", "concatenate", "is_sparse_block"]


def _scanpy_accepts_sparse_arrays() -> bool:
    """Whether the installed scanpy takes ``csr_array`` where it takes ``csr_matrix``."""
    try:
        version = metadata.version("scanpy")
    except metadata.PackageNotFoundError:
        return True
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    return tuple(numbers) >= (1, 12)


def _choose_base() -> str:
    forced = os.environ.get("SCDASK_BLOCK_BASE", "").strip().lower()
    if forced in ("matrix", "array"):
        return forced
    return "array" if _scanpy_accepts_sparse_arrays() else "matrix"


#: ``"matrix"`` (blocks subclass ``csr_matrix``/``csc_matrix``) or ``"array"``
#: (``csr_array``/``csc_array``); see the module docstring.
BLOCK_BASE: str = _choose_base()
_CSR_BASE, _CSC_BASE = (
    (sp.csr_matrix, sp.csc_matrix) if BLOCK_BASE == "matrix" else (sp.csr_array, sp.csc_array)
)
_MATRIX = BLOCK_BASE == "matrix"


class _Unset:
    """Marks an argument that was not passed (``keepdims`` on the reduction methods)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _flag(value) -> bool:
    return value is not _UNSET and value is not np._NoValue and bool(value)


# -- reductions -------------------------------------------------------------------------------

_REDUCTIONS = {
    func: op
    for name, op in [
        ("sum", "sum"),
        ("mean", "mean"),
        ("max", "max"),
        ("min", "min"),
        ("amax", "max"),
        ("amin", "min"),
        ("any", "any"),
        ("all", "all"),
        ("prod", "prod"),
        ("nansum", "nansum"),
        ("nanmean", "nanmean"),
        ("nanmax", "nanmax"),
        ("nanmin", "nanmin"),
        ("nanprod", "nanprod"),
    ]
    if (func := getattr(np, name, None)) is not None
}
_UNTYPED = ("max", "min", "nanmax", "nanmin", "any", "all")  # no dtype= in numpy
_NAN_FREE = {
    "nansum": "sum",
    "nanmean": "mean",
    "nanmax": "max",
    "nanmin": "min",
    "nanprod": "prod",
}


def _normalize_axis(axis, ndim: int = 2):
    """``None`` for a reduction over every axis, ``()`` for none, else the one axis (0 or 1)."""
    if axis is None:
        return None
    axes = set()
    for a in axis if isinstance(axis, (tuple, list)) else (axis,):
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        axes.add(a % ndim)
    if not axes:
        return ()
    return None if len(axes) >= ndim else axes.pop()


def _keep(result, axis, keepdims: bool, dtype=None):
    """A reduction result with numpy's shape: 1-D (or a scalar), or 2-D with ``keepdims``."""
    result = np.asarray(result.toarray() if sp.issparse(result) else result)
    if dtype is not None and result.dtype != np.dtype(dtype):
        result = result.astype(dtype)
    if not keepdims:
        return result.reshape(-1) if axis is not None else result.reshape(())[()]
    if axis is None:
        return result.reshape(1, 1)
    return result.reshape((1, -1) if axis == 0 else (-1, 1))


# -- helpers ----------------------------------------------------------------------------------


def _plain(x):
    """A block as plain scipy (no copy), so scipy's own operators run; others unchanged."""
    return x.to_scipy() if isinstance(x, _BlockMixin) else x


def _dense(x):
    """``x`` as numpy: sparse densified, lists and tuples (of blocks) element by element."""
    if sp.issparse(x):
        return x.toarray()
    if isinstance(x, np.matrix):
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_dense(v) for v in x)
    return x


def _is_scalar(v) -> bool:
    """Python numbers: the same value when dask computes ``_meta`` and when it computes a
    block. numpy scalars are not: dask's 0-d results (``x - x.mean()``) are numpy scalars in
    the blocks and 0-d arrays in ``_meta``, so they follow the rule for arrays."""
    return isinstance(v, (bool, int, float, complex)) and not isinstance(v, np.generic)


def _zero_preserving(ufunc, dtype, other=None, *, sparse_first: bool = True, **kwargs) -> bool:
    """Whether ``ufunc`` maps an implicit zero to zero for ``other`` (a scalar or None)."""
    zero = np.zeros((), dtype=dtype)
    with np.errstate(all="ignore"):
        if other is None:
            out = ufunc(zero, **kwargs)
        else:
            out = ufunc(zero, other, **kwargs) if sparse_first else ufunc(other, zero, **kwargs)
    return not np.any(np.asarray(out) != 0)


_PROBES = {"b": [True], "u": [1, 2, 7], "i": [1, -1, 2, -3, 7], "f": [1.0, -1.0, 0.5, -2.5, 7.0]}


@functools.lru_cache(maxsize=512)
def _absorbs(ufunc, dtype: np.dtype, other_dtype: np.dtype, sparse_first: bool) -> bool:
    """Whether ``ufunc(0, y)`` (``ufunc(y, 0)`` with the block second) is 0 for ordinary
    non-zero ``y`` of ``other_dtype``: the type-level rule for array operands."""
    kind = "f" if other_dtype.kind == "c" else other_dtype.kind
    if kind not in _PROBES:
        return False
    probes = np.asarray(_PROBES[kind]).astype(other_dtype)
    zero = np.zeros(probes.shape, dtype=dtype)
    try:
        with np.errstate(all="ignore"):
            out = ufunc(zero, probes) if sparse_first else ufunc(probes, zero)
    except TypeError:
        return False
    return not np.any(np.asarray(out) != 0)


def _canonical(x):
    if not x.has_canonical_format:
        x.sum_duplicates()
    return x


def _from_dense(dense, fmt: str):
    """A dense 2-D result as a block of format ``fmt`` (zeros dropped)."""
    plain = sp.csr_array(dense) if fmt == "csr" else sp.csc_array(dense)
    return as_block(plain)


def _resolve_shape(shape, size: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    unknown = [i for i, s in enumerate(shape) if s == -1]
    known = math.prod(s for s in shape if s != -1)
    if len(unknown) > 1:
        raise ValueError("can only specify one unknown dimension")
    if unknown:
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if math.prod(shape) != size:
        raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
    return shape


def _expand_key(key) -> tuple:
    """An index as a tuple with ``...`` spelled out for two dimensions (``None`` kept)."""
    key = key if isinstance(key, tuple) else (key,)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(
        (np.ndim(k) if isinstance(k, (np.ndarray, list)) and np.asarray(k).dtype == bool else 1)
        for k in key
        if k is not None and k is not Ellipsis
    )
    fill = (slice(None),) * max(0, 2 - used)
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        return key[:i] + fill + key[i + 1 :]
    return key + fill


def _simple_key(key: tuple) -> bool:
    """Whether the two-axis ``key`` keeps both axes: slices and at most one 1-D index array."""
    if len(key) != 2:
        return False
    arrays = 0
    for k in key:
        if isinstance(k, slice):
            continue
        if not isinstance(k, (list, np.ndarray)):
            return False
        arr = np.asarray(k)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "biu"):
            return False
        arrays += 1
    return arrays <= 1


# -- the blocks -------------------------------------------------------------------------------


class _BlockMixin:
    """Protocol shared by the CSR and CSC blocks; results are wrapped back into blocks."""

    __array_priority__ = 20

    # -- reductions -----------------------------------------------------------------------
    def _reduce(self, op, axis=None, dtype=None, out=None, keepdims=False, **kwargs):
        keepdims = _flag(keepdims)
        extra = {k: v for k, v in kwargs.items() if v is not np._NoValue and k != "where"}
        where = kwargs.get("where", True)
        ax = _normalize_axis(axis, 2)
        if extra or where is not True or 0 in self.shape or ax == ():
            # numpy's own rules (``initial``, ``where``, empty blocks): on the dense block.
            dense_kwargs = {"where": where} if where is not True else {}
            if dtype is not None and op not in _UNTYPED:
                dense_kwargs["dtype"] = dtype
            result = getattr(np, op)(
                self.toarray(), axis=axis, keepdims=keepdims, **extra, **dense_kwargs
            )
            return _write_reduction(result, out)
        if op.startswith("nan"):
            if np.issubdtype(self.dtype, np.inexact) and np.isnan(self.data).any():
                typed = {} if op in ("nanmax", "nanmin") or dtype is None else {"dtype": dtype}
                result = getattr(np, op)(self.toarray(), axis=axis, keepdims=keepdims, **typed)
                return _write_reduction(result, out)
            op = _NAN_FREE[op]
        base = self.to_scipy()
        if op in ("any", "all", "max", "min"):
            base = _canonical(base)  # duplicates add up: what is stored twice counts once
        if op == "any":
            result = (base._with_data(base.data != 0).sum(axis=ax)) > 0
        elif op == "all":
            nnz = base._with_data(base.data != 0).sum(axis=ax)
            full = self.shape[0] * self.shape[1] if ax is None else self.shape[ax]
            result = np.asarray(nnz) == full
        elif op == "prod":
            result = np.prod(self.toarray(), axis=ax, dtype=dtype)
        elif op in ("max", "min"):
            result = getattr(base, op)(axis=ax)
            if dtype is not None:
                result = np.asarray(_dense(result)).astype(dtype)
        else:
            if dtype is not None and np.dtype(dtype) != base.dtype:
                base = base.astype(dtype)  # accumulate in the requested precision
            result = getattr(base, op)(axis=ax, dtype=dtype)
        return _write_reduction(_keep(result, ax, keepdims, dtype), out)

    def _scipy_reduction(self, op, axis, dtype, out, keepdims, kwargs):
        if _MATRIX and keepdims is _UNSET and out is None and not kwargs:
            # Called the way scipy's own method is: scipy's answer (an np.matrix, or sparse
            # for max/min), as tools written for ``csr_matrix`` expect.
            plain = self._parent_view()
            method = getattr(plain, op)
            return method(axis=axis, dtype=dtype) if op in ("sum", "mean") else method(axis=axis)
        return self._reduce(op, axis, dtype, out, keepdims, **kwargs)

    def sum(self, axis=None, dtype=None, out=None, keepdims=_UNSET, **kwargs):
        return self._scipy_reduction("sum", axis, dtype, out, keepdims, kwargs)

    def mean(self, axis=None, dtype=None, out=None, keepdims=_UNSET, **kwargs):
        return self._scipy_reduction("mean", axis, dtype, out, keepdims, kwargs)

    def max(self, axis=None, out=None, keepdims=_UNSET, **kwargs):
        return self._scipy_reduction("max", axis, None, out, keepdims, kwargs)

    def min(self, axis=None, out=None, keepdims=_UNSET, **kwargs):
        return self._scipy_reduction("min", axis, None, out, keepdims, kwargs)

    # -- numpy protocols ------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a sparse block cannot be seen as a dense array without a copy")
        dense = self.toarray()
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if any(not _handled(type(i)) for i in (*inputs, *(out or ()))):
            return NotImplemented
        if method != "__call__" or ufunc.nout != 1 or kwargs.get("where", True) is not True:
            dense_out = {} if out is None else {"out": tuple(_dense_out(o) for o in out)}
            return getattr(ufunc, method)(*(_dense(i) for i in inputs), **kwargs, **dense_out)
        result = _call_ufunc(ufunc, inputs, kwargs)
        if out is None:
            return result
        return _write_out(result, out[0], kwargs.get("casting", "same_kind"), ufunc)

    def __array_function__(self, func, types, args, kwargs):
        if not all(_handled(t) for t in types):
            return NotImplemented
        handler = _FUNCTIONS.get(func)
        if handler is not None:
            result = handler(*args, **kwargs)
            if result is not NotImplemented:
                return result
        op = _REDUCTIONS.get(func)
        if op is not None:
            x, *rest = args
            names = (
                ("axis", "out", "keepdims")
                if op in _UNTYPED
                else ("axis", "dtype", "out", "keepdims")
            )
            kwargs = {**dict(zip(names, rest, strict=False)), **kwargs}
            if not isinstance(x, _BlockMixin):
                return func(_dense(x), **{k: _dense(v) for k, v in kwargs.items()})
            if op in ("sum", "mean", "max", "min"):
                # As numpy calls the methods of a scipy matrix: scipy's answer when called
                # without keepdims on a matrix base (np.sum(csr_matrix, axis=0) is an np.matrix).
                return getattr(x, op)(**kwargs)
            return x._reduce(op, **kwargs)
        if func in _IN_PLACE and sp.issparse(args[0]):
            # numpy would write into a dense copy and lose it; scipy refuses these too.
            raise TypeError(
                f"numpy.{func.__name__} writes into its first argument, which cannot be a sparse "
                "block: densify it first (block.toarray())"
            )
        if sp.issparse(kwargs.get("out")):
            raise TypeError(f"numpy.{func.__name__} cannot write into a sparse out=")
        return func(*_dense(tuple(args)), **{k: _dense(v) for k, v in kwargs.items()})

    # -- operators: numpy's elementwise semantics, never a matrix product -------------------
    def __mul__(self, other):
        return np.multiply(self, other)

    def __rmul__(self, other):
        return np.multiply(other, self)

    def __truediv__(self, other):
        return np.true_divide(self, other)

    def __rtruediv__(self, other):
        return np.true_divide(other, self)

    def __floordiv__(self, other):
        return np.floor_divide(self, other)

    def __rfloordiv__(self, other):
        return np.floor_divide(other, self)

    def __mod__(self, other):
        return np.remainder(self, other)

    def __rmod__(self, other):
        return np.remainder(other, self)

    def __add__(self, other):
        return np.add(self, other)

    def __radd__(self, other):
        return np.add(other, self)

    def __sub__(self, other):
        return np.subtract(self, other)

    def __rsub__(self, other):
        return np.subtract(other, self)

    def __pow__(self, other):
        return np.power(self, other)

    def __rpow__(self, other):
        return np.power(other, self)

    def __and__(self, other):
        return np.bitwise_and(self, other)

    def __rand__(self, other):
        return np.bitwise_and(other, self)

    def __or__(self, other):
        return np.bitwise_or(self, other)

    def __ror__(self, other):
        return np.bitwise_or(other, self)

    def __xor__(self, other):
        return np.bitwise_xor(self, other)

    def __rxor__(self, other):
        return np.bitwise_xor(other, self)

    def __neg__(self):
        return np.negative(self)

    def __pos__(self):
        return np.positive(self)

    def __abs__(self):
        return np.absolute(self)

    def __invert__(self):
        return np.invert(self)

    def __matmul__(self, other):
        return np.matmul(self, other)

    def __rmatmul__(self, other):
        return np.matmul(other, self)

    def __eq__(self, other):
        return np.equal(self, other)

    def __ne__(self, other):
        return np.not_equal(self, other)

    def __lt__(self, other):
        return np.less(self, other)

    def __le__(self, other):
        return np.less_equal(self, other)

    def __gt__(self, other):
        return np.greater(self, other)

    def __ge__(self, other):
        return np.greater_equal(self, other)

    def _inplace(self, ufunc, other):
        result = ufunc(self, other)
        if sp.issparse(result) and result.shape == self.shape:
            return _write_out(result, self, "same_kind", ufunc)
        return result  # numpy would refuse to store a dense result in a sparse array: rebind

    def __iadd__(self, other):
        return self._inplace(np.add, other)

    def __isub__(self, other):
        return self._inplace(np.subtract, other)

    def __imul__(self, other):
        return self._inplace(np.multiply, other)

    def __itruediv__(self, other):
        return self._inplace(np.true_divide, other)

    __hash__ = None

    # -- indexing and shape: numpy's semantics ----------------------------------------------
    @property
    def size(self) -> int:
        """Number of elements, as numpy counts them (scipy's ``size`` is ``nnz``: dask's
        max/min take a block without stored values for an empty one)."""
        return int(self.shape[0]) * int(self.shape[1])

    def __getitem__(self, key):
        key = _expand_key(key)
        if _simple_key(key):
            return as_block(super().__getitem__(key))
        if any(k is None for k in key):
            return self.toarray()[key]
        # Integer or point-wise indices: numpy drops axes, scipy keeps them (matrices) or
        # returns 1-D sparse (arrays). The result has at most one axis: densify it.
        shape = np.broadcast_to(np.zeros((), dtype=bool), self.shape)[key].shape
        result = super().__getitem__(key)
        result = np.asarray(result.toarray() if sp.issparse(result) else result)
        result = result.reshape(shape)
        return result[()] if shape == () else result

    def reshape(self, *args, order="C", copy=False):
        shape = args[0] if len(args) == 1 and not isinstance(args[0], (int, np.integer)) else args
        shape = _resolve_shape(shape, self.shape[0] * self.shape[1])
        if len(shape) == 2:
            if shape == self.shape:
                return self.copy() if copy else self
            return as_block(self.to_scipy().reshape(shape, order=order))
        return self.toarray().reshape(shape, order=order)

    def astype(self, dtype, casting="unsafe", copy=True):
        return as_block(super().astype(dtype, casting=casting, copy=copy))

    def copy(self):
        return as_block(super().copy())

    def transpose(self, axes=None, copy=False):
        return as_block(super().transpose(axes=axes, copy=copy))

    @property
    def T(self):
        return self.transpose()

    def to_scipy(self):
        """The same data as a plain scipy ``csr_array``/``csc_array`` (no copy)."""
        base = sp.csr_array if self.format == "csr" else sp.csc_array
        return base((self.data, self.indices, self.indptr), shape=self.shape, copy=False)

    def _parent_view(self):
        """The same data as a plain object of the parent class (no copy)."""
        base = _CSR_BASE if self.format == "csr" else _CSC_BASE
        return base((self.data, self.indices, self.indptr), shape=self.shape, copy=False)


def _handled(t) -> bool:
    return issubclass(t, (np.ndarray, np.generic, _BlockMixin, sp.spmatrix, sp.sparray)) or t in (
        bool,
        int,
        float,
        complex,
        list,
        tuple,
    )


def _dense_out(o):
    if sp.issparse(o):
        raise TypeError("out= must be a numpy array for this operation on a sparse block")
    return o


def _write_reduction(result, out):
    if out is None:
        return result
    out[...] = result
    return out


def _write_out(result, target, casting, ufunc):
    """Store ``result`` in ``target`` (numpy's ``out=``) and return ``target``."""
    if isinstance(target, np.ndarray):
        np.copyto(target, _dense(result), casting=casting)
        return target
    if not sp.issparse(target):
        raise TypeError(f"out= must be an array, got {type(target).__name__}")
    if not sp.issparse(result):
        raise TypeError(
            f"{ufunc.__name__} gives a dense result here, which cannot be written into a sparse "
            "out=; leave out= unset or pass a numpy array"
        )
    if result.shape != target.shape:
        raise ValueError(f"out= has shape {target.shape}, the result {result.shape}")
    if not np.can_cast(result.dtype, target.dtype, casting=casting):
        raise TypeError(
            f"cannot cast the {ufunc.__name__} result from {result.dtype} to {target.dtype} "
            f"with casting rule {casting!r}"
        )
    result = result.asformat(target.format)
    same = (
        result.nnz == target.nnz
        and np.array_equal(result.indptr, target.indptr)
        and np.array_equal(result.indices, target.indices)
    )
    if same:
        np.copyto(target.data, result.data, casting="unsafe")
    else:
        target.data = result.data.astype(target.dtype, copy=False)
        target.indices, target.indptr = result.indices, result.indptr
        target.has_sorted_indices = result.has_sorted_indices
    return target


# -- ufuncs -----------------------------------------------------------------------------------


def _call_ufunc(ufunc, inputs, kwargs):
    if ufunc is np.matmul:
        return _matmul(*inputs, **kwargs)
    if ufunc.nin == 1:
        (x,) = inputs
        if _zero_preserving(ufunc, x.dtype, **kwargs):
            x = _canonical(x)
            with np.errstate(all="ignore"):
                data = ufunc(x.data, **kwargs)
            return as_block(x._with_data(data, copy=True))
        return ufunc(x.toarray(), **kwargs)
    if ufunc.nin == 2:
        return _binary(ufunc, *inputs, **kwargs)
    return ufunc(*(_dense(i) for i in inputs), **kwargs)


def _matmul(a, b, **kwargs):
    a, b = _plain(a), _plain(b)
    if kwargs:
        return np.matmul(_dense(a), _dense(b), **kwargs)
    dtype = np.result_type(_dtype_of(a), _dtype_of(b))
    out = (b.T @ np.asarray(a).T).T if not sp.issparse(a) else a @ b
    # numpy semantics (and dask's matmul, which adds an axis to the result): dense, in
    # numpy's dtype (scipy sums int32 products in int64).
    out = _dense(out) if sp.issparse(out) else np.asarray(out)
    return out if out.dtype == dtype else out.astype(dtype)


def _dtype_of(x):
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _binary(ufunc, a, b, **kwargs):
    """Elementwise binary op with at least one sparse operand (numpy semantics)."""
    if sp.issparse(a) and sp.issparse(b):
        return _binary_sparse(ufunc, a, b, **kwargs)
    sparse_first = sp.issparse(a)
    x, other = (a, b) if sparse_first else (b, a)
    if _is_scalar(other):
        if _zero_preserving(ufunc, x.dtype, other, sparse_first=sparse_first, **kwargs):
            return _on_stored(ufunc, x, other, sparse_first, kwargs)
        return ufunc(_dense(a), _dense(b), **kwargs)
    other = np.asarray(other)
    if sparse_first:
        b = other
    else:
        a = other
    shape = np.broadcast_shapes(x.shape, other.shape)
    if len(shape) != 2 or not _absorbs(ufunc, x.dtype, other.dtype, sparse_first) or kwargs:
        return ufunc(_dense(a), _dense(b), **kwargs)
    with np.errstate(all="ignore"):
        zero = np.zeros((), dtype=x.dtype)
        at_zero = ufunc(zero, other) if sparse_first else ufunc(other, zero)
    if shape != x.shape or np.any(np.asarray(at_zero) != 0):
        # Broadcasting the block, or values for which an implicit zero is not zero
        # (0 / 0, 0 * inf): numpy's values, stored sparse.
        with np.errstate(all="ignore"):
            dense = ufunc(_dense(a), _dense(b))
        return _from_dense(dense, x.format)
    return _on_stored(ufunc, x, other, sparse_first, kwargs)


def _on_stored(ufunc, x, other, sparse_first: bool, kwargs):
    """``ufunc`` on the stored entries only (the caller checked that zeros stay zeros)."""
    x = _canonical(x)
    values = _at_stored(x, other) if isinstance(other, np.ndarray) and other.ndim else other
    with np.errstate(all="ignore"):
        data = ufunc(x.data, values, **kwargs) if sparse_first else ufunc(values, x.data, **kwargs)
    return as_block(x._with_data(np.asarray(data), copy=True))


def _at_stored(x, other: np.ndarray) -> np.ndarray:
    """``other`` broadcast to ``x``'s shape, at ``x``'s stored entries (storage order)."""
    grid = other.reshape((1,) * (2 - other.ndim) + other.shape)
    if x.format == "csc":  # the same walk on the transpose
        grid = grid.T
    by_row, by_col = grid.shape[0] != 1, grid.shape[1] != 1
    if by_row and by_col:
        major = np.repeat(np.arange(len(x.indptr) - 1), np.diff(x.indptr))
        return grid[major, x.indices]
    if by_row:  # one value per row of a CSR (column of a CSC): the row scaling
        return np.repeat(grid[:, 0], np.diff(x.indptr))
    if by_col:  # one value per column of a CSR
        return grid[0][x.indices]
    return np.broadcast_to(grid.reshape(1), (x.nnz,))  # 1-D: numpy's promotion of an array


def _binary_sparse(ufunc, a, b, **kwargs):
    """Both operands sparse: sparse exactly when ``ufunc(0, 0) == 0``."""
    if not _zero_preserving(ufunc, a.dtype, np.zeros((), dtype=b.dtype)[()], **kwargs):
        return ufunc(_dense(a), _dense(b), **kwargs)
    fmt = a.format if a.format in ("csr", "csc") else "csr"
    finite = all(np.issubdtype(m.dtype, np.integer) or np.isfinite(m.data).all() for m in (a, b))
    if a.shape == b.shape and finite and not kwargs and a.dtype != bool and b.dtype != bool:
        pa, pb = sp.csr_array(_plain(a)), sp.csr_array(_plain(b))
        if ufunc is np.multiply:
            return as_block(pa.multiply(pb).asformat(fmt))
        if ufunc is np.add:
            return as_block((pa + pb).asformat(fmt))
        if ufunc is np.subtract:
            return as_block((pa - pb).asformat(fmt))
    with np.errstate(all="ignore"):
        dense = ufunc(_dense(a), _dense(b), **kwargs)
    return _from_dense(dense, fmt) if np.ndim(dense) == 2 else dense


# -- numpy functions --------------------------------------------------------------------------


def _fn_transpose(x, axes=None):
    if axes is not None and tuple(axes) == (0, 1):
        return x
    return as_block(x.T)


def _fn_clip(x, a_min=None, a_max=None, out=None, **kwargs):
    lo = kwargs.pop("min", a_min)
    hi = kwargs.pop("max", a_max)
    bounds_scalar = all(v is None or _is_scalar(v) for v in (lo, hi))
    if (
        isinstance(x, _BlockMixin)
        and out is None
        and not kwargs
        and bounds_scalar
        and (lo is None or lo <= 0)
        and (hi is None or hi >= 0)
    ):
        x = _canonical(x)
        return as_block(x._with_data(np.clip(x.data, lo, hi), copy=True))
    result = np.clip(_dense(x), lo, hi, **kwargs)
    return result if out is None else _write_out(result, out, "same_kind", np.clip)


def _fn_round(x, decimals=0, out=None):
    if out is not None or not isinstance(x, _BlockMixin):
        return NotImplemented
    x = _canonical(x)
    return as_block(x._with_data(np.round(x.data, decimals), copy=True))


def _fn_count_nonzero(x, axis=None, *, keepdims=False):
    if not isinstance(x, _BlockMixin):
        return NotImplemented
    base = _canonical(x.to_scipy())
    ax = _normalize_axis(axis, 2)
    counts = base._with_data((base.data != 0).astype(np.intp)).sum(axis=ax)
    if ax is None and not keepdims:
        return int(counts)
    return _keep(counts, ax, keepdims, np.intp)


def _fn_dot(a, b, out=None):
    if out is None and np.ndim(a) == 2 and np.ndim(b) in (1, 2):
        return np.matmul(a, b)
    return NotImplemented


def _fn_tensordot(a, b, axes=2):
    if isinstance(axes, int) or np.ndim(a) != 2 or np.ndim(b) != 2:
        return NotImplemented
    try:
        from scdask._ops._register import _tensordot

        return _tensordot(a, b, axes)
    except NotImplementedError:
        return NotImplemented


def _like(x, fill, dtype=None, shape=None):
    """``np.zeros_like`` & co. on a block: a block of the same format (zeros stored not)."""
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    shape = x.shape if shape is None else (tuple(shape) if np.ndim(shape) else (int(shape),))
    if len(shape) != 2:
        return np.full(shape, fill, dtype=dtype)
    if fill == 0:
        empty = (sp.csr_array if x.format == "csr" else sp.csc_array)(shape, dtype=dtype)
        return as_block(empty)
    return _from_dense(np.full(shape, fill, dtype=dtype), x.format)


def _fn_zeros_like(a, dtype=None, order="K", subok=True, shape=None, **kwargs):
    return _like(a, 0, dtype, shape)


def _fn_empty_like(a, dtype=None, order="K", subok=True, shape=None, **kwargs):
    return _like(a, 0, dtype, shape)


def _fn_ones_like(a, dtype=None, order="K", subok=True, shape=None, **kwargs):
    return _like(a, 1, dtype, shape)


def _fn_full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, **kwargs):
    return _like(a, fill_value, dtype, shape)


def _dtype_only(func):
    """Functions that look only at dtypes: an empty stand-in instead of densifying."""

    def handler(*args, **kwargs):
        swap = [np.empty((0, 0), dtype=a.dtype) if sp.issparse(a) else a for a in args]
        return func(*swap, **kwargs)

    return handler


_FUNCTIONS = {
    np.transpose: _fn_transpose,
    np.concatenate: lambda arrays, axis=0, **kw: concatenate(arrays, axis=axis, **kw),
    np.vstack: lambda tup, **kw: concatenate(tup, axis=0) if not kw else NotImplemented,
    np.hstack: lambda tup, **kw: concatenate(tup, axis=1) if not kw else NotImplemented,
    np.clip: _fn_clip,
    np.count_nonzero: _fn_count_nonzero,
    np.copy: lambda a, order="K", subok=False: a.copy() if sp.issparse(a) else NotImplemented,
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.shape[0] * a.shape[1] if axis is None else a.shape[axis],
    np.dot: _fn_dot,
    np.tensordot: _fn_tensordot,
    np.zeros_like: _fn_zeros_like,
    np.empty_like: _fn_empty_like,
    np.ones_like: _fn_ones_like,
    np.full_like: _fn_full_like,
    np.result_type: _dtype_only(np.result_type),
    np.can_cast: _dtype_only(np.can_cast),
}
#: numpy functions that write into their first argument.
_IN_PLACE = {
    func
    for name in ("putmask", "place", "put", "put_along_axis", "copyto", "fill_diagonal")
    if (func := getattr(np, name, None)) is not None
}

for _name in ("round", "around"):
    if (_func := getattr(np, _name, None)) is not None:
        _FUNCTIONS[_func] = _fn_round


# -- the classes ------------------------------------------------------------------------------


class CSRBlock(_BlockMixin, _CSR_BASE):
    """A row block of cells x genes in compressed sparse row form (a scipy CSR subclass).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from scdask._ops import CSRBlock
    >>> b = CSRBlock(sp.csr_array(np.eye(3)))
    >>> np.sum(b, axis=0, keepdims=True)
    array([[1., 1., 1.]])
    >>> (b * 2)[1].tolist()
    [0.0, 2.0, 0.0]
    """


class CSCBlock(_BlockMixin, _CSC_BASE):
    """The transpose of a :class:`CSRBlock` (compressed sparse column form)."""


def is_sparse_block(x) -> bool:
    """Whether ``x`` is a scipy sparse matrix or array (a block of ours included)."""
    return sp.issparse(x)


def as_block(x):
    """Wrap a scipy sparse result as a :class:`CSRBlock`/:class:`CSCBlock`; pass dense through.

    Sparse results that are not 2-D are returned dense, as numpy would.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> type(as_block(sp.random(4, 3, format="csr"))).__name__
    'CSRBlock'
    """
    if not sp.issparse(x):
        return np.asarray(x) if isinstance(x, np.matrix) else x
    if x.ndim != 2:
        return x.toarray()
    if isinstance(x, (CSRBlock, CSCBlock)):
        return x
    if x.format == "csc":
        return CSCBlock(x, copy=False)
    return CSRBlock(x if x.format == "csr" else x.tocsr(), copy=False)


def concatenate(arrays, axis=0, **kwargs):
    """Concatenate blocks (sparse stays sparse, in CSR form); used by dask's ``concatenate``."""
    arrays = list(arrays)
    if len(arrays) == 1 and not kwargs:
        return as_block(arrays[0])  # nothing to join: no copy
    if not any(sp.issparse(a) for a in arrays):
        return np.concatenate(arrays, axis=axis, **kwargs)
    if kwargs or not all(sp.issparse(a) for a in arrays) or axis is None or not -2 <= axis < 2:
        return np.concatenate([_dense(a) for a in arrays], axis=axis, **kwargs)
    stack = sp.vstack if axis % 2 == 0 else sp.hstack
    fmt = "csr" if axis % 2 == 0 else arrays[0].format
    return as_block(stack([_plain(a) for a in arrays], format=fmt))
