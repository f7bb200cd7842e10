"""Data for the preprocessing tests: the real sample and pbmc68k counts, lazy and in memory."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scdask

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="session")
def pbmc68k_path() -> Path:
    """700 real PBMC x 765 genes, counts rebuilt from scanpy's ``pbmc68k_reduced``."""
    return DATA / "pbmc68k_reduced_counts.h5ad"


@pytest.fixture(scope="session")
def pbmc_small_path() -> Path:
    """Seurat's ``pbmc_small`` with Seurat's LogNormalize layer and ``vst`` statistics."""
    return DATA / "seuratobject_pbmc_small.h5ad"


@pytest.fixture(scope="session")
def sample_memory(sample_path) -> ad.AnnData:
    """The real 559-cell sample in memory, genes detected in >= 3 cells (9,810 of 32,786)."""
    adata = ad.read_h5ad(sample_path)
    keep = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= 3
    adata = adata[:, keep].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "a", "b")
    return adata


@pytest.fixture
def sample_lazy(sample_path, sample_memory):
    """``sample_lazy(chunk_size)``: the same cells and genes as ``sample_memory``, lazy."""

    def _open(chunk_size: int = 150) -> ad.AnnData:
        adata = scdask.read_h5ad(sample_path, chunk_size=chunk_size)
        adata = adata[:, sample_memory.var_names].copy()
        adata.obs["batch"] = sample_memory.obs["batch"].to_numpy()
        return adata

    return _open


@pytest.fixture
def assert_frames_close():
    """Compare the columns of two tables (same index order) to a relative tolerance."""

    def _check(want: pd.DataFrame, got: pd.DataFrame, *, rtol: float = 1e-6, atol: float = 0.0):
        assert list(got.index) == list(want.index)
        for column in want.columns:
            w, g = want[column].to_numpy(), got[column].to_numpy()
            if w.dtype.kind in "bOUi" or str(want[column].dtype) == "category":
                np.testing.assert_array_equal(g, w, err_msg=column)
            else:
                np.testing.assert_allclose(
                    g.astype(np.float64),
                    w.astype(np.float64),
                    rtol=rtol,
                    atol=atol,
                    err_msg=column,
                )

    return _check
