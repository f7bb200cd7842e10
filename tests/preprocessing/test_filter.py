"""filter_cells / filter_genes against scanpy in memory; subsetting stays lazy."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scanpy as sc

import scdask
from scdask.preprocessing import filter_cells, filter_genes

CELL_CRITERIA = [
    {"min_counts": 1500},
    {"min_genes": 700},
    {"max_counts": 6000},
    {"max_genes": 1500},
]
GENE_CRITERIA = [
    {"min_counts": 25},
    {"min_cells": 10},
    {"max_counts": 40},
    {"max_cells": 100},
]


def _assert_same(want: ad.AnnData, got: ad.AnnData, column: str, axis: str) -> None:
    assert isinstance(got.X, da.Array)
    assert list(got.obs_names) == list(want.obs_names)
    assert list(got.var_names) == list(want.var_names)
    w, g = getattr(want, axis)[column], getattr(got, axis)[column]
    assert g.dtype == w.dtype
    np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got.X.compute().toarray(), want.X.toarray())


@pytest.mark.parametrize("criterion", CELL_CRITERIA, ids=lambda c: next(iter(c)))
def test_filter_cells_matches_scanpy(criterion, sample_path, counting_scheduler):
    want = ad.read_h5ad(sample_path)
    sc.pp.filter_cells(want, **criterion)
    got = scdask.read_h5ad(sample_path, chunk_size=100)
    with counting_scheduler(1):
        filter_cells(got, **criterion)
    assert 0 < got.n_obs < 559
    column = "n_genes" if "genes" in next(iter(criterion)) else "n_counts"
    _assert_same(want, got, column, "obs")


@pytest.mark.parametrize("criterion", GENE_CRITERIA, ids=lambda c: next(iter(c)))
def test_filter_genes_matches_scanpy(criterion, sample_path, counting_scheduler):
    want = ad.read_h5ad(sample_path)
    sc.pp.filter_genes(want, **criterion)
    got = scdask.read_h5ad(sample_path, chunk_size=100)
    with counting_scheduler(1):
        filter_genes(got, **criterion)
    assert 0 < got.n_vars < 32786
    column = "n_cells" if "cells" in next(iter(criterion)) else "n_counts"
    _assert_same(want, got, column, "var")


def test_not_inplace_returns_mask_and_numbers(pbmc68k_path):
    memory = ad.read_h5ad(pbmc68k_path)
    lazy = scdask.read_h5ad(pbmc68k_path, chunk_size=64)
    for ours, theirs, kwargs in [
        (filter_cells, sc.pp.filter_cells, {"min_genes": 200}),
        (filter_genes, sc.pp.filter_genes, {"min_counts": 50}),
    ]:
        want = theirs(memory, inplace=False, **kwargs)
        got = ours(lazy, inplace=False, **kwargs)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
    assert lazy.shape == (700, 765)
    mask, number = filter_cells(memory.X, max_counts=1000)
    np.testing.assert_array_equal(mask, np.asarray(memory.X.sum(axis=1)).ravel() <= 1000)
    np.testing.assert_array_equal(number, np.asarray(memory.X.sum(axis=1)).ravel())


@pytest.mark.parametrize("options", [{}, {"min_counts": 1, "min_genes": 1}])
def test_exactly_one_criterion(options, pbmc68k_path):
    lazy = scdask.read_h5ad(pbmc68k_path)
    with pytest.raises(ValueError, match="exactly one"):
        filter_cells(lazy, **options)
    with pytest.raises(ValueError, match="exactly one"):
        filter_genes(lazy, **{k.replace("genes", "cells"): v for k, v in options.items()})
