"""scdask.pp.pca against scanpy.pp.pca in memory: subspace, variances, signs, passes."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scdask
from scdask.preprocessing import highly_variable_genes, log1p, normalize_total
from scdask.preprocessing._pca import flip_signs, pca
from scdask.preprocessing._scale import scale

N_TOP = 500


def _abs_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|cos| between matching columns of two loading matrices."""
    return np.abs(np.sum(a * b, axis=0)) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)


def _prepare_memory(memory: ad.AnnData) -> ad.AnnData:
    """scanpy: normalise, log1p, HVG (flag only), in memory."""
    memory = memory.copy()
    sc.pp.normalize_total(memory, target_sum=1e4)
    sc.pp.log1p(memory)
    sc.pp.highly_variable_genes(memory, n_top_genes=N_TOP)
    return memory


def _prepare_lazy(lazy: ad.AnnData, hvg: np.ndarray) -> ad.AnnData:
    normalize_total(lazy, target_sum=1e4)
    log1p(lazy)
    lazy.var["highly_variable"] = hvg
    return lazy


@pytest.fixture(scope="module")
def references(sample_path, pbmc68k_path):
    """Per dataset: the scanpy-prepared AnnData and its scaled HVG subset with exact PCA."""
    out = {}
    for name, path in (("pbmc68k", pbmc68k_path), ("sample", sample_path)):
        memory = ad.read_h5ad(path)
        if name == "sample":
            memory = memory[:, np.asarray((memory.X > 0).sum(axis=0)).ravel() >= 3].copy()
        memory = _prepare_memory(memory)
        scaled = memory[:, memory.var["highly_variable"].to_numpy()].copy()
        sc.pp.scale(scaled, max_value=10)
        sc.pp.pca(scaled, n_comps=30, svd_solver="covariance_eigh")
        out[name] = (memory, scaled)
    return out


def _lazy(name, references, sample_lazy, pbmc68k_path, chunk_size=128) -> ad.AnnData:
    memory, _ = references[name]
    if name == "pbmc68k":
        lazy = scdask.read_h5ad(pbmc68k_path, chunk_size=chunk_size)
    else:
        lazy = sample_lazy(chunk_size)
    return _prepare_lazy(lazy, memory.var["highly_variable"].to_numpy())


@pytest.mark.parametrize("name", ["pbmc68k", "sample"])
def test_covariance_matches_scanpy(name, references, sample_lazy, pbmc68k_path, counting_scheduler):
    _, want = references[name]
    lazy = _lazy(name, references, sample_lazy, pbmc68k_path)
    lazy = lazy[:, lazy.var["highly_variable"].to_numpy()].copy()
    scale(lazy, max_value=10)
    with counting_scheduler(2) as counter:
        pca(lazy, n_comps=30, svd_solver="covariance")
    assert counter.count == 2
    got_pcs, want_pcs = lazy.varm["PCs"], want.varm["PCs"]
    assert _abs_cos(got_pcs, want_pcs)[:20].min() >= 0.9999
    # same sign convention as scanpy/scikit-learn: loadings agree, not only up to sign
    assert np.sum(got_pcs * want_pcs, axis=0)[:20].min() > 0
    np.testing.assert_allclose(
        lazy.uns["pca"]["variance_ratio"], want.uns["pca"]["variance_ratio"], atol=1e-4
    )
    np.testing.assert_allclose(lazy.uns["pca"]["variance"], want.uns["pca"]["variance"], rtol=1e-5)
    assert lazy.obsm["X_pca"].dtype == np.float32
    np.testing.assert_allclose(lazy.obsm["X_pca"][:, :20], want.obsm["X_pca"][:, :20], atol=1e-3)
    assert lazy.uns["pca"]["params"]["zero_center"] is True


def test_sparse_input_mask_var_implicit_centring(references, sample_lazy, pbmc68k_path):
    """Unscaled sparse log data, HVG mask from var (scanpy's default): centring stays implicit."""
    memory, _ = references["pbmc68k"]
    lazy = _lazy("pbmc68k", references, sample_lazy, pbmc68k_path)
    assert sp.issparse(lazy.X._meta)
    pca(lazy, n_comps=15)
    want = memory.copy()
    sc.pp.pca(want, n_comps=15, svd_solver="covariance_eigh")
    hvg = memory.var["highly_variable"].to_numpy()
    assert np.all(lazy.varm["PCs"][~hvg] == 0)
    assert _abs_cos(lazy.varm["PCs"][hvg], want.varm["PCs"][hvg]).min() >= 0.9999
    np.testing.assert_allclose(
        lazy.uns["pca"]["variance_ratio"], want.uns["pca"]["variance_ratio"], atol=1e-6
    )
    assert lazy.uns["pca"]["params"]["mask_var"] == "highly_variable"


def test_randomized_close_to_exact(references, sample_lazy, pbmc68k_path):
    """Randomized subspace iteration (8 passes): leading PCs and variance ratios."""
    _, want = references["sample"]
    lazy = _lazy("sample", references, sample_lazy, pbmc68k_path)
    lazy = lazy[:, lazy.var["highly_variable"].to_numpy()].copy()
    scale(lazy, max_value=10)
    pca(lazy, n_comps=30, svd_solver="randomized", random_state=0)
    cos = _abs_cos(lazy.varm["PCs"], want.varm["PCs"])
    assert cos[:10].min() >= 0.999
    assert cos[:20].min() >= 0.98
    np.testing.assert_allclose(
        lazy.uns["pca"]["variance_ratio"][:20], want.uns["pca"]["variance_ratio"][:20], atol=2e-4
    )
    assert lazy.uns["pca"]["params"]["svd_solver"] == "randomized"


def test_uncentred_matches_exact_truncated_svd(references, sample_lazy, pbmc68k_path):
    """zero_center=False: scikit-learn's TruncatedSVD convention, against an exact SVD."""
    memory, _ = references["pbmc68k"]
    lazy = _lazy("pbmc68k", references, sample_lazy, pbmc68k_path)
    pca(lazy, n_comps=10, zero_center=False, mask_var=None)
    x = memory.X.toarray().astype(np.float64)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    want = flip_signs(vt[:10].T)
    assert _abs_cos(lazy.varm["PCs"], want).min() >= 0.9999
    variance = (x @ want).var(axis=0)
    np.testing.assert_allclose(lazy.uns["pca"]["variance"], variance, rtol=1e-5)
    np.testing.assert_allclose(
        lazy.uns["pca"]["variance_ratio"], variance / x.var(axis=0).sum(), rtol=1e-5
    )
    # scanpy (randomized TruncatedSVD) agrees on the well-separated leading components
    memory = memory.copy()
    sc.pp.pca(memory, n_comps=10, zero_center=False, mask_var=None)
    assert _abs_cos(lazy.varm["PCs"], memory.varm["PCs"])[:5].min() >= 0.9999


def test_in_memory_input_and_key_added():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    adata = ad.AnnData(X=x.copy())
    pca(adata, n_comps=4, key_added="p4")
    want = ad.AnnData(X=x.copy())
    sc.pp.pca(want, n_comps=4, svd_solver="covariance_eigh")
    assert _abs_cos(adata.varm["p4"], want.varm["PCs"]).min() >= 0.9999
    np.testing.assert_allclose(adata.obsm["p4"], want.obsm["X_pca"], atol=1e-4)
    assert "pca" not in adata.uns


def test_mask_arguments(references, sample_lazy, pbmc68k_path):
    memory, _ = references["pbmc68k"]
    mask = memory.var_names.str.startswith("RP")
    lazy = _lazy("pbmc68k", references, sample_lazy, pbmc68k_path)
    pca(lazy, n_comps=5, mask_var=mask)
    want = memory[:, mask].copy()
    sc.pp.pca(want, n_comps=5, svd_solver="covariance_eigh", mask_var=None)
    assert _abs_cos(lazy.varm["PCs"][mask], want.varm["PCs"]).min() >= 0.9999
    assert np.all(lazy.varm["PCs"][~mask] == 0)
    pca(lazy, n_comps=5, use_highly_variable=False)
    assert lazy.uns["pca"]["params"]["mask_var"] is None
    assert np.count_nonzero(lazy.varm["PCs"].any(axis=1)) > mask.sum()
    with pytest.raises(ValueError, match="not both"):
        pca(lazy, n_comps=5, mask_var=mask, use_highly_variable=True)
    with pytest.raises(ValueError, match="one entry per gene"):
        pca(lazy, n_comps=5, mask_var=mask[:-1])


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_sparse_and_dense_gram_agree(density, monkeypatch, pbmc68k_path):
    """The Gram of a sparse block is the same whether scipy or BLAS computes it."""
    lazy = scdask.read_h5ad(pbmc68k_path, chunk_size=300)
    log1p(lazy)
    pca(lazy, n_comps=5, mask_var=None)
    monkeypatch.setattr("scdask.preprocessing._pca.DENSE_GRAM_DENSITY", density)
    again = scdask.read_h5ad(pbmc68k_path, chunk_size=300)
    log1p(again)
    pca(again, n_comps=5, mask_var=None)
    np.testing.assert_allclose(
        again.uns["pca"]["variance"], lazy.uns["pca"]["variance"], rtol=1e-10
    )


def test_flip_signs_largest_loading_positive():
    v = flip_signs(np.array([[0.6, -0.1], [-0.8, 0.05], [0.0, -0.99]]))
    assert v[1, 0] > 0 and v[2, 1] > 0


def test_bad_arguments():
    adata = ad.AnnData(X=da.ones((10, 4), chunks=(5, 4)))
    with pytest.raises(ValueError, match="n_comps"):
        pca(adata, n_comps=5)
    with pytest.raises(ValueError, match="svd_solver"):
        pca(adata, n_comps=2, svd_solver="arpack")


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunk_size=st.integers(min_value=37, max_value=700))
def test_independent_of_block_size(chunk_size, references, sample_lazy, pbmc68k_path):
    memory, _ = references["pbmc68k"]
    hvg = memory.var["highly_variable"].to_numpy()
    got = {}
    for rows in (700, chunk_size):
        lazy = scdask.read_h5ad(pbmc68k_path, chunk_size=rows)
        normalize_total(lazy, target_sum=1e4)
        log1p(lazy)
        lazy.var["highly_variable"] = hvg
        pca(lazy, n_comps=10)
        got[rows] = lazy
    np.testing.assert_allclose(got[chunk_size].obsm["X_pca"], got[700].obsm["X_pca"], atol=1e-4)
    np.testing.assert_allclose(
        got[chunk_size].uns["pca"]["variance"], got[700].uns["pca"]["variance"], rtol=1e-9
    )


def test_hvg_then_pca_chain_uses_highly_variable(pbmc68k_path):
    lazy = scdask.read_h5ad(pbmc68k_path, chunk_size=256)
    normalize_total(lazy, target_sum=1e4)
    log1p(lazy)
    highly_variable_genes(lazy, n_top_genes=200)
    pca(lazy, n_comps=5)
    assert np.count_nonzero(lazy.varm["PCs"].any(axis=1)) == 200
