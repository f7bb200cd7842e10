"""ridge(): secactpy.ridge to rounding, in memory and on dask arrays."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from scdask._compute import SHARED_PREFIX
from scdask._ops import CSRBlock
from scdask.activity import SparseTargets, build_model, projection_matrix, ridge, ridge_block
from scdask.activity._ridge import _MIN_SPARSE_ROWS, _TILE, _aligned_zeros, _tables

secactpy = pytest.importorskip("secactpy")

STATS = ("beta", "se", "zscore", "pvalue")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    n, p = 400, 30
    x = rng.standard_normal((n, p))
    y = x @ rng.standard_normal((p, 45)) * 0.05 + rng.standard_normal((n, 45))
    return x, y  # secactpy orientation: genes x proteins, genes x samples


def _reference(x, y, **kwargs):
    return secactpy.ridge(x, y, backend="numpy", verbose=False, **kwargs)


def _check(mine, ref, *, exact_p=True):
    for name in STATS:
        a, b = np.asarray(mine[name]).T, ref[name]
        if name == "pvalue" and exact_p:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


@pytest.mark.parametrize("rng", ["srand", "gsl", "numpy"])
@pytest.mark.parametrize("m", [3, 45])  # fewer samples than proteins, and more
@pytest.mark.parametrize("lambda_", [5e5, 10.0])
def test_matches_secactpy(problem, rng, m, lambda_):
    x, y = problem
    y = y[:, :m]
    ref = _reference(x, y, lambda_=lambda_, n_rand=150, seed=3, rng_method=rng)
    _check(ridge(y.T, x, lambda_=lambda_, n_rand=150, seed=3, rng=rng), ref)


def test_t_test_matches_secactpy(problem):
    x, y = problem
    ref = _reference(x, y, n_rand=0, lambda_=100.0)
    _check(ridge(y.T, x, n_rand=0, lambda_=100.0), ref, exact_p=False)
    lazy = ridge(da.from_array(y.T, chunks=(10, 400)), x, n_rand=0, lambda_=100.0)
    _check(dask.compute(lazy)[0], ref, exact_p=False)


def test_projection_matrix_is_the_ridge_solution(problem):
    x, _ = problem
    t = projection_matrix(x, 10.0)
    expected = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T)
    np.testing.assert_allclose(t, expected, rtol=1e-12, atol=1e-15)
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(build_model(x, 10.0).tt, t.T)


def test_dask_input_same_numbers_one_key_each(problem):
    x, y = problem
    expected = ridge(y.T, x, n_rand=60)
    lazy = ridge(da.from_array(y.T, chunks=(8, 200)), x, n_rand=60)
    graph = dask.base.collections_to_expr(list(lazy.values())).__dask_graph__()
    names = [k[0] if isinstance(k, tuple) else k for k in graph]
    # one shared key each (scdask._compute.shared)
    assert sum(n.startswith(SHARED_PREFIX + "build_model-") for n in names) == 1
    assert sum(n.startswith(SHARED_PREFIX + "tables-") for n in names) == 1
    computed = dask.compute(lazy)[0]
    for name in STATS:
        assert computed[name].shape == (45, 30)
        np.testing.assert_allclose(computed[name], expected[name], rtol=1e-12, atol=1e-15)


def test_sparse_blocks_are_densified_per_chunk(problem):
    x, y = problem
    y = np.where(np.abs(y) > 1, y, 0.0)
    expected = ridge(y.T, x, n_rand=30)
    blocks = da.from_array(CSRBlock(sp.csr_array(y.T)), chunks=(10, 400), asarray=False)
    lazy = ridge(blocks, x, n_rand=30, chunk_rows=3)
    for name in STATS:
        np.testing.assert_allclose(lazy[name].compute(), expected[name], rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def sparse_problem():
    """Sparse samples (16% non-zero) enough for the sparse kernel, over two protein tiles
    (the second one partial)."""
    rng = np.random.default_rng(11)
    n, p, m = 300, _TILE + 6, 3 * _MIN_SPARSE_ROWS
    x = rng.standard_normal((n, p))
    y = sp.random_array((m, n), density=0.16, rng=rng, data_sampler=rng.random, format="csr")
    return x, y


def test_sparse_kernel_matches_secactpy(sparse_problem):
    x, y = sparse_problem
    ref = _reference(x, y.toarray().T, n_rand=80, seed=5)
    _check(ridge(y, x, n_rand=80, seed=5), ref)  # in memory: tiles split over threads
    blocks = da.from_array(CSRBlock(y), chunks=(_MIN_SPARSE_ROWS + 10, x.shape[0]), asarray=False)
    _check(dask.compute(ridge(blocks, x, n_rand=80, seed=5))[0], ref)


def test_sparse_targets_corrections_equal_dense_targets(sparse_problem):
    """a·(z - r) - b per row through the kernel's output corrections = the dense targets."""
    x, z = sparse_problem
    rng = np.random.default_rng(2)
    m, n = z.shape
    targets = SparseTargets(z, rng.random(m) + 0.5, rng.standard_normal(m), rng.random(n))
    targets.scale[3] = 0.0  # an empty cell: all-zero targets
    targets.offset[3] = 0.0
    model = build_model(x)
    tables = _tables(n, 40, 0, "srand")
    got = ridge_block(z, model, tables, transform=lambda part: targets)
    expected = ridge_block(targets.dense(), model, tables)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert (got[3, 0] == 0).all() and (got[3, 3] == 1).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (128, 64)])
def test_kernel_buffers_are_cache_line_aligned(shape, dtype):
    for _ in range(20):  # numpy's own buffers land on 16-byte boundaries, some on 64
        buf = _aligned_zeros(shape, dtype)
        assert buf.ctypes.data % 64 == 0
        assert buf.shape == shape and buf.dtype == dtype and buf.flags.c_contiguous
        assert not buf.any()


def test_sparse_kernel_float32(sparse_problem):
    x, y = sparse_problem
    z64 = ridge(y, x, n_rand=100)["zscore"]
    z32 = ridge(y, x, n_rand=100, dtype=np.float32)["zscore"]
    np.testing.assert_allclose(z32, z64, rtol=0, atol=1e-4)
    assert not np.array_equal(z32, z64)


def test_float32(problem):
    x, y = problem
    z64 = ridge(y.T, x, n_rand=100)["zscore"]
    z32 = ridge(y.T, x, n_rand=100, dtype=np.float32)["zscore"]
    np.testing.assert_allclose(z32, z64, rtol=0, atol=1e-4)
    assert not np.array_equal(z32, z64)


def test_zero_column_is_neutral(problem):
    x, y = problem
    y = y[:, :4].copy()
    y[:, 2] = 0.0
    ref = _reference(x, y, n_rand=50)
    mine = ridge(y.T, x, n_rand=50)
    _check(mine, ref)
    assert (mine["pvalue"][2] == 1).all() and (mine["zscore"][2] == 0).all()


def test_bad_arguments(problem):
    x, y = problem
    with pytest.raises(ValueError, match="genes"):
        ridge(y, x)
    with pytest.raises(ValueError, match="rng must be"):
        ridge(y.T, x, rng="mt")
    with pytest.raises(ValueError, match="n_rand"):
        ridge(y.T, x, n_rand=-1)
