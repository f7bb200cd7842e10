"""The shared block machinery and the numba block kernels of ``recipe`` and ``pca``."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import scdask
from scdask.preprocessing._blocks import block_tasks, map_rows, running_sum, sum_blocks
from scdask.preprocessing._pca import DENSE_GRAM_DENSITY, gram_block, gram_size, unpack_gram
from scdask.preprocessing._qc import _qc_cells, _qc_genes
from scdask.preprocessing._recipe import _lognorm_pass, _qc_pass


def _random_csr(n, p, density, *, seed=0, dtype=np.float64) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    m = sp.random_array((n, p), density=density, format="csr", rng=rng, dtype=dtype)
    m.data = rng.standard_normal(m.nnz).astype(dtype)
    return m


@pytest.mark.parametrize("density", [0.05, 0.4])  # sparse kernel, BLAS
@pytest.mark.parametrize("use_cols", [False, True])
def test_gram_block_equals_dense_product(density, use_cols):
    m = _random_csr(300, 600, density)
    cols = np.sort(np.random.default_rng(1).choice(600, 270, replace=False)) if use_cols else None
    dense = m.toarray() if cols is None else m.toarray()[:, cols]
    packed = gram_block(m, cols)
    assert packed.shape == (gram_size(dense.shape[1]),)
    gram, sums = unpack_gram(packed, dense.shape[1])
    np.testing.assert_allclose(gram, dense.T @ dense, atol=1e-12)
    np.testing.assert_allclose(sums, dense.sum(axis=0), atol=1e-12)


@pytest.mark.parametrize("use_cols", [False, True])
def test_gram_block_dense_columns_of_a_sparse_block(use_cols):
    """A sparse block (7 % non-zero) whose 40 scattered columns are 60 % non-zero: those go
    through BLAS, the pairs among the others through the sparse kernel; same product."""
    rng = np.random.default_rng(3)
    m = _random_csr(300, 600, 0.03, seed=3).toarray()
    busy = rng.choice(600, 40, replace=False)
    m[:, busy] = np.where(rng.random((300, 40)) < 0.6, rng.standard_normal((300, 40)), 0.0)
    block = sp.csr_array(m)
    assert block.nnz / m.size < DENSE_GRAM_DENSITY
    cols = np.sort(rng.choice(600, 330, replace=False)) if use_cols else None
    dense = m if cols is None else m[:, cols]
    gram, sums = unpack_gram(gram_block(block, cols), dense.shape[1])
    np.testing.assert_allclose(gram, dense.T @ dense, atol=1e-12)
    np.testing.assert_allclose(sums, dense.sum(axis=0), atol=1e-12)


def test_gram_block_unsorted_indices_and_explicit_zeros():
    m = _random_csr(50, 700, 0.05)  # more than two tiles of columns
    dense = m.toarray()
    m.data[::7] = 0.0  # explicit zeros
    dense = m.toarray()
    rows = [np.random.default_rng(r).permutation(np.arange(lo, hi)) for r, (lo, hi) in
            enumerate(zip(m.indptr[:-1], m.indptr[1:], strict=True))]  # fmt: skip
    order = np.concatenate(rows)
    shuffled = sp.csr_array((m.data[order], m.indices[order], m.indptr), shape=m.shape)
    gram, _ = unpack_gram(gram_block(shuffled), 700)
    np.testing.assert_allclose(gram, dense.T @ dense, atol=1e-12)


def test_running_sum_any_number_of_parts():
    for n in (1, 2, 4, 5, 9, 17):
        parts = [dask.delayed(np.full(3, float(i))) for i in range(n)]
        np.testing.assert_array_equal(running_sum(parts).compute(), np.full(3, n * (n - 1) / 2))


def test_block_tasks_inline_the_reads(sample_path):
    """No block of X is a key of its own: each is read inside the task that consumes it."""
    x = scdask.read_h5ad(sample_path, chunk_size=100).X
    shared = np.ones(x.shape[1])
    graph, keys = block_tasks(x, lambda b, w: b @ w, shared=[shared])
    assert len(keys) == x.numblocks[0]
    assert not any(isinstance(k, tuple) and k[0] == x.name for k in graph)
    assert sum(1 for k in graph if str(k).startswith("shared-")) == 1
    got = np.concatenate(dask.get(graph, keys))
    np.testing.assert_allclose(got, x.compute().toarray() @ shared)


def test_sum_blocks_and_map_rows_match_numpy():
    x = da.from_array(np.arange(60.0).reshape(12, 5), chunks=(5, 5))
    weights = np.arange(12.0)
    total = sum_blocks(x, lambda b, w: w @ b, (5,), rows=[weights]).compute()
    np.testing.assert_allclose(total, weights @ x.compute())
    rows = map_rows(x, lambda b, v: b @ v, 2, shared=[np.ones((5, 2))], dtype=np.float32)
    assert rows.dtype == np.float32 and rows.chunks == ((5, 5, 2), (2,))
    np.testing.assert_allclose(rows.compute(), x.compute() @ np.ones((5, 2)))


def test_qc_pass_matches_the_qc_kernels():
    m = _random_csr(200, 300, 0.1, dtype=np.float32)
    m.data = np.abs(m.data) * 10
    m.data[::11] = 0.0  # explicit zeros are not detected values
    masks = np.zeros((2, 300), dtype=bool)
    masks[0, :20], masks[1, 100:130] = True, True
    cells, genes = _qc_pass(scdask._ops.as_block(m), masks, min_genes=25)
    np.testing.assert_allclose(cells[:, :-3], _qc_cells(m, masks, ns=()), rtol=1e-6)
    # the last three columns: per cell, values non-finite, negative and not whole
    bad = m.copy()
    bad.data[1], bad.data[2], bad.data[3] = -1.0, np.nan, 4.0
    checks = _qc_pass(scdask._ops.as_block(bad), masks, min_genes=25)[0][:, -3:]
    rows = [scdask._ops.value_problems(bad[[r]]) for r in range(bad.shape[0])]
    np.testing.assert_array_equal(checks, np.array(rows))
    assert checks[:, :2].sum(axis=0).tolist() == [1, 1]
    np.testing.assert_allclose(genes[:2], _qc_genes(m))
    kept = (m.toarray() != 0).sum(axis=1) >= 25
    np.testing.assert_array_equal(genes[2], (m.toarray()[kept] != 0).sum(axis=0))


def test_lognorm_pass_moments():
    m = _random_csr(120, 80, 0.2, dtype=np.float32)
    m.data = np.ceil(np.abs(m.data) * 5)
    cell_keep = np.arange(120) % 4 != 0
    gene_keep = np.arange(80) % 5 != 0
    factor, out = _lognorm_pass(
        m, cell_keep, gene_keep, target_sum=1e4, out_dtype=np.dtype(np.float32), expm1=True
    )
    dense = m.toarray()
    want = (dense @ gene_keep.astype(np.float64)).astype(np.float32) / np.float32(1e4)
    want[want == 0] = 1
    np.testing.assert_array_equal(factor, np.where(cell_keep, want, 1))
    logged = np.log1p(dense[cell_keep] / want[cell_keep, None])
    np.testing.assert_allclose(out[4], logged.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[5], (logged * logged).sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[0], np.expm1(logged).sum(axis=0), rtol=1e-6)
