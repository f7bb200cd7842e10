"""scanpy and anndata on what ``scdask.read_h5ad`` returns: the numbers of scanpy in memory.

Every case runs scanpy's function on three AnnData of the same file and extracts its
results as numpy arrays:

- the reference: ``anndata.read_h5ad`` (scipy CSR in memory);
- ``lazy``: ``scdask.read_h5ad`` (a Dask array of scdask's blocks, four row blocks);
- ``to_memory``: the lazy AnnData brought into memory (one scdask block).

In float64 both must give the reference's numbers (1e-6 relative); in float32 ``lazy``
must give the numbers of scanpy on a Dask array of plain ``csr_matrix`` chunks (scanpy's
Dask paths sum float32 in another order than its in-memory ones) and ``to_memory`` the
reference's. Where scanpy fails on scdask's lazy array, the same function must fail on a
Dask array of plain ``csr_matrix`` chunks too (scanpy's limitation: ``DOCUMENTED``, listed
in README's "Not supported yet"), unless listed in ``DIVERGES`` with the reason. This module
runs twice in CI: Python 3.11 with scanpy 1.11 / anndata 0.12 (blocks subclass
``csr_matrix``) and Python 3.12 with the newest scanpy and anndata (``csr_array``).
"""

from __future__ import annotations

import pickle
import warnings
from importlib.util import find_spec
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask._ops import BLOCK_BASE, CSRBlock

sc = pytest.importorskip("scanpy")

DATA = Path(__file__).parents[1] / "data" / "pbmc68k_reduced_counts.h5ad"
RTOL = 1e-6

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


def _scanpy_version() -> tuple[int, int]:
    from importlib.metadata import version

    major, minor = version("scanpy").split(".")[:2]
    return int(major), int(minor)


# -- the three sources ----------------------------------------------------------------------


def reference() -> ad.AnnData:
    return ad.read_h5ad(DATA)


def lazy() -> ad.AnnData:
    return scdask.read_h5ad(DATA, chunk_size=200)


def to_memory() -> ad.AnnData:
    return lazy().to_memory()


def csr_matrix_chunks() -> ad.AnnData:
    """The same file as a Dask array of plain scipy ``csr_matrix`` chunks."""
    adata = lazy()
    meta = sp.csr_matrix((0, 0), dtype=adata.X.dtype)
    adata.X = adata.X.map_blocks(lambda b: sp.csr_matrix(b.to_scipy()), meta=meta)
    return adata


SOURCES = {"lazy": lazy, "to_memory": to_memory}


# -- results as numpy -----------------------------------------------------------------------


def _np(x) -> np.ndarray:
    if isinstance(x, da.Array):
        x = x.compute()
    if isinstance(x, (pd.Series, pd.Index)):
        x = x.to_numpy()
    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x)


def _frame(prefix: str, df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {f"{prefix}.{c}": _np(df[c]) for c in df.columns}


def _rank_genes(adata: ad.AnnData) -> dict[str, np.ndarray]:
    res = adata.uns["rank_genes_groups"]
    return {
        f"rgg.{k}": np.asarray(pd.DataFrame(res[k]).to_numpy())
        for k in ("names", "scores", "pvals", "pvals_adj", "logfoldchanges")
    }


def _lognorm(adata: ad.AnnData) -> ad.AnnData:
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


# -- the cases: scanpy's functions and what they give -----------------------------------------


def case_qc(adata):
    obs, var = sc.pp.calculate_qc_metrics(adata, percent_top=(5, 20), inplace=False)
    return {**_frame("obs", obs), **_frame("var", var)}


def case_normalize_log1p(adata):
    return {"X": _np(_lognorm(adata).X)}


def case_hvg_seurat(adata):
    sc.pp.highly_variable_genes(_lognorm(adata), flavor="seurat", n_top_genes=200)
    cols = ["means", "dispersions", "dispersions_norm", "highly_variable"]
    return _frame("var", adata.var[cols])


def case_hvg_cell_ranger(adata):
    sc.pp.highly_variable_genes(_lognorm(adata), flavor="cell_ranger", n_top_genes=200)
    cols = ["means", "dispersions", "dispersions_norm", "highly_variable"]
    return _frame("var", adata.var[cols])


def case_hvg_seurat_v3(adata):
    pytest.importorskip("skmisc")
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=200)
    cols = ["means", "variances", "variances_norm", "highly_variable", "highly_variable_rank"]
    return _frame("var", adata.var[cols])


def case_scale(adata):
    sc.pp.scale(_lognorm(adata), max_value=10)
    return {"X": _np(adata.X)}


def _signed(scores: np.ndarray) -> np.ndarray:
    """PC scores with each component's sign fixed (largest absolute score positive)."""
    idx = np.abs(scores).argmax(axis=0)
    return scores * np.sign(scores[idx, np.arange(scores.shape[1])])


def case_pca(adata):
    sc.pp.pca(_lognorm(adata), n_comps=15, svd_solver="covariance_eigh")
    return {
        "X_pca": _signed(_np(adata.obsm["X_pca"])),
        "variance_ratio": _np(adata.uns["pca"]["variance_ratio"]),
    }


def case_pca_after_scale(adata):
    sc.pp.scale(_lognorm(adata), max_value=10)
    sc.pp.pca(adata, n_comps=15)
    return {
        "X_pca": _signed(_np(adata.obsm["X_pca"])),
        "variance_ratio": _np(adata.uns["pca"]["variance_ratio"]),
    }


def case_pca_after_scale_covariance(adata):
    sc.pp.scale(_lognorm(adata), max_value=10)
    sc.pp.pca(adata, n_comps=15, svd_solver="covariance_eigh")
    return {
        "X_pca": _signed(_np(adata.obsm["X_pca"])),
        "variance_ratio": _np(adata.uns["pca"]["variance_ratio"]),
    }


def case_neighbors(adata):
    sc.pp.pca(_lognorm(adata), n_comps=15, svd_solver="covariance_eigh")
    adata.obsm["X_pca"] = _signed(_np(adata.obsm["X_pca"]))
    sc.pp.neighbors(adata, n_neighbors=10, random_state=0)
    return {
        "connectivities": _np(adata.obsp["connectivities"]),
        "distances": _np(adata.obsp["distances"]),
    }


def case_rank_genes_ttest(adata):
    sc.tl.rank_genes_groups(_lognorm(adata), "bulk_labels", method="t-test")
    return _rank_genes(adata)


def case_rank_genes_wilcoxon(adata):
    sc.tl.rank_genes_groups(_lognorm(adata), "bulk_labels", method="wilcoxon")
    return _rank_genes(adata)


def case_aggregate(adata):
    out = sc.get.aggregate(adata, "bulk_labels", func=["sum", "mean", "count_nonzero"])
    return {f"layers.{k}": _np(v) for k, v in out.layers.items()}


def case_filter(adata):
    sc.pp.filter_genes(adata, min_cells=10)
    sc.pp.filter_cells(adata, min_genes=50)
    return {
        "X": _np(adata.X),
        "n_cells": _np(adata.var["n_cells"]),
        "n_genes": _np(adata.obs["n_genes"]),
    }


CASES = {
    "calculate_qc_metrics": case_qc,
    "normalize_total+log1p": case_normalize_log1p,
    "hvg_seurat": case_hvg_seurat,
    "hvg_cell_ranger": case_hvg_cell_ranger,
    "hvg_seurat_v3": case_hvg_seurat_v3,
    "scale": case_scale,
    "pca": case_pca,
    "pca_after_scale": case_pca_after_scale,
    "pca_after_scale_covariance_eigh": case_pca_after_scale_covariance,
    "neighbors": case_neighbors,
    "rank_genes_groups_ttest": case_rank_genes_ttest,
    "rank_genes_groups_wilcoxon": case_rank_genes_wilcoxon,
    "aggregate": case_aggregate,
    "filter_genes+filter_cells": case_filter,
}

#: Cases scanpy itself fails on any Dask array (here: on ``csr_matrix`` chunks), with the
#: reason; each is listed in README's "Not supported yet". Checked, not assumed: the test
#: fails when scanpy starts to accept them, so the list stays true.
DOCUMENTED = {
    "rank_genes_groups_wilcoxon": "scanpy's Wilcoxon test does not take Dask arrays",
    **(
        {
            "aggregate": "scanpy < 1.12: sc.get.aggregate does not take Dask arrays",
            "hvg_seurat_v3": "scanpy < 1.12: seurat_v3 fails on Dask arrays of csr_matrix",
        }
        if _scanpy_version() < (1, 12)
        else {}
    ),
    **(
        {"pca_after_scale": "PCA of a dense Dask array needs dask-ml (not installed)"}
        if find_spec("dask_ml") is None
        else {}
    ),
}


#: Cases scanpy runs on ``csr_matrix`` chunks but not on scdask's, with the reason (also in
#: README's "Not supported yet"); checked like DOCUMENTED.
DIVERGES: dict = {}  # scanpy calls that work on csr_matrix chunks but not on ours: none


def _outcome(case, make):
    try:
        return case(make()), None
    except Exception as err:
        return None, err


def _assert_same(got: dict, want: dict, what: str, atol: float = 1e-9) -> None:
    """Equal keys and shapes; values to ``RTOL`` relative (plus ``atol`` of the largest)."""
    assert got.keys() == want.keys(), what
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape, f"{what}: {key} shape {g.shape} != {w.shape}"
        if w.dtype.kind in "OUSb":
            np.testing.assert_array_equal(g, w, err_msg=f"{what}: {key}")
        else:
            scale = float(np.nanmax(np.abs(w), initial=0.0))
            np.testing.assert_allclose(
                g, w, rtol=RTOL, atol=atol * scale, equal_nan=True, err_msg=f"{what}: {key}"
            )


def _as(dtype, make):
    def made():
        adata = make()
        adata.X = adata.X.astype(dtype)
        return adata

    return made


@pytest.fixture(scope="module")
def references() -> dict:
    return {}


def _reference(references, name, dtype, make=reference):
    key = (name, dtype, make.__name__)
    if key not in references:
        references[key] = _outcome(CASES[name], _as(dtype, make))
    return references[key]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", CASES)
def test_scanpy_gives_the_numbers_of_scanpy(name, source, dtype, references):
    """In float64 both sources give scanpy's in-memory numbers to 1e-6; in float32 (where
    scanpy's Dask paths accumulate differently from its in-memory ones, e.g. 1.2e-4 on
    cell_ranger's normalised dispersions) ``lazy`` gives scanpy's numbers on csr_matrix
    chunks and ``to_memory`` those in memory."""
    case = CASES[name]
    want, err = _reference(references, name, dtype)
    assert err is None, f"scanpy in memory fails on {name}: {err!r}"
    make = _as(dtype, SOURCES[source])
    if source == "lazy" and (name in DOCUMENTED or name in DIVERGES):
        _, chunks_err = _reference(references, name, dtype, csr_matrix_chunks)
        got, err = _outcome(case, make)
        if name in DOCUMENTED:
            assert chunks_err is not None, (
                f"scanpy now runs {name} on csr_matrix chunks: drop it from DOCUMENTED and "
                "from README's 'Not supported yet'"
            )
            if err is not None:
                assert type(err) is type(chunks_err), (err, chunks_err)
                pytest.xfail(f"documented: {DOCUMENTED[name]} ({type(err).__name__})")
            _assert_same(got, want, f"{name} on {source}", atol=RTOL)
            return
        assert chunks_err is None, chunks_err
        assert err is not None, f"{name} now runs on scdask's blocks: drop it from DIVERGES"
        pytest.xfail(f"documented: {DIVERGES[name]} ({type(err).__name__})")
    got = case(make())
    if source == "lazy" and dtype == "float32":
        want, chunks_err = _reference(references, name, dtype, csr_matrix_chunks)
        assert chunks_err is None, chunks_err
    _assert_same(got, want, f"{name} on {source} ({dtype})")


def test_blocks_are_what_the_installed_scanpy_accepts():
    from scanpy._compat import CSRBase  # private: the exact class scanpy's checks use

    x = lazy().X
    assert isinstance(x._meta, CSRBase)
    assert isinstance(x.blocks[0].compute(), CSRBase)
    assert BLOCK_BASE == ("matrix" if _scanpy_version() < (1, 12) else "array")
    base = sp.csr_matrix if BLOCK_BASE == "matrix" else sp.csr_array
    assert isinstance(x._meta, base)


# -- anndata's own writers ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
@pytest.mark.parametrize("source", ["lazy", "to_memory", "lazy view", "lazy dense"])
@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_anndata_writes_what_scdask_reads(tmp_path, source, fmt):
    want = reference()
    adata = SOURCES.get(source, lazy)()
    if source == "lazy view":
        adata, want = adata[100:450], want[100:450]
    expected = want.X.toarray()
    if source == "lazy dense":
        adata.X = adata.X - adata.X.mean(axis=0)
        assert type(adata.X._meta) is np.ndarray
        expected = expected - expected.mean(axis=0)
    path = tmp_path / f"out.{fmt}"
    getattr(adata, f"write_{fmt}")(path)
    back = getattr(ad, f"read_{fmt}")(path)
    assert sp.issparse(back.X) is (source != "lazy dense")
    np.testing.assert_allclose(_np(back.X), expected, rtol=1e-6, atol=1e-6)
    assert list(back.obs_names) == list(want.obs_names)
    # and scdask reads it back lazily, with the same numbers
    again = scdask.read(path) if fmt == "h5ad" else scdask.read_zarr(path)
    np.testing.assert_allclose(_np(again.X), expected, rtol=1e-6, atol=1e-6)


# -- in memory: numpy's ``out=`` and the parent's behaviour ---------------------------------------


def test_log1p_in_memory_writes_in_place():
    adata = to_memory()
    assert isinstance(adata.X, CSRBlock)
    want = np.log1p(reference().X.toarray())
    sc.pp.log1p(adata)
    np.testing.assert_allclose(_np(adata.X), want, rtol=RTOL)
    x = to_memory().X
    data = x.data
    assert np.log1p(x, out=x) is x
    assert x.data is data  # written into, not replaced
    np.testing.assert_allclose(x.toarray(), want, rtol=RTOL)
    dense = np.empty(x.shape, dtype=x.dtype)
    assert np.multiply(x, 2, out=dense) is dense
    np.testing.assert_allclose(dense, 2 * want, rtol=RTOL)
    with pytest.raises(TypeError, match="dense result"):
        np.add(x, 1, out=x)


def test_copy_pickle_and_constructor_behave_like_the_parent():
    x = to_memory().X
    parent = type(x).__mro__[2]  # after the protocol mixin
    assert parent is (sp.csr_matrix if BLOCK_BASE == "matrix" else sp.csr_array)
    for again in (x.copy(), pickle.loads(pickle.dumps(x))):
        assert type(again) is CSRBlock
        assert not np.shares_memory(again.data, x.data)
        np.testing.assert_array_equal(again.toarray(), x.toarray())
    built = CSRBlock((x.data, x.indices, x.indptr), shape=x.shape)
    plain = parent((x.data, x.indices, x.indptr), shape=x.shape)
    np.testing.assert_array_equal(built.toarray(), plain.toarray())
    assert type(CSRBlock(x.toarray())) is CSRBlock
    # reductions called as scipy's methods answer as the parent does on matrices (scanpy
    # 1.11 reads np.matrix results); on sparse arrays as numpy does (csr_array's max/min
    # are sparse, ours dense, as before); numpy's keepdims protocol (what dask uses)
    # answers as numpy does on both
    for op in ("sum", "mean", "max", "min"):
        got, ref = getattr(x, op)(axis=0), getattr(plain, op)(axis=0)
        if BLOCK_BASE == "matrix" or op in ("sum", "mean"):
            assert type(got) is type(ref), op
        else:
            assert type(got) is np.ndarray and got.shape == (x.shape[1],)
        np.testing.assert_allclose(_np(got), _np(ref), rtol=RTOL)
        kept = getattr(np, op)(x, axis=0, keepdims=True)
        assert type(kept) is np.ndarray and kept.shape == (1, x.shape[1])
    assert type(x.to_scipy()) is sp.csr_array


def test_scanpy_chain_in_memory_on_to_memory():
    """The usual scanpy chain, in memory, on ``to_memory()``: every step runs."""
    adata = to_memory()
    sc.pp.filter_cells(adata, min_genes=20)
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.calculate_qc_metrics(adata, inplace=True)
    _lognorm(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=300)
    adata.raw = adata
    adata = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=20)
    sc.pp.neighbors(adata, n_neighbors=10)
    sc.tl.rank_genes_groups(adata, "bulk_labels", method="wilcoxon")
    if find_spec("leidenalg") is not None:
        sc.tl.leiden(adata, flavor="igraph", n_iterations=2)
        assert adata.obs["leiden"].nunique() > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg = sc.get.aggregate(adata.raw.to_adata(), "bulk_labels", func="mean")
    assert agg.shape[0] == adata.obs["bulk_labels"].nunique()


def test_scanpy_normalize_total_keeps_our_blocks(sample_path):
    """scanpy < 1.12 rebuilds scaled chunks as plain csr_matrix; ours stay blocks (the
    registration in scdask._ops._compat.register_scanpy), so later steps still work."""
    import scanpy as sc

    import scdask

    lazy = scdask.read_h5ad(sample_path, chunk_size=200)
    sc.pp.normalize_total(lazy, target_sum=1e4)
    block = lazy.X.blocks[0].compute()
    assert type(block) is type(lazy.X._meta)
    totals = np.asarray(lazy.X.sum(axis=1).compute()).ravel()  # a dask op on those chunks
    np.testing.assert_allclose(totals[totals > 0], 1e4, rtol=1e-4)
