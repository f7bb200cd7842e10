"""The sparse block type answers numpy's and dask's protocols with numpy's semantics."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from dask.sizeof import sizeof

from scdask._ops import CSCBlock, CSRBlock, as_block


@pytest.fixture
def dense():
    rng = np.random.default_rng(0)
    a = rng.random((60, 40)).astype(np.float32)
    a[a < 0.8] = 0
    return a


@pytest.fixture
def block(dense):
    return CSRBlock(sp.csr_array(dense))


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "any", "all", "prod"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_match_numpy(block, dense, op, axis, keepdims):
    func = getattr(np, op)
    got = func(block, axis=axis, keepdims=keepdims)
    want = func(dense, axis=axis, keepdims=keepdims)
    assert isinstance(got, (np.ndarray, np.generic))
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sum_dtype_is_honoured(block, dense):
    got = np.sum(block, axis=0, dtype=np.float64, keepdims=True)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, dense.sum(axis=0, dtype=np.float64, keepdims=True))


@pytest.mark.parametrize(
    ("func", "sparse_result"),
    [
        (np.log1p, True),
        (np.sqrt, True),
        (np.negative, True),
        (np.expm1, True),
        (np.exp, False),
        (np.cos, False),
    ],
)
def test_unary_ufuncs_keep_sparsity_only_when_zero_maps_to_zero(block, dense, func, sparse_result):
    got = func(block)
    assert sp.issparse(got) is sparse_result
    if sparse_result:
        assert isinstance(got, CSRBlock)
    np.testing.assert_allclose(_dense(got), func(dense), rtol=1e-6)


@pytest.mark.parametrize(
    ("expr", "sparse_result"),
    [
        (lambda x: x * 2, True),
        (lambda x: 2 * x, True),
        (lambda x: x * np.arange(40), True),
        (lambda x: x / (np.arange(60)[:, None] + 1.0), True),
        (lambda x: x**2, True),
        (lambda x: x - 1, False),
        (lambda x: 1 - x, False),
        (lambda x: x + 0.5, False),
        (lambda x: x > 0.9, True),
        (lambda x: x < 0.5, False),
        (lambda x: x * x, True),
        (lambda x: x + x, True),
    ],
)
def test_binary_ops_are_elementwise(block, dense, expr, sparse_result):
    got = expr(block)
    assert sp.issparse(got) is sparse_result
    np.testing.assert_allclose(_dense(got), expr(dense), rtol=1e-6)


def test_division_by_zero_is_not_hidden(block, dense):
    divisor = np.ones((60, 1))
    divisor[3] = 0
    with np.errstate(all="ignore"):
        got, want = block / divisor, dense / divisor
    np.testing.assert_array_equal(np.isnan(_dense(got)), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(_dense(got)), np.isinf(want))


def test_matmul_is_a_product_in_both_directions(block, dense):
    w = np.random.default_rng(1).random((40, 3))
    v = np.random.default_rng(2).random((5, 60))
    for got, want in [
        (block @ w, dense @ w),
        (v @ block, v @ dense),
        (np.matmul(block, w), dense @ w),
    ]:
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    gram = block @ block.T
    assert isinstance(gram, np.ndarray)
    np.testing.assert_allclose(gram, dense @ dense.T, rtol=1e-5)


def test_transpose_slicing_astype_stay_blocks(block, dense):
    assert isinstance(block.T, CSCBlock)
    assert isinstance(np.transpose(block), CSCBlock)
    assert isinstance(block[2:9, ::3], CSRBlock)
    np.testing.assert_array_equal(_dense(block[2:9, ::3]), dense[2:9, ::3])
    assert block.astype(np.float64).dtype == np.float64
    assert isinstance(block.astype(np.float64), CSRBlock)
    np.testing.assert_array_equal(_dense(np.clip(block, 0, 0.9)), np.clip(dense, 0, 0.9))


def test_pickle_sizeof_and_plain_view(block):
    again = pickle.loads(pickle.dumps(block))
    assert isinstance(again, CSRBlock)
    np.testing.assert_array_equal(again.toarray(), block.toarray())
    assert sizeof(block) == block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
    plain = block.to_scipy()
    assert type(plain) is sp.csr_array
    assert np.shares_memory(plain.data, block.data)


def test_as_block_wraps_only_sparse():
    assert isinstance(as_block(sp.random(3, 3, format="coo")), CSRBlock)
    assert isinstance(as_block(sp.random(3, 3, format="csc")), CSCBlock)
    assert type(as_block(sp.csr_matrix(np.eye(2)) @ np.ones((2, 1)))) is np.ndarray


def test_dask_array_of_blocks_answers_the_array_api(block, dense):
    x = da.from_array(block, chunks=(16, 40), asarray=False)
    w = np.random.default_rng(3).random((40, 2))
    checks = {
        "sum0": (x.sum(axis=0), dense.sum(axis=0)),
        "mean1": (x.mean(axis=1), dense.mean(axis=1)),
        "max": (x.max(), dense.max()),
        "var0": (x.var(axis=0), dense.var(axis=0)),
        "matmul": (x @ w, dense @ w),
        "xtx": (x.T @ x, dense.T @ dense),
        "log1p": (np.log1p(x), np.log1p(dense)),
        "slice": (x[::7, 3:9], dense[::7, 3:9]),
        "rowscale": (
            x / (x.sum(axis=1, keepdims=True) + 1),
            dense / (dense.sum(axis=1, keepdims=True) + 1),
        ),
    }
    for name, (lazy, want) in checks.items():
        got = lazy.compute()
        np.testing.assert_allclose(_dense(got), want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert isinstance(np.log1p(x).compute(), CSRBlock)
