"""normalize_total / log1p: lazy, sparse, dtype-preserving; equal to scanpy and to Seurat."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import scdask
from scdask._ops import CSRBlock
from scdask.preprocessing import log1p, normalize_total


def _dense(x) -> np.ndarray:
    x = x.compute() if isinstance(x, da.Array) else x
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def test_lazy_with_target_sum(sample_path, counting_scheduler):
    want = ad.read_h5ad(sample_path)
    sc.pp.normalize_total(want, target_sum=1e4)
    sc.pp.log1p(want)
    got = scdask.read_h5ad(sample_path, chunk_size=100)
    with counting_scheduler(0):
        normalize_total(got, target_sum=1e4)
        log1p(got)
    assert isinstance(got.X, da.Array)
    assert isinstance(got.X._meta, CSRBlock)
    assert got.X.dtype == np.float32
    assert got.uns["log1p"] == {"base": None}
    block = got.X.blocks[0].compute()
    assert isinstance(block, CSRBlock)
    assert block.dtype == np.float32
    np.testing.assert_allclose(_dense(got.X), want.X.toarray(), rtol=1e-6, atol=1e-6)


def test_median_target_and_key_added(pbmc68k_path, counting_scheduler):
    want = ad.read_h5ad(pbmc68k_path)
    sc.pp.normalize_total(want, key_added="size_factor")
    got = scdask.read_h5ad(pbmc68k_path, chunk_size=128)
    with counting_scheduler(1) as counter:
        normalize_total(got, key_added="size_factor")
    assert counter.count == 1
    np.testing.assert_allclose(got.obs["size_factor"], want.obs["size_factor"], rtol=1e-6)
    np.testing.assert_allclose(_dense(got.X), want.X.toarray(), rtol=1e-6)


def test_exclude_highly_expressed(sample_path, counting_scheduler):
    want = ad.read_h5ad(sample_path)
    sc.pp.normalize_total(want, exclude_highly_expressed=True, max_fraction=0.02, target_sum=1e4)
    got = scdask.read_h5ad(sample_path, chunk_size=200)
    with counting_scheduler(1):
        normalize_total(got, exclude_highly_expressed=True, max_fraction=0.02, target_sum=1e4)
    excluded = np.asarray(got.X.sum(axis=1).compute()).ravel()
    assert np.all(excluded > 1e4)  # the excluded genes add to the target
    np.testing.assert_allclose(_dense(got.X), want.X.toarray(), rtol=1e-6)
    with counting_scheduler(2) as counter:
        out = normalize_total(
            scdask.read_h5ad(sample_path), exclude_highly_expressed=True, inplace=False
        )
    assert counter.count == 2
    assert set(out) == {"X", "norm_factor"}


def test_matches_seurat_lognormalize(pbmc_small_path, counting_scheduler):
    seurat = ad.read_h5ad(pbmc_small_path).layers["seurat_lognorm"]
    got = scdask.read_h5ad(pbmc_small_path, chunk_size=30)
    with counting_scheduler(0):
        normalize_total(got, target_sum=1e4)
        log1p(got)
    np.testing.assert_allclose(_dense(got.X), _dense(seurat), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_in_memory_and_integer_input(kind, pbmc68k_path):
    counts = ad.read_h5ad(pbmc68k_path)
    counts.X = counts.X.astype(np.int64)
    if kind == "dense":
        counts.X = counts.X.toarray()
    want, got = counts.copy(), counts.copy()
    sc.pp.normalize_total(want)
    normalize_total(got)
    assert type(got.X) is type(want.X)
    assert got.X.dtype == want.X.dtype == np.float32
    np.testing.assert_allclose(_dense(got.X), _dense(want.X), rtol=1e-6)
    want, got = counts.copy(), counts.copy()
    sc.pp.log1p(want, base=2)
    log1p(got, base=2)
    assert got.X.dtype == want.X.dtype == np.float64
    np.testing.assert_allclose(_dense(got.X), _dense(want.X), rtol=1e-12)


def test_layer_copy_and_zero_cells(pbmc68k_path):
    counts = ad.read_h5ad(pbmc68k_path)
    dense = counts.X.toarray()
    dense[[3, 10]] = 0
    want = ad.AnnData(dense)
    with pytest.warns(UserWarning, match="zero counts"):
        sc.pp.normalize_total(want)
    lazy = ad.AnnData(
        X=np.zeros_like(dense), layers={"counts": da.from_array(dense, chunks=(100, -1))}
    )
    with pytest.warns(UserWarning, match="zero counts"):
        out = normalize_total(lazy, layer="counts", copy=True)
    assert isinstance(out.layers["counts"], da.Array)
    assert not lazy.X.any()
    np.testing.assert_allclose(out.layers["counts"].compute(), want.X, rtol=1e-6)
    assert not out.layers["counts"][[3, 10]].compute().any()
    log1p(out, layer="counts", base=10)
    np.testing.assert_allclose(
        out.layers["counts"].compute(), np.log10(1 + want.X), rtol=1e-6, atol=1e-7
    )


def test_arguments_checked(pbmc68k_path):
    lazy = scdask.read_h5ad(pbmc68k_path)
    with pytest.raises(ValueError, match="max_fraction"):
        normalize_total(lazy, max_fraction=2)
    with pytest.raises(ValueError, match="copy=True"):
        normalize_total(lazy, copy=True, inplace=False)
    log1p(lazy)
    with pytest.warns(UserWarning, match="already log-transformed"):
        log1p(lazy)
