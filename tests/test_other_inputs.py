"""Inputs scdask does not make itself: ``anndata.experimental.read_lazy`` AnnData (obs/var
as ``Dataset2D``, X as anndata's own lazy CSR) and Dask arrays of pydata ``sparse`` chunks
(``COO``/``GCXS``). Each gives the same results as the same data read by scdask."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask._ops import CSRBlock
from scdask.activity import to_frames
from scdask.preprocessing._blocks import accept_matrix, as_frame, get_matrix, lazy_matrix

sparse = pytest.importorskip("sparse")
pytest.importorskip("xarray")  # read_lazy's Dataset2D


def _signature() -> pd.DataFrame:
    """A made-up signature (6 proteins) over the sample's 1,500 most counted genes: activity
    without secactpy's bundled signatures, which the Python 3.12 interop run does not have."""
    adata = scdask.datasets.sample()
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    genes = adata.var_names[np.argsort(-totals)[:1500]]
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        rng.standard_normal((len(genes), 6)), index=genes, columns=[f"P{i}" for i in range(6)]
    )


SIGNATURE = _signature()
CELL = {"level": "cell", "signature": SIGNATURE, "group": False, "n_rand": 10}


@pytest.fixture
def lazy_pair(sample_path):
    """(read_lazy, scdask.read_h5ad) of the sample, X of the first in blocks of 150 rows."""
    theirs = ad.experimental.read_lazy(sample_path)
    theirs.X = theirs.X.rechunk((150, -1))
    return theirs, scdask.read_h5ad(sample_path, chunk_size=150)


def _assert_same_columns(got, want: pd.DataFrame, *, rtol: float = 1e-10) -> None:
    got = as_frame(got, list(want.columns))
    assert got.index.equals(want.index)
    assert sorted(got.columns) == sorted(want.columns)
    for column in want.columns:
        g, w = got[column], want[column]
        if pd.api.types.is_numeric_dtype(w) and not pd.api.types.is_bool_dtype(w):
            np.testing.assert_allclose(g.to_numpy(), w.to_numpy(), rtol=rtol, atol=0)
        else:
            assert g.astype(object).tolist() == w.astype(object).tolist(), column


def _assert_same_result(got: ad.AnnData, want: ad.AnnData) -> None:
    assert got.obs_names.equals(want.obs_names)
    assert got.var_names.equals(want.var_names)
    pd.testing.assert_frame_equal(got.obs, want.obs)
    mine, theirs = to_frames(got), to_frames(want)
    for name in theirs:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-10, atol=1e-10)


# -- anndata.experimental.read_lazy ----------------------------------------------------------
def test_read_lazy_obs_is_a_dataset2d(lazy_pair):
    theirs, _ = lazy_pair
    assert not isinstance(theirs.obs, pd.DataFrame)  # the case these tests are about
    assert isinstance(as_frame(theirs.obs), pd.DataFrame)
    assert as_frame(theirs.obs, ["cell_type", "absent"]).columns.tolist() == ["cell_type"]


def test_read_lazy_qc_metrics(lazy_pair, counting_scheduler):
    theirs, ours = lazy_pair
    with counting_scheduler(1):
        scdask.pp.calculate_qc_metrics(theirs, qc_vars="auto")
    scdask.pp.calculate_qc_metrics(ours, qc_vars="auto")
    new_obs = [c for c in ours.obs.columns if c != "cell_type"]
    _assert_same_columns(theirs.obs, ours.obs[new_obs])
    _assert_same_columns(theirs.var, ours.var)
    got_obs, got_var = scdask.pp.calculate_qc_metrics(theirs, qc_vars="auto", inplace=False)
    # read_lazy names its indexes '_index' (anndata's on-disk key); the values are the same
    pd.testing.assert_frame_equal(got_obs, ours.obs[got_obs.columns], check_names=False)
    pd.testing.assert_frame_equal(got_var, ours.var[got_var.columns], check_names=False)


def test_read_lazy_gene_symbols(lazy_pair):
    theirs, ours = lazy_pair
    for adata in (theirs, ours):
        adata.var["symbol"] = np.asarray(adata.var_names)
        adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
        scdask.pp.calculate_qc_metrics(adata, qc_vars="auto", gene_symbols="symbol")
    assert int(as_frame(theirs.var, ["mt"])["mt"].sum()) == int(ours.var["mt"].sum()) > 0
    _assert_same_columns(theirs.obs, ours.obs[["pct_counts_mt", "pct_counts_ribo"]])


def test_read_lazy_recipe(lazy_pair):
    theirs, ours = lazy_pair
    for adata in (theirs, ours):
        scdask.pp.recipe(adata, n_top_genes=200, n_comps=5)
    assert theirs.shape == ours.shape
    _assert_same_columns(theirs.obs, ours.obs)
    _assert_same_columns(theirs.var, ours.var)
    np.testing.assert_allclose(theirs.obsm["X_pca"], ours.obsm["X_pca"], rtol=1e-8, atol=1e-8)


def test_read_lazy_infer_cell(lazy_pair):
    theirs, ours = lazy_pair
    got = scdask.activity.infer(theirs, **CELL)
    assert isinstance(got.obs, pd.DataFrame)
    _assert_same_result(got, scdask.activity.infer(ours, **CELL))


@pytest.mark.parametrize("cell_type_col", ["cell_type", ["cell_type", "donor"]])
def test_read_lazy_infer_pseudobulk(lazy_pair, cell_type_col):
    theirs, ours = lazy_pair
    donors = np.where(np.arange(ours.n_obs) % 2, "D1", "D2")
    theirs.obs["donor"] = donors
    ours.obs["donor"] = donors
    kwargs = {"level": "pseudobulk", "cell_type_col": cell_type_col, "signature": SIGNATURE}
    kwargs["group"] = False
    got = scdask.activity.infer(theirs, n_rand=10, **kwargs)
    _assert_same_result(got, scdask.activity.infer(ours, n_rand=10, **kwargs))


def test_read_lazy_log1p_and_write(lazy_pair, tmp_path):
    theirs, ours = lazy_pair
    for adata in (theirs, ours):
        scdask.pp.log1p(adata)
    scdask.write_h5ad(theirs, tmp_path / "theirs.h5ad")
    scdask.write_h5ad(ours, tmp_path / "ours.h5ad")
    got, want = ad.read_h5ad(tmp_path / "theirs.h5ad"), ad.read_h5ad(tmp_path / "ours.h5ad")
    pd.testing.assert_frame_equal(got.obs, want.obs)
    assert (got.X != want.X).nnz == 0


def test_read_lazy_input_is_never_replaced(sample_path, tmp_path):
    link = tmp_path / "link.h5ad"
    link.symlink_to(sample_path)
    adata = ad.experimental.read_lazy(link)
    for target in (link, sample_path):
        with pytest.raises(scdask.InputError, match="refusing to write"):
            scdask.write_h5ad(adata, target)


def test_read_lazy_builds_without_reading(sample_path, counting_scheduler):
    adata = ad.experimental.read_lazy(sample_path)
    with counting_scheduler(0):
        x = get_matrix(adata)
        assert isinstance(x._meta, CSRBlock)
        lazy_matrix(x)
        scdask.pp.log1p(adata)
    assert isinstance(adata.X, da.Array)


# -- Dask arrays of pydata sparse chunks -----------------------------------------------------
def _csr_and_pydata(path, kind: str) -> tuple[ad.AnnData, ad.AnnData]:
    """(the sample as scdask reads it, the same with X a Dask array of ``kind`` chunks)."""
    ours = scdask.read_h5ad(path, chunk_size=150)
    counts = ad.read_h5ad(path).X
    if kind == "COO":
        x = da.from_array(sparse.COO.from_scipy_sparse(counts), chunks=(150, -1), asarray=False)
    elif kind == "GCXS":
        x = da.from_array(sparse.GCXS.from_scipy_sparse(counts), chunks=(150, -1), asarray=False)
    else:  # dask's documented idiom: dense chunks (split along the genes too) made sparse
        dense = da.from_array(counts.toarray(), chunks=(200, 10_000))
        x = dense.map_blocks(sparse.COO.from_numpy, dtype=dense.dtype)
    theirs = ad.AnnData(X=x, obs=ours.obs.copy(), var=ours.var.copy())
    return theirs, ours


KINDS = ["COO", "GCXS", "COO.from_numpy"]


@pytest.mark.parametrize("kind", KINDS)
def test_pydata_sparse_qc_metrics(sample_path, kind, counting_scheduler):
    theirs, ours = _csr_and_pydata(sample_path, kind)
    assert type(theirs.X._meta).__module__.startswith("sparse")
    with counting_scheduler(1):  # one pass, as for scdask's own blocks
        scdask.pp.calculate_qc_metrics(theirs, qc_vars="auto")
    scdask.pp.calculate_qc_metrics(ours, qc_vars="auto")
    _assert_same_columns(theirs.obs, ours.obs)
    _assert_same_columns(theirs.var, ours.var)


@pytest.mark.parametrize("kind", KINDS)
def test_pydata_sparse_normalize_log1p(sample_path, kind):
    theirs, ours = _csr_and_pydata(sample_path, kind)
    for adata in (theirs, ours):
        scdask.pp.normalize_total(adata, target_sum=1e4)
        scdask.pp.log1p(adata)
    got, want = da.compute(theirs.X, ours.X)
    assert sp.issparse(got)
    np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-10, atol=0)
    _assert_same_columns(theirs.obs, ours.obs)


@pytest.mark.parametrize("kind", ["COO", "GCXS"])
def test_pydata_sparse_infer_cell(sample_path, kind):
    theirs, ours = _csr_and_pydata(sample_path, kind)
    _assert_same_result(scdask.activity.infer(theirs, **CELL), scdask.activity.infer(ours, **CELL))


@pytest.mark.parametrize("kind", ["COO", "GCXS"])
def test_pydata_sparse_write(sample_path, kind, tmp_path):
    theirs, ours = _csr_and_pydata(sample_path, kind)
    theirs.layers["counts"] = theirs.X
    ours.layers["counts"] = ours.X
    scdask.write_h5ad(theirs, tmp_path / "theirs.h5ad")
    scdask.write_zarr(ours, tmp_path / "ours.zarr")
    got, want = ad.read_h5ad(tmp_path / "theirs.h5ad"), ad.read_zarr(tmp_path / "ours.zarr")
    for a, b in ((got.X, want.X), (got.layers["counts"], want.layers["counts"])):
        assert sp.issparse(a) and a.format == "csr"
        assert (a != b).nnz == 0


def test_pydata_sparse_builds_without_reading(sample_path, counting_scheduler):
    theirs, _ = _csr_and_pydata(sample_path, "COO.from_numpy")
    with counting_scheduler(0):
        x = get_matrix(theirs)
        assert isinstance(x._meta, CSRBlock)
        assert lazy_matrix(x).numblocks[1] == 1
        scdask.pp.log1p(theirs)


def test_pydata_sparse_in_memory(sample_path):
    # anndata refuses an in-memory pydata array as X; functions that take a matrix take it
    counts = ad.read_h5ad(sample_path).X
    coo = sparse.COO.from_scipy_sparse(counts)
    assert type(accept_matrix(coo)).__name__ == "CSRBlock"
    assert (accept_matrix(coo).to_scipy() != counts).nnz == 0
    for got, want in zip(
        scdask.pp.filter_cells(coo, min_genes=200),
        scdask.pp.filter_cells(counts, min_genes=200),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_pydata_sparse_fill_value_is_refused():
    x = da.from_array(sparse.COO.from_numpy(np.ones((4, 3)), fill_value=1.0), chunks=(2, 3))
    with pytest.raises(scdask.InputError, match="fill_value"):
        accept_matrix(x)
