"""The bundled real sample."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scdask.datasets import sample, sample_path


def test_sample_path_points_at_the_installed_file():
    path = sample_path()
    assert path.is_file()
    assert path.name == "celltypist_sample_counts.h5ad"
    assert path.parent.name == "data"
    with h5py.File(path, "r") as f:
        assert f.attrs["encoding-type"] == "anndata"
        assert f["X"].attrs["encoding-type"] == "csr_matrix"


def test_sample_is_the_real_559_cell_count_matrix():
    adata = sample()
    assert adata.shape == (559, 32_786)
    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.float32
    values = adata.X.data
    assert values.min() > 0
    np.testing.assert_array_equal(values, np.round(values))
    # 5.6% non-zero and a few thousand UMIs per cell, as documented in PROVENANCE.md.
    assert 0.05 < adata.X.nnz / (559 * 32_786) < 0.06
    assert 3_000 < np.median(np.asarray(adata.X.sum(axis=1)).ravel()) < 5_000


def test_sample_has_cell_types_and_gene_symbols():
    adata = sample()
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert adata.obs["cell_type"].value_counts().to_dict() == {
        "Myeloid": 386,
        "T": 75,
        "NK": 44,
        "Other": 41,
        "B": 13,
    }
    assert adata.var_names.is_unique
    assert {"LYZ", "CD14", "CD3E", "MS4A1", "NKG7", "MT-CO1"} <= set(adata.var_names)
    # Marker labels: myeloid cells carry most of the LYZ counts.
    lyz = np.asarray(adata[:, "LYZ"].X.todense()).ravel()
    myeloid = (adata.obs["cell_type"] == "Myeloid").to_numpy()
    assert lyz[myeloid].mean() > 10 * lyz[~myeloid].mean()
