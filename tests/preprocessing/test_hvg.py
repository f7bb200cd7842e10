"""highly_variable_genes: every flavour against scanpy, Seurat and the upstream tables."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import scdask
from scdask.preprocessing import highly_variable_genes, log1p, normalize_total

CASES = [
    ("seurat", {}, 1),
    ("seurat", {"n_top_genes": 500}, 1),
    ("cell_ranger", {"n_top_genes": 500}, 1),
    ("cell_ranger", {"min_mean": 0.05, "min_disp": 1.0}, 1),
    ("seurat_v3", {"n_top_genes": 1000}, 2),
    ("seurat_v3_paper", {"n_top_genes": 1000}, 2),
    ("pearson_residuals", {"n_top_genes": 1000}, 2),
]


def _scanpy_hvg(adata, flavor, **kwargs):
    if flavor == "pearson_residuals":
        return sc.experimental.pp.highly_variable_genes(adata, flavor=flavor, **kwargs)
    return sc.pp.highly_variable_genes(adata, flavor=flavor, **kwargs)


@pytest.fixture(params=["sample", "pbmc68k"])
def pair(request, sample_memory, sample_lazy, pbmc68k_path):
    """(in-memory AnnData, the same lazy) with a two-level obs['batch']."""
    if request.param == "sample":
        return sample_memory, sample_lazy(chunk_size=150)
    memory = ad.read_h5ad(pbmc68k_path)
    lazy = scdask.read_h5ad(pbmc68k_path, chunk_size=128)
    for adata in (memory, lazy):
        adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "a", "b")
    return memory, lazy


@pytest.mark.parametrize("batch_key", [None, "batch"])
@pytest.mark.parametrize(("flavor", "kwargs", "passes"), CASES, ids=lambda c: str(c))
def test_matches_scanpy(
    flavor, kwargs, passes, batch_key, pair, counting_scheduler, assert_frames_close
):
    memory, got = pair
    want = memory.copy()
    if flavor in ("seurat", "cell_ranger"):
        sc.pp.normalize_total(want, target_sum=1e4)
        sc.pp.log1p(want)
        normalize_total(got, target_sum=1e4)
        log1p(got)
    _scanpy_hvg(want, flavor, batch_key=batch_key, **kwargs)
    with counting_scheduler(passes) as counter:
        highly_variable_genes(got, flavor=flavor, batch_key=batch_key, **kwargs)
    assert counter.count == passes
    assert isinstance(got.X, da.Array)
    assert got.uns["hvg"] == want.uns["hvg"]
    added = [c for c in want.var.columns if c not in memory.var.columns]
    assert sorted(c for c in got.var.columns if c not in memory.var.columns) == sorted(added)
    assert_frames_close(want.var[added], got.var[added], rtol=1e-6)
    assert got.var["highly_variable"].sum() > 50


def test_subset_and_not_inplace(sample_memory, sample_lazy, counting_scheduler):
    want = sc.pp.highly_variable_genes(
        sample_memory.copy(), flavor="seurat_v3", n_top_genes=300, inplace=False, subset=True
    )
    got = sample_lazy()
    table = highly_variable_genes(
        got, flavor="seurat_v3", n_top_genes=300, inplace=False, subset=True
    )
    assert "highly_variable" not in got.var
    assert list(table.columns) == list(want.columns)
    assert list(table.index) == list(want.index)
    with counting_scheduler(2):
        highly_variable_genes(got, flavor="seurat_v3", n_top_genes=300, subset=True)
    assert got.n_vars == 300
    assert isinstance(got.X, da.Array)
    assert list(got.var_names) == list(want.index)


def _upstream_setup(path) -> ad.AnnData:
    """scanpy's own test: X = pbmc68k_reduced.raw.X (log1p of counts per 1e4 of the original
    library size), filter_cells(min_counts=1), normalize_total(1e4), log1p. The raw matrix
    is rebuilt from the counts and ``obs['n_counts']``."""
    counts = ad.read_h5ad(path)
    raw = sp.diags(1e4 / counts.obs["n_counts"].to_numpy(dtype=np.float64)) @ sp.csr_matrix(
        counts.X, dtype=np.float64
    )
    raw.data = np.log1p(raw.data)
    adata = ad.AnnData(
        X=da.from_array(sp.csr_matrix(raw, dtype=np.float32), chunks=(256, -1), asarray=False),
        obs=counts.obs[[]],
        var=counts.var[[]],
    )
    scdask.pp.filter_cells(adata, min_counts=1)
    normalize_total(adata, target_sum=1e4)
    log1p(adata)
    return adata


@pytest.mark.parametrize(
    ("flavor", "kwargs", "table"),
    [
        ("seurat", {"min_mean": 0.0125, "max_mean": 3, "min_disp": 0.5}, "seurat_hvg.csv"),
        ("cell_ranger", {"n_top_genes": 100}, "cell_ranger_hvg.csv"),
    ],
)
def test_matches_upstream_tables(flavor, kwargs, table, pbmc68k_path):
    want = pd.read_csv(pbmc68k_path.parent / "scanpy_hvg_refs" / table, index_col=0)
    adata = _upstream_setup(pbmc68k_path)
    highly_variable_genes(adata, flavor=flavor, **kwargs)
    assert list(adata.var_names) == list(want.index)
    np.testing.assert_array_equal(adata.var["highly_variable"], want["highly_variable"])
    # the rebuilt raw matrix differs from the original in the 4th digit, hence the tolerance
    for column in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(adata.var[column], want[column], rtol=5e-3, atol=5e-3)


def test_seurat_v3_matches_seurat_vst(pbmc_small_path, counting_scheduler):
    adata = scdask.read_h5ad(pbmc_small_path, chunk_size=30)
    with counting_scheduler(2):
        highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=20)
    for ours, seurat in [
        ("means", "vst.mean"),
        ("variances", "vst.variance"),
        ("variances_norm", "vst.variance.standardized"),
    ]:
        np.testing.assert_allclose(adata.var[ours], adata.var[seurat], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(adata.var["highly_variable"], adata.var["vst.variable"])


@settings(max_examples=4, deadline=None, derandomize=True)
@given(chunk_size=st.integers(min_value=1, max_value=80))
def test_independent_of_block_size(chunk_size):
    from pathlib import Path

    path = Path(__file__).parent.parent / "data" / "seuratobject_pbmc_small.h5ad"
    tables = {}
    for rows in (80, chunk_size):
        adata = scdask.read_h5ad(path, chunk_size=rows)
        adata.obs["batch"] = np.arange(80) % 2
        tables[rows] = {
            flavor: highly_variable_genes(
                adata, flavor=flavor, n_top_genes=40, batch_key="batch", inplace=False
            )
            for flavor in ("seurat_v3", "pearson_residuals")
        }
        normalize_total(adata, target_sum=1e4)
        log1p(adata)
        tables[rows]["seurat"] = highly_variable_genes(
            adata, n_top_genes=40, batch_key="batch", inplace=False
        )
    for flavor, want in tables[80].items():
        got = tables[chunk_size][flavor]
        assert got["highly_variable"].tolist() == want["highly_variable"].tolist()
        numbers = want.select_dtypes("number").columns
        np.testing.assert_allclose(got[numbers], want[numbers], rtol=1e-10, atol=1e-12)


def test_argument_errors_and_warnings(pbmc68k_path):
    adata = scdask.read_h5ad(pbmc68k_path)
    with pytest.raises(ValueError, match="n_top_genes"):
        highly_variable_genes(adata, flavor="pearson_residuals")
    with pytest.raises(ValueError, match="theta > 0"):
        highly_variable_genes(adata, flavor="pearson_residuals", n_top_genes=10, theta=0)
    with pytest.raises(ValueError, match="Unknown flavor"):
        highly_variable_genes(adata, flavor="seurat_v4")
    log1p(adata)
    with pytest.warns(UserWarning, match="cutoffs are ignored"):
        highly_variable_genes(adata, n_top_genes=10, min_mean=0.1)
    with pytest.warns(UserWarning, match="non-integers were found"):
        highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=10)
