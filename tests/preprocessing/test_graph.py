"""neighbors / umap / leiden run on the in-memory embedding only and equal scanpy's."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scanpy as sc

from scdask.preprocessing._graph import leiden, neighbors, umap


def _explode(block):
    raise AssertionError("the lazy X was read")


@pytest.fixture(scope="module")
def reference(pbmc68k_path) -> ad.AnnData:
    """pbmc68k normalised, log1p'd and PCA'd by scanpy, in memory."""
    memory = ad.read_h5ad(pbmc68k_path)
    sc.pp.normalize_total(memory, target_sum=1e4)
    sc.pp.log1p(memory)
    sc.pp.pca(memory, n_comps=20)
    return memory


@pytest.fixture
def untouchable(reference) -> ad.AnnData:
    """The same obs/obsm with an X whose every block raises when computed."""
    x = da.zeros(reference.shape, chunks=(100, -1)).map_blocks(_explode, dtype=np.float64)
    return ad.AnnData(
        X=x,
        obs=reference.obs.copy(),
        var=reference.var[[]],
        obsm={"X_pca": reference.obsm["X_pca"]},
    )


def test_graph_umap_leiden_match_scanpy_without_reading_x(
    reference, untouchable, counting_scheduler
):
    want = reference.copy()
    adata = untouchable
    with counting_scheduler(0):
        neighbors(adata, n_neighbors=10, n_pcs=15)
        umap(adata, maxiter=50)
        leiden(adata, resolution=0.8)
    sc.pp.neighbors(want, n_neighbors=10, n_pcs=15)
    sc.tl.umap(want, maxiter=50)
    sc.tl.leiden(want, resolution=0.8, flavor="igraph", n_iterations=2, directed=False)
    for key in ("distances", "connectivities"):
        assert (adata.obsp[key] != want.obsp[key]).nnz == 0
    params = adata.uns["neighbors"]["params"]
    assert params["use_rep"] == "X_pca"
    assert {k: params[k] for k in want.uns["neighbors"]["params"]} == want.uns["neighbors"][
        "params"
    ]
    np.testing.assert_allclose(adata.obsm["X_umap"], want.obsm["X_umap"], atol=1e-6)
    assert adata.obs["leiden"].dtype.name == "category"
    np.testing.assert_array_equal(adata.obs["leiden"].to_numpy(), want.obs["leiden"].to_numpy())
    assert adata.obs["leiden"].nunique() > 3
    assert adata.uns["leiden"]["params"]["resolution"] == 0.8


def test_key_added_and_copy(untouchable):
    out = neighbors(untouchable, n_neighbors=5, key_added="nn5", copy=True)
    assert "nn5_connectivities" in out.obsp and "nn5" in out.uns
    assert "nn5" not in untouchable.uns
    leiden(out, neighbors_key="nn5", key_added="clusters")
    assert out.obs["clusters"].nunique() > 1


def test_missing_inputs_are_explained(untouchable):
    del untouchable.obsm["X_pca"]
    with pytest.raises(ValueError, match=r"scdask\.pp\.pca"):
        neighbors(untouchable)
    with pytest.raises(ValueError, match=r"scdask\.pp\.neighbors"):
        umap(untouchable)
    with pytest.raises(ValueError, match=r"scdask\.pp\.neighbors"):
        leiden(untouchable)
