"""scdask.pp.recipe against the step-by-step scanpy chain in memory, and its four passes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scdask
from scdask.preprocessing._recipe import recipe

#: per dataset: min_genes, min_cells, n_top_genes
PARAMS = {"pbmc68k": (10, 3, 300), "sample": (200, 3, 1000)}
N_COMPS = 20


def _scanpy_chain(path, min_genes, min_cells, n_top_genes) -> tuple[ad.AnnData, ad.AnnData]:
    """The chain step by step in scanpy: (log-normalised AnnData, scaled HVG subset with PCA)."""
    adata = ad.read_h5ad(path)
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    sc.pp.filter_cells(adata, min_genes=min_genes)
    sc.pp.filter_genes(adata, min_cells=min_cells)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_top_genes)
    hvg = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(hvg, max_value=10)
    sc.pp.pca(hvg, n_comps=N_COMPS, svd_solver="covariance_eigh")
    return adata, hvg


@pytest.fixture(scope="module")
def chains(sample_path, pbmc68k_path):
    paths = {"pbmc68k": pbmc68k_path, "sample": sample_path}
    return {name: (paths[name], *_scanpy_chain(paths[name], *PARAMS[name])) for name in paths}


class ReadCounter:
    """Counts the blocks of X computed (the synchronous scheduler runs in this process)."""

    def __init__(self) -> None:
        self.blocks = 0

    def __call__(self, block):
        self.blocks += 1
        return block


def _run(path, name, chunk_size, **kwargs) -> ad.AnnData:
    min_genes, min_cells, n_top_genes = PARAMS[name]
    adata = scdask.read_h5ad(path, chunk_size=chunk_size)
    recipe(
        adata,
        min_genes=min_genes,
        min_cells=min_cells,
        n_top_genes=n_top_genes,
        n_comps=N_COMPS,
        verbose=False,
        **kwargs,
    )
    return adata


@pytest.mark.parametrize("name", ["pbmc68k", "sample"])
def test_recipe_equals_scanpy_chain_in_four_passes(name, chains, counting_scheduler, capsys):
    path, want, want_hvg = chains[name]
    min_genes, min_cells, n_top_genes = PARAMS[name]
    adata = scdask.read_h5ad(path, chunk_size=97)
    counter, n_blocks = ReadCounter(), adata.X.numblocks[0]
    adata.X = adata.X.map_blocks(counter, dtype=adata.X.dtype, meta=adata.X._meta)
    with counting_scheduler(4) as computes:
        recipe(
            adata,
            min_genes=min_genes,
            min_cells=min_cells,
            n_top_genes=n_top_genes,
            n_comps=N_COMPS,
        )
    assert computes.count == 4
    assert counter.blocks == 4 * n_blocks  # each pass reads every block once
    assert adata.uns["recipe"]["passes"] == 4
    assert "4 passes over X" in capsys.readouterr().out

    assert list(adata.obs_names) == list(want.obs_names)
    assert list(adata.var_names) == list(want.var_names)
    for column in ("n_genes_by_counts", "n_genes", "total_counts", "pct_counts_mt"):
        np.testing.assert_allclose(adata.obs[column], want.obs[column], rtol=1e-6, err_msg=column)
    for column in ("n_cells_by_counts", "n_cells", "total_counts", "mean_counts"):
        np.testing.assert_allclose(adata.var[column], want.var[column], rtol=1e-6, err_msg=column)
    np.testing.assert_array_equal(adata.var["highly_variable"], want.var["highly_variable"])
    for column in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(adata.var[column], want.var[column], rtol=1e-5, err_msg=column)
    hvg = adata.var["highly_variable"].to_numpy()
    np.testing.assert_allclose(adata.var["mean"][hvg], want_hvg.var["mean"], rtol=1e-6)
    np.testing.assert_allclose(adata.var["std"][hvg], want_hvg.var["std"], rtol=1e-6)
    np.testing.assert_allclose(adata.X.compute().toarray(), want.X.toarray(), atol=1e-6)

    pcs = adata.varm["PCs"][hvg]
    cos = np.abs(np.sum(pcs * want_hvg.varm["PCs"], axis=0))
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(adata.obsm["X_pca"], want_hvg.obsm["X_pca"], atol=1e-3)
    np.testing.assert_allclose(
        adata.uns["pca"]["variance_ratio"], want_hvg.uns["pca"]["variance_ratio"], atol=1e-6
    )
    assert np.all(adata.varm["PCs"][~hvg] == 0)


def test_recipe_without_clipping_copy(chains):
    path, _, _ = chains["pbmc68k"]
    min_genes, min_cells, n_top_genes = PARAMS["pbmc68k"]
    want = ad.read_h5ad(path)
    sc.pp.filter_cells(want, min_genes=min_genes)
    sc.pp.filter_genes(want, min_cells=min_cells)
    sc.pp.normalize_total(want, target_sum=1e4)
    sc.pp.log1p(want)
    sc.pp.highly_variable_genes(want, flavor="cell_ranger", n_top_genes=n_top_genes)
    want = want[:, want.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(want)
    sc.pp.pca(want, n_comps=N_COMPS, svd_solver="covariance_eigh")
    lazy = scdask.read_h5ad(path, chunk_size=250)
    out = recipe(
        lazy,
        min_genes=min_genes,
        min_cells=min_cells,
        n_top_genes=n_top_genes,
        flavor="cell_ranger",
        max_value=None,
        n_comps=N_COMPS,
        copy=True,
        verbose=False,
    )
    assert "X_pca" not in lazy.obsm and lazy.n_obs == 700
    assert out.uns["hvg"]["flavor"] == "cell_ranger"
    np.testing.assert_allclose(out.obsm["X_pca"], want.obsm["X_pca"], atol=1e-3)


def test_recipe_rejects_seurat_v3(chains):
    path, _, _ = chains["pbmc68k"]
    with pytest.raises(ValueError, match="flavor"):
        recipe(scdask.read_h5ad(path), flavor="seurat_v3")


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunk_size=st.integers(min_value=29, max_value=700))
def test_recipe_independent_of_block_size(chunk_size, chains):
    path, _, want_hvg = chains["pbmc68k"]
    got = _run(path, "pbmc68k", chunk_size)
    np.testing.assert_allclose(got.obsm["X_pca"], want_hvg.obsm["X_pca"], atol=1e-3)
