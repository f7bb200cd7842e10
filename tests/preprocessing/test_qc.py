"""calculate_qc_metrics / annotate_gene_groups against scanpy in memory."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import scdask
from scdask.preprocessing import annotate_gene_groups, calculate_qc_metrics


@pytest.fixture(params=["sample", "pbmc68k"])
def pair(request, sample_path, pbmc68k_path):
    path = sample_path if request.param == "sample" else pbmc68k_path
    return ad.read_h5ad(path), scdask.read_h5ad(path, chunk_size=150)


def test_matches_scanpy_in_one_compute(pair, counting_scheduler, assert_frames_close):
    memory, lazy = pair
    before = set(lazy.obs.columns)
    for adata in (memory, lazy):
        adata.var["mt"] = adata.var_names.str.startswith("MT-")
        adata.var["ribo"] = adata.var_names.str.startswith(("RPS", "RPL"))
    want_obs, want_var = sc.pp.calculate_qc_metrics(memory, qc_vars=["mt", "ribo"])
    with counting_scheduler(1) as counter:
        calculate_qc_metrics(lazy, qc_vars=["mt", "ribo"])
    assert counter.count == 1
    assert isinstance(lazy.X, da.Array)
    assert_frames_close(want_obs, lazy.obs[want_obs.columns], rtol=1e-6)
    assert_frames_close(want_var, lazy.var[want_var.columns], rtol=1e-6)
    assert set(lazy.obs.columns) - before == set(want_obs.columns)


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_in_memory_input(kind, pbmc68k_path, assert_frames_close):
    memory = ad.read_h5ad(pbmc68k_path)
    ours = memory.copy()
    if kind == "dense":
        ours.X = ours.X.toarray()
    want_obs, want_var = sc.pp.calculate_qc_metrics(memory, percent_top=(10, 700), log1p=False)
    got_obs, got_var = calculate_qc_metrics(ours, percent_top=(700, 10), log1p=False, inplace=False)
    assert list(got_obs.columns) == list(want_obs.columns)
    assert list(got_var.columns) == list(want_var.columns)
    assert_frames_close(want_obs, got_obs)
    assert_frames_close(want_var, got_var)
    assert "total_counts" not in ours.obs


def test_annotate_gene_groups():
    names = ["MT-CO1", "mt-Co1", "MTOR", "RPS3", "Rpl7", "RPA1", "HBB", "Hba-a1", "HBP1", "Hbp1"]
    adata = ad.AnnData(np.zeros((1, len(names))))
    adata.var_names = names
    assert annotate_gene_groups(adata) == ["mt", "ribo", "hb"]
    assert adata.var["mt"].tolist() == [True, True] + [False] * 8
    assert adata.var["ribo"].tolist() == [False] * 3 + [True, True] + [False] * 5
    assert adata.var["hb"].tolist() == [False] * 6 + [True, True, False, False]
    with pytest.raises(ValueError, match="Unknown gene groups"):
        annotate_gene_groups(adata, groups=["mito"])


def test_auto_groups_match_scanpy(sample_path, assert_frames_close):
    memory = ad.read_h5ad(sample_path)
    memory.var["mt"] = memory.var_names.str.startswith("MT-")
    memory.var["ribo"] = memory.var_names.str.startswith(("RPS", "RPL"))
    memory.var["hb"] = memory.var_names.str.contains("^HB[^P]")
    want_obs, _ = sc.pp.calculate_qc_metrics(memory, qc_vars=["mt", "ribo", "hb"], percent_top=None)
    lazy = scdask.read_h5ad(sample_path)
    calculate_qc_metrics(lazy, qc_vars="auto", percent_top=None)
    np.testing.assert_array_equal(lazy.var["mt"], memory.var["mt"])
    assert_frames_close(want_obs, lazy.obs[want_obs.columns])


def test_percent_top_out_of_range(pbmc68k_path):
    lazy = scdask.read_h5ad(pbmc68k_path)
    with pytest.raises(IndexError, match="percent_top"):
        calculate_qc_metrics(lazy, percent_top=(50, 766))


@settings(max_examples=6, deadline=None, derandomize=True)
@given(chunk_size=st.integers(min_value=1, max_value=700))
def test_independent_of_block_size(chunk_size):
    from pathlib import Path

    path = Path(__file__).parent.parent / "data" / "pbmc68k_reduced_counts.h5ad"
    one = calculate_qc_metrics(scdask.read_h5ad(path, chunk_size=700), inplace=False)
    many = calculate_qc_metrics(scdask.read_h5ad(path, chunk_size=chunk_size), inplace=False)
    for want, got in zip(one, many, strict=True):
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())


def test_integer_counts_keep_scanpy_dtypes(pbmc68k_path):
    memory = ad.read_h5ad(pbmc68k_path)
    memory.X = sp.csr_matrix(memory.X.astype(np.int32))
    want_obs, want_var = sc.pp.calculate_qc_metrics(memory, percent_top=None)
    got_obs, got_var = calculate_qc_metrics(memory, percent_top=None, inplace=False)
    assert got_obs["total_counts"].dtype == want_obs["total_counts"].dtype
    assert got_var["total_counts"].dtype == want_var["total_counts"].dtype
    np.testing.assert_array_equal(got_obs["total_counts"], want_obs["total_counts"])
