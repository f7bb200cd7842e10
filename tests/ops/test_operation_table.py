"""The dask array API on scdask's blocks, against numpy on the dense array.

A generated table of operations (reductions, ufuncs, broadcasting, integer / slice / mask
indexing, stacking, rechunking, and the compositions users write) runs on a Dask array of
:class:`scdask._ops.CSRBlock` chunks and, with numpy, on the same values dense. For every
operation the test checks what dask promises:

- the values and the dtype are numpy's;
- ``lazy.dtype`` (declared before computing) is the dtype computed;
- ``lazy._meta`` has the type of every computed block (dask builds the next steps from
  ``_meta``: a sparse ``_meta`` over dense blocks is how ``X - X.mean(axis=0)`` was written
  by anndata as a sparse matrix of the dense values).

hypothesis draws the matrix (shape, density, dtype, NaN or not, row and column chunks) and
each operation's parameters; every operation runs on a few draws, bounded to seconds.

Not in the table, because dask itself declares the input's ``_meta`` for chunks it builds
with numpy (for any non-numpy chunk type): ``cumsum``/``cumprod`` and the ``*_like``
creation functions.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scdask._ops import CSCBlock, CSRBlock

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the matrix ---------------------------------------------------------------------------------


class Case:
    """A dense matrix ``d`` and the same values as a Dask array ``x`` of CSR blocks."""

    def __init__(self, draw, *, dtypes=("float32", "float64", "int32", "int64"), nan=True):
        self.draw = draw
        m = draw(st.integers(1, 23), label="rows")
        n = draw(st.integers(1, 9), label="cols")
        dtype = np.dtype(draw(st.sampled_from(dtypes), label="dtype"))
        seed = draw(st.integers(0, 2**16), label="seed")
        density = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]), label="density")
        rng = np.random.default_rng(seed)
        values = rng.integers(-4, 9, size=(m, n)) if dtype.kind == "i" else rng.normal(2, 3, (m, n))
        d = np.where(rng.random((m, n)) < density, values, 0).astype(dtype)
        if nan and dtype.kind == "f" and draw(st.booleans(), label="nan"):
            d[rng.random((m, n)) < 0.1] = np.nan
        self.d, self.m, self.n, self.dtype = d, m, n, dtype
        self.row_chunks = draw(st.integers(1, m), label="row chunk")
        self.col_chunks = draw(st.sampled_from([n, max(1, n // 2)]), label="col chunk")
        block = CSRBlock(sp.csr_array(d))
        self.x = da.from_array(block, chunks=(self.row_chunks, self.col_chunks), asarray=False)
        assert type(self.x._meta) is CSRBlock

    def like(self, a, chunks=None):
        """A Dask array of a dense operand, chunked to line up with ``x``."""
        return da.from_array(a, chunks=chunks or "auto")

    def vector(self, shape, zeros=True):
        rng = np.random.default_rng(self.draw(st.integers(0, 2**16), label="vector seed"))
        v = np.asarray(rng.normal(1, 2, shape).round(1))
        if zeros and v.ndim:
            v[rng.random(shape) < 0.2] = 0
        if self.dtype.kind == "i" and self.draw(st.booleans(), label="int vector"):
            v = v.astype(self.dtype)
        return v


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def check(lazy: da.Array, want, dense_lazy: da.Array, *, rtol=None):
    """Values of ``lazy`` against numpy's ``want``; its declared dtype against numpy's or
    dask's on the dense array (``dense_lazy``: dask's own rules differ from numpy's for 0-d
    Dask operands and integer ``dot``), and equal to every computed block's; its
    ``_meta`` type against the type of every computed block."""
    want = np.asarray(want)
    assert lazy.shape == want.shape, (lazy.shape, want.shape)
    dtype = lazy.dtype
    assert dtype in (want.dtype, dense_lazy.dtype), (dtype, want.dtype, dense_lazy.dtype)
    blocks = dask.compute(*lazy.to_delayed().ravel())
    meta = type(lazy._meta)
    for block in blocks:
        expected = np.ndarray if isinstance(block, np.generic) else type(block)
        assert meta is expected, f"_meta is {meta.__name__}, a block is {type(block).__name__}"
        assert _dense(block).dtype == dtype, (_dense(block).dtype, dtype)
    got = _dense(lazy.compute())
    assert got.shape == want.shape and got.dtype == dtype
    if want.dtype.kind in "biu" and dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        if rtol is None:
            rtol = 1e-4 if min(want.dtype.itemsize, dtype.itemsize) <= 4 else 1e-10
        finite = np.abs(want[np.isfinite(want)]) if want.size else np.zeros(0)
        scale = float(finite.max()) if finite.size else 1.0
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True)


def run(fn, c: Case, **kw):
    """``fn(array, module)`` on the Dask array of blocks, numpy's dense array and a dense
    Dask array of the same chunks; numpy's warnings silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want = fn(c.d, np)
        lazy = fn(c.x, da)
        dense_lazy = fn(da.from_array(c.d, chunks=c.x.chunks), da)
        check(lazy, want, dense_lazy, **kw)


# -- the table: name -> (draw, case) -> runs and checks one operation ----------------------------

AXES = st.sampled_from([None, 0, 1, -1, (0, 1)])


def reduction(name, *, keepdims=True):
    def op(draw, c):
        axis = draw(AXES, label="axis")
        kd = draw(st.booleans(), label="keepdims") if keepdims else False
        kwargs = {"axis": axis, **({"keepdims": True} if kd else {})}
        if name in ("max", "min", "nanmax", "nanmin", "argmax", "argmin") and 0 in c.d.shape:
            return
        if name in ("argmax", "argmin"):
            if axis in ((0, 1), -1):
                axis = 1
            run(lambda a, m: getattr(m, name)(a, axis=axis), c)
            return
        run(lambda a, m: getattr(m, name)(a, **kwargs), c)

    return op


def ufunc_unary(name, *, domain=None):
    def op(draw, c):
        if domain == "nonneg":
            c.d = np.abs(c.d)
            c.x = abs(c.x)
        if domain == "bool":
            t = draw(st.sampled_from([0, 1.5]), label="threshold")
            run(lambda a, m: getattr(np, name)(a > t), c)
            return
        run(lambda a, m: getattr(np, name)(a), c)

    return op


SCALARS = st.sampled_from([0, 1, -1, 2, 2.5, -0.5, 0.0, np.float32(3), np.int64(2), np.inf])
BINARY = [
    "add",
    "subtract",
    "multiply",
    "true_divide",
    "floor_divide",
    "remainder",
    "power",
    "greater",
    "less",
    "equal",
    "not_equal",
    "maximum",
    "minimum",
]


def with_scalar(draw, c):
    name = draw(st.sampled_from(BINARY), label="ufunc")
    s = draw(SCALARS, label="scalar")
    if name == "power" and (s == np.inf or (c.dtype.kind == "i" and s < 0)):
        s = 2
    if c.dtype.kind == "i" and name in ("floor_divide", "remainder") and s == np.inf:
        s = 3
    if draw(st.booleans(), label="scalar first"):
        run(lambda a, m: getattr(np, name)(s, a), c)
    else:
        run(lambda a, m: getattr(np, name)(a, s), c)


def with_operator(draw, c):
    s = draw(st.sampled_from([2, 0.5, -1, 0]), label="scalar")
    expr = draw(
        st.sampled_from(
            [
                "x*s",
                "s*x",
                "x/s",
                "x+s",
                "s-x",
                "x**2",
                "-x",
                "abs(x)",
                "+x",
                "x>s",
                "x<=s",
                "x==s",
                "x!=s",
                "x*x",
                "x+x",
                "x-x",
                "x/x",
                "x*(x>s)",
                "(x>s)&(x<4)",
                "(x>s)|(x<0)",
                "~(x>s)",
                "(x>s)^(x<1)",
                "x//2",
                "x%3",
            ]
        ),
        label="expr",
    )
    run(lambda a, m: eval(expr, {"abs": abs}, {"x": a, "s": s}), c)


def broadcast(draw, c):
    name = draw(
        st.sampled_from(
            [
                "add",
                "subtract",
                "multiply",
                "true_divide",
                "greater",
                "maximum",
                "equal",
                "logical_and",
            ]
        ),
        label="ufunc",
    )
    shape = draw(st.sampled_from([(c.n,), (1, c.n), (c.m, 1), (c.m, c.n), ()]), label="shape")
    v = c.vector(shape)
    as_dask = draw(st.booleans(), label="dask operand")
    chunks = {
        (c.n,): (c.col_chunks,),
        (1, c.n): (1, c.col_chunks),
        (c.m, 1): (c.row_chunks, 1),
        (c.m, c.n): (c.row_chunks, c.col_chunks),
        (): (),
    }[shape]
    first = draw(st.booleans(), label="sparse first")

    def fn(a, m):
        w = c.like(v, chunks) if (m is da and as_dask) else v
        return getattr(np, name)(a, w) if first else getattr(np, name)(w, a)

    run(fn, c)


def indexing(draw, c):
    rng = np.random.default_rng(draw(st.integers(0, 99), label="index seed"))
    i = draw(st.integers(-c.m, c.m - 1), label="row")
    j = draw(st.integers(-c.n, c.n - 1), label="col")
    step = draw(st.sampled_from([1, 2, -1, -3]), label="step")
    rows = rng.integers(0, c.m, size=draw(st.integers(0, 6), label="n rows"))
    cols = rng.integers(0, c.n, size=draw(st.integers(1, 6), label="n cols"))
    mask = rng.random(c.m) < 0.5
    key = draw(
        st.sampled_from(
            [
                "i",
                "(slice(None), j)",
                "(i, j)",
                "slice(None, None, step)",
                "(slice(1, None), slice(None, None, step))",
                "mask",
                "(mask, slice(None))",
                "(slice(None), cols)",
                "rows",
                "np.sort(rows)",
                "(None, slice(None))",
                "(Ellipsis, j)",
                "(slice(None), None, slice(None))",
                "(rows, slice(0, 1))",
            ]
        ),
        label="key",
    )
    k = eval(
        key,
        {"np": np, "slice": slice, "Ellipsis": Ellipsis},
        {"i": i, "j": j, "step": step, "rows": rows, "cols": cols, "mask": mask},
    )
    run(lambda a, m: a[k], c)
    then = draw(st.sampled_from(["sum", "mean", "max"]), label="then")
    if then == "max" and 0 in np.shape(c.d[k]):
        return
    run(lambda a, m: getattr(a[k], then)(), c)


def stacking(draw, c):
    how = draw(st.sampled_from(["stack", "concatenate", "vstack", "hstack"]), label="how")
    axis = draw(st.sampled_from([0, 1, 2, -1] if how == "stack" else [0, 1]), label="axis")
    if how in ("vstack", "hstack"):
        run(lambda a, m: getattr(m, how)([a, a * 2]), c)
    else:
        run(lambda a, m: getattr(m, how)([a, a * 2], axis=axis), c)


def rechunk(draw, c):
    rows = draw(st.integers(1, c.m), label="rows")
    cols = draw(st.integers(1, c.n), label="cols")
    then = draw(st.sampled_from(["x", "x.sum(axis=0)", "x.T", "x[::2]", "np.log1p(abs(x))"]))

    def fn(a, m):
        x = a.rechunk((rows, cols)) if m is da else a
        return eval(then, {"np": np, "abs": abs}, {"x": x})

    run(fn, c)


def matmul(draw, c):
    side = draw(st.sampled_from(["x@w", "w@x", "x.T@x", "x@x.T", "x@v", "dot"]), label="side")
    w = c.vector((c.n, 3), zeros=False)
    u = c.vector((2, c.m), zeros=False)
    v = c.vector((c.n,), zeros=False)
    if c.dtype.kind == "f":
        c.d[np.isnan(c.d)] = 1
        c.x = c.x.map_blocks(lambda b: np.nan_to_num(b, nan=1), dtype=c.x.dtype, meta=c.x._meta)
    exprs = {
        "x@w": lambda a, m: a @ w,
        "w@x": lambda a, m: u @ a,
        "x.T@x": lambda a, m: a.T @ a,
        "x@x.T": lambda a, m: a @ a.T,
        "x@v": lambda a, m: a @ v,
        "dot": lambda a, m: m.dot(a, w),
    }
    run(exprs[side], c, rtol=1e-4 if c.dtype.itemsize <= 4 else 1e-9)


def shape_ops(draw, c):
    expr = draw(
        st.sampled_from(
            [
                "x.T",
                "x.reshape(-1)",
                "x.ravel()",
                "x.reshape((x.shape[0], -1))",
                "x.T.T",
                "x.astype('float64')",
                "x.astype('int16')",
                "x.transpose()",
                "np.transpose(x)",
            ]
        ),
        label="expr",
    )
    run(lambda a, m: eval(expr, {"np": np}, {"x": a}), c)


def compositions(draw, c):
    expr = draw(
        st.sampled_from(
            [
                "x - x.mean(axis=0)",
                "x - x.mean()",
                "(x - x.mean(axis=0)) / (x.std(axis=0) + 1)",
                "x / (x.sum(axis=1, keepdims=True) + 1)",
                "x * (1 / (x.max(axis=0) + 1))",
                "x - x.mean(axis=0, keepdims=True)",
                "m.where(x > 1, x, 0)",
                "m.where(x > 1, x, -1)",
                "m.clip(x, 0, 2)",
                "m.clip(x, 1, 2)",
                "m.round(x, 1)",
                "m.isnan(x).sum(axis=0)",
                "(~m.isnan(x)).sum(axis=1)",
                "m.nan_to_num(x)",
                "m.count_nonzero(x, axis=0)",
                "m.log1p(abs(x)) * 2",
                "m.sqrt(abs(x)) / (abs(x).sum(axis=0) + 1)",
                "x[x.sum(axis=1) > 0] if m is np else x[(x.sum(axis=1) > 0).compute()]",
            ]
        ),
        label="expr",
    )
    run(lambda a, m: eval(expr, {"m": m, "np": np, "abs": abs}, {"x": a}), c)


REDUCTIONS = ["sum", "mean", "prod", "any", "all", "max", "min", "var", "std"]
NAN_REDUCTIONS = ["nansum", "nanmean", "nanmax", "nanmin", "nanvar", "nanstd"]
TABLE = {
    **{f"reduce.{r}": reduction(r) for r in REDUCTIONS + NAN_REDUCTIONS},
    **{f"reduce.{r}": reduction(r, keepdims=False) for r in ["argmax", "argmin"]},
    **{
        f"ufunc.{u}": ufunc_unary(u)
        for u in [
            "negative",
            "absolute",
            "log1p",
            "expm1",
            "exp",
            "sin",
            "cos",
            "isnan",
            "isfinite",
            "sign",
            "square",
            "floor",
            "rint",
            "positive",
        ]
    },
    "ufunc.sqrt": ufunc_unary("sqrt", domain="nonneg"),
    "ufunc.invert": ufunc_unary("invert", domain="bool"),
    "ufunc.logical_not": ufunc_unary("logical_not", domain="bool"),
    "scalar": with_scalar,
    "operator": with_operator,
    "broadcast": broadcast,
    "index": indexing,
    "stack": stacking,
    "rechunk": rechunk,
    "matmul": matmul,
    "shape": shape_ops,
    "compose": compositions,
}


@pytest.mark.parametrize("name", TABLE)
@SETTINGS
@given(data=st.data())
def test_operation_matches_numpy_and_meta(name, data):
    TABLE[name](data.draw, Case(data.draw))


@SETTINGS
@given(data=st.data())
def test_column_blocks_are_csc_and_meta_follows(data):
    c = Case(data.draw, nan=False)
    t = c.x.T
    assert type(t._meta) is CSCBlock
    run(lambda a, m: a.T * 2, c)
    run(lambda a, m: a.T @ a.T.T, c, rtol=1e-4 if c.dtype.itemsize <= 4 else 1e-9)


def test_xarray_mean_on_blocks():
    xr = pytest.importorskip("xarray")
    d = np.arange(24, dtype=np.float32).reshape(6, 4) % 5
    x = da.from_array(CSRBlock(sp.csr_array(d)), chunks=(4, 4), asarray=False)
    arr = xr.DataArray(x, dims=("cell", "gene"))
    np.testing.assert_allclose(arr.mean("cell").values, d.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(float(arr.mean()), d.mean(), rtol=1e-6)
    np.testing.assert_allclose(arr.std("gene").values, d.std(axis=1), rtol=1e-5)
