"""File tools: convert, subset, inspect, update_metadata against anndata references."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask.io._tools as tools_mod
from scdask.io import (
    StoreInfo,
    convert,
    inspect,
    read_h5ad,
    read_zarr,
    subset,
    update_metadata,
)

N_OBS, N_VARS = 90, 31


def _source(path, layout: str = "csr", *, fmt: str = "h5ad") -> ad.AnnData:
    rng = np.random.default_rng(7)
    m = sp.random(N_OBS, N_VARS, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    m.data = np.round(m.data * 9) + 1
    as_layout = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": lambda a: a.toarray()}
    obs = pd.DataFrame(
        {"batch": pd.Categorical(rng.choice(["b1", "b2", "b3"], N_OBS)), "q": rng.random(N_OBS)},
        index=[f"cell{i}" for i in range(N_OBS)],
    )
    var = pd.DataFrame({"gene_ids": [f"ENSG{i:05d}" for i in range(N_VARS)]})
    var.index = [f"gene{i}" for i in range(N_VARS)]
    adata = ad.AnnData(
        X=as_layout[layout](m),
        obs=obs,
        var=var,
        layers={"counts": as_layout[layout](m.astype(np.int64))},
        obsm={"X_umap": rng.random((N_OBS, 2))},
    )
    adata.raw = adata.copy()
    if fmt == "h5ad":
        adata.write_h5ad(path)
    else:
        adata.write_zarr(path)
    return adata


def _assert_same_sparse(got, want, fmt: str) -> None:
    assert sp.issparse(got) and got.format == fmt
    want = want.asformat(fmt)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


# -- convert -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "target"), [("csr", "csc"), ("csc", "csr"), ("csc", "csc")])
@pytest.mark.parametrize("out_name", ["out.h5ad", "out.zarr"])
def test_convert_layouts_exact(tmp_path, start, target, out_name):
    src = tmp_path / "src.h5ad"
    _source(src, start)
    ref = ad.read_h5ad(src)
    plan = convert(src, tmp_path / out_name, layout=target, memory=6000)
    got = (ad.read_zarr if out_name.endswith(".zarr") else ad.read_h5ad)(tmp_path / out_name)
    _assert_same_sparse(got.X, ref.X, target)
    _assert_same_sparse(got.layers["counts"], ref.layers["counts"], target)
    _assert_same_sparse(got.raw.X, ref.raw.X, target)
    pd.testing.assert_frame_equal(got.obs, ref.obs)
    pd.testing.assert_frame_equal(got.var, ref.var)
    np.testing.assert_array_equal(got.obsm["X_umap"], ref.obsm["X_umap"])
    assert len(plan) == 3
    if start == target:
        assert plan[0] == f"X: already {target}, copied in one pass"
    else:
        # 6000 B budget: buckets of a few rows/columns, each scanning the whole matrix
        assert plan[0].startswith(f"X: {start} -> {target} in ")
        n_buckets = int(plan[0].split(" in ")[1].split()[0])
        assert n_buckets > 2
        assert "each bucket scans the whole matrix" in plan[0]


def test_convert_keeps_dense_and_refuses_same_path(tmp_path):
    src = tmp_path / "dense.h5ad"
    _source(src, "dense")
    assert convert(src, tmp_path / "o.h5ad", layout="csc") == []
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "o.h5ad").X, ad.read_h5ad(src).X)
    with pytest.raises(ValueError, match="it is the input"):
        convert(src, src, layout="csr")
    with pytest.raises(ValueError, match="layout must be"):
        convert(src, tmp_path / "x.h5ad", layout="coo")


# -- subset ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_subset_matches_anndata(tmp_path, fmt):
    src = tmp_path / f"src.{fmt}"
    _source(src, "csr", fmt=fmt)
    ref = (ad.read_h5ad if fmt == "h5ad" else ad.read_zarr)(src)
    mask = (ref.obs["batch"] != "b2").to_numpy()
    genes = np.array([0, 3, 4, 10, 30])
    subset(src, tmp_path / "sub.h5ad", obs=mask, var=genes)
    got = ad.read_h5ad(tmp_path / "sub.h5ad")
    want = ref[mask, genes].copy()  # as anndata writes a view (unused categories dropped)
    _assert_same_sparse(got.X, want.X, "csr")
    _assert_same_sparse(got.layers["counts"], want.layers["counts"], "csr")
    pd.testing.assert_frame_equal(got.obs, want.obs)
    pd.testing.assert_frame_equal(got.var, want.var)
    np.testing.assert_array_equal(got.obsm["X_umap"], want.obsm["X_umap"])
    assert got.raw.shape == (mask.sum(), N_VARS)  # raw keeps every gene, as in anndata


def test_subset_by_names_and_errors(tmp_path):
    src = tmp_path / "src.h5ad"
    _source(src)
    ref = ad.read_h5ad(src)
    names = ["cell5", "cell1", "cell42"]
    subset(src, tmp_path / "named.h5ad", obs=names, var=pd.Series(ref.var_names == "gene3"))
    got = ad.read_h5ad(tmp_path / "named.h5ad")
    assert list(got.obs_names) == names
    np.testing.assert_array_equal(got.X.toarray(), ref[names, ["gene3"]].X.toarray())
    with pytest.raises(ValueError, match=r"obs mask has 10 entries but the file has 90 obs"):
        subset(src, tmp_path / "bad.h5ad", obs=np.ones(10, dtype=bool))
    with pytest.raises(IndexError, match=r"var positions must lie in \[-31, 31\)"):
        subset(src, tmp_path / "bad.h5ad", var=[0, 31])
    assert not (tmp_path / "bad.h5ad").exists()


# -- inspect -----------------------------------------------------------------------------------


def test_inspect(tmp_path):
    src = tmp_path / "src.h5ad"
    _source(src, "csr")
    ref = ad.read_h5ad(src)
    info = inspect(src)
    assert isinstance(info, StoreInfo)
    assert info.shape == (N_OBS, N_VARS)
    assert info.layout == "csr" and info.dtype == "float32"
    assert info.nnz == ref.X.nnz
    assert info.density == pytest.approx(ref.X.nnz / (N_OBS * N_VARS))
    assert info.obs_columns == ["batch", "q"] and info.var_columns == ["gene_ids"]
    assert info.layers == {"counts": "csr"} and info.raw == (N_OBS, N_VARS)
    assert info.file_bytes == src.stat().st_size
    assert info.chunk_rows == N_OBS and info.n_blocks == 1
    text = str(info)
    assert f"{N_OBS} cells x {N_VARS} genes, csr float32, {ref.X.nnz:,} non-zeros" in text
    assert "obs:    2 columns: batch, q" in text and "layers: counts (csr)" in text


def test_inspect_csc_and_dense(tmp_path):
    _source(tmp_path / "csc.h5ad", "csc")
    info = inspect(tmp_path / "csc.h5ad")
    assert info.layout == "csc" and "each of the 1 blocks scans the whole matrix" in str(info)
    _source(tmp_path / "dense.h5ad", "dense")
    info = inspect(tmp_path / "dense.h5ad")
    assert info.layout == "dense" and info.nnz is None and info.density is None
    assert info.block_bytes == N_OBS * N_VARS * 4
    with pytest.raises(FileNotFoundError):
        inspect(tmp_path / "nothing.h5ad")


def _counts(seed: int = 3) -> sp.csr_matrix:
    m = sp.random(N_OBS, N_VARS, density=0.3, format="csr", dtype=np.float32, random_state=seed)
    m.data = np.round(m.data * 9) + 1
    return m


def test_inspect_counts_x_has_no_content_notes(tmp_path):
    _source(tmp_path / "src.h5ad")
    info = inspect(tmp_path / "src.h5ad")
    assert info.looks_like_counts is True and info.counts_in is None
    assert (info.nonfinite, info.negative, info.fractional) == (0, 0, 0)
    assert info.sample_rows == N_OBS and info.sample_cols == N_VARS
    assert info.sample_values == info.nnz and info.max_value == 10
    assert info.duplicate_obs == 0 and info.duplicate_var == 0
    assert not info.unfinished_run and info.activity is None
    assert info.obsm == ["X_umap"] and "  obsm:   X_umap" in str(info)
    assert info.notes() == [] and "note:" not in str(info)


def test_inspect_log_normalised_x_names_the_counts_layer(tmp_path, monkeypatch):
    counts = _counts()
    x = counts.copy()
    x.data = np.log1p(x.data)
    path = tmp_path / "log.h5ad"
    ad.AnnData(X=x, layers={"raw_counts": counts, "other": x}).write_h5ad(path)
    monkeypatch.setattr(tools_mod, "_SAMPLE_VALUES", 100)  # a sample of the first rows
    info = inspect(path)
    assert 0 < info.sample_rows < N_OBS and info.sample_cols == N_VARS
    assert info.sample_values == x.indptr[info.sample_rows] <= 100
    assert info.looks_like_counts is False and info.fractional == info.sample_values
    assert info.negative == 0 and info.nonfinite == 0
    want_max = x.data[: info.sample_values].max()
    assert info.max_value == pytest.approx(want_max)
    assert info.counts_in == "layers['raw_counts']"
    text = str(info)
    assert (
        f"  note:   X is not counts: 100% of the stored values in the first {info.sample_rows} "
        f"rows are not whole numbers (max {want_max:.3g}; looks log-normalised). scdask's "
        "preprocessing and activity need counts; layers['raw_counts'] holds counts: "
        "pass layer='raw_counts'"
    ) in text


def test_inspect_log_normalised_x_with_counts_in_raw_or_nowhere(tmp_path):
    counts = _counts()
    adata = ad.AnnData(X=counts)
    adata.raw = adata.copy()
    adata.X = counts.multiply(1 / 7).tocsr()
    adata.write_h5ad(tmp_path / "raw.h5ad")
    info = inspect(tmp_path / "raw.h5ad")
    assert info.looks_like_counts is False and info.counts_in == "raw.X"
    assert "raw.X holds counts: pass use_raw=True" in str(info)

    ad.AnnData(X=counts.multiply(1 / 7).tocsr()).write_h5ad(tmp_path / "none.h5ad")
    info = inspect(tmp_path / "none.h5ad")
    assert info.counts_in is None
    assert "no layer named like counts, nor raw.X, looks like counts here" in str(info)


def test_inspect_flags_nan_inf_and_negative(tmp_path):
    x = _counts().toarray()
    x[0, :3] = np.nan
    x[5, 1] = np.inf
    x[7, 2:6] = -2.0
    path = tmp_path / "bad.h5ad"
    ad.AnnData(X=sp.csr_matrix(x)).write_h5ad(path)
    info = inspect(path)
    assert info.nonfinite == 4 and info.negative == 4 and info.fractional == 0
    assert info.looks_like_counts is False and info.max_value == 10
    text = str(info)
    assert "note:   X has 4 NaN or infinite values in all of X; scdask refuses them" in text
    assert "note:   X has 4 negative values in all of X: counts are never negative" in text
    assert "scdask's preprocessing and activity need counts" in text

    ad.AnnData(X=np.where(np.isfinite(x), np.abs(x), 1.0)).write_h5ad(tmp_path / "dense.h5ad")
    info = inspect(tmp_path / "dense.h5ad")  # a dense X: its non-zeros are checked
    assert info.layout == "dense" and info.looks_like_counts is True
    assert info.sample_values == np.count_nonzero(np.where(np.isfinite(x), x, 1.0))


def test_inspect_dense_sample_is_bounded(tmp_path, monkeypatch):
    x = _counts().toarray() / 3
    ad.AnnData(X=x).write_h5ad(tmp_path / "dense.h5ad")
    monkeypatch.setattr(tools_mod, "_SAMPLE_VALUES", 5 * N_VARS)
    info = inspect(tmp_path / "dense.h5ad")
    assert info.sample_rows == 5 and info.sample_values == np.count_nonzero(x[:5])
    assert info.fractional > 0 and "in the first 5 rows are not whole numbers" in str(info)


def test_inspect_duplicate_names(tmp_path):
    obs = pd.DataFrame(index=[f"c{i % 80}" for i in range(N_OBS)])
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_VARS - 1)] + ["g0"])
    with pytest.warns(UserWarning, match="not unique"):
        ad.AnnData(X=_counts(), obs=obs, var=var).write_h5ad(tmp_path / "dup.h5ad")
    info = inspect(tmp_path / "dup.h5ad")
    assert info.duplicate_obs == N_OBS - 80 and info.duplicate_var == 1
    assert info.duplicate_examples == {"obs": ["c0", "c1", "c2"], "var": ["g0"]}
    text = str(info)
    assert "note:   10 obs names repeat an earlier one (e.g. 'c0', 'c1', 'c2')" in text
    assert "adata.obs_names_make_unique()" in text
    assert "note:   1 var names repeat an earlier one (e.g. 'g0')" in text
    assert "adata.var_names_make_unique()" in text


def test_inspect_csc_suggests_the_convert_command(tmp_path, monkeypatch):
    _source(tmp_path / "my atlas.h5ad", "csc")
    monkeypatch.setattr(tools_mod, "_SAMPLE_VALUES", 60)
    info = inspect(tmp_path / "my atlas.h5ad")
    assert info.sample_rows == N_OBS and 0 < info.sample_cols < N_VARS  # first columns
    assert info.looks_like_counts is True
    src, out = tmp_path / "my atlas.h5ad", tmp_path / "my atlas.csr.h5ad"
    assert f"scdask convert '{src}' '{out}' --layout csr" in str(info)
    assert "scdask.io.convert" not in str(info)


def _annotations_only(path) -> None:
    """What ``scdask run`` writes as cells.h5ad: obs, var, obsm, uns and no X."""
    obs = pd.DataFrame(
        {"leiden": pd.Categorical(["0", "1"] * 10)}, index=[f"c{i}" for i in range(20)]
    )
    var = pd.DataFrame({"highly_variable": [True, False] * 3}, index=[f"g{i}" for i in range(6)])
    obsm = {"X_pca": np.zeros((20, 4)), "X_umap": np.zeros((20, 2))}
    ad.AnnData(obs=obs, var=var, obsm=obsm, uns={"pca": {"n": 4}}).write_h5ad(path)
    with h5py.File(path) as f:
        assert "X" not in f


def test_inspect_file_without_x(tmp_path):
    from scdask._files import INCOMPLETE

    path = tmp_path / "cells.h5ad"
    _annotations_only(path)
    info = inspect(path)
    assert info.shape == (20, 6) and info.layout == "none" and info.dtype == "none"
    assert info.nnz is None and info.density is None
    assert (info.chunk_rows, info.n_blocks, info.block_bytes) == (0, 0, 0)
    assert info.obsm == ["X_pca", "X_umap"] and info.looks_like_counts is None
    assert info.obs_columns == ["leiden"] and info.var_columns == ["highly_variable"]
    text = str(info)
    assert (
        "  X:      no X (annotations only: 20 cells x 6 genes from obs/var; obsm: X_pca, X_umap)"
    ) in text
    assert "read:" not in text and "note:" not in text

    (tmp_path / INCOMPLETE).write_text("")
    info = inspect(path)
    assert info.unfinished_run
    assert "scdask run` that did not finish" in str(info)
    assert "not a finished result" in str(info)


@pytest.fixture(scope="module")
def activity_path(tmp_path_factory):
    import scdask

    res = scdask.activity.infer(
        scdask.datasets.sample(),
        level="pseudobulk",
        cell_type_col="cell_type",
        signature="cytosig",
        n_rand=10,
    )
    path = tmp_path_factory.mktemp("activity") / "act.h5ad"
    scdask.write_h5ad(res, path)
    return path


def test_inspect_activity_result(activity_path):
    info = inspect(activity_path)
    assert info.activity["level"] == "pseudobulk" and info.activity["n_rand"] == 10
    assert info.activity["signature"] == "cytosig"
    assert info.shape == (5, 43)
    assert set(info.layers) == {"beta", "se", "zscore", "pvalue"}
    text = str(info)
    assert (
        "  activity result (level=pseudobulk, signature=cytosig, n_rand=10): "
        "5 samples x 43 proteins"
    ) in text
    assert "  X:      5 samples x 43 proteins, dense float64" in text
    assert "genes" not in text and "cells" not in text
    assert "not counts" not in text and "negative" not in text  # statistics, not counts


# -- update_metadata ---------------------------------------------------------------------------


def _x_bytes(path) -> bytes:
    with h5py.File(path) as f:
        return f["X/data"][:].tobytes() + f["X/indices"][:].tobytes() + f["X/indptr"][:].tobytes()


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_update_metadata(tmp_path, fmt):
    src = tmp_path / f"src.{fmt}"
    _source(src, fmt=fmt)
    read = ad.read_h5ad if fmt == "h5ad" else ad.read_zarr
    before = read(src)
    obs = before.obs.assign(cluster=pd.Categorical(np.arange(N_OBS) % 4))
    var = before.var.drop(columns="gene_ids").assign(mean=np.linspace(0, 1, N_VARS))
    update_metadata(src, obs=obs, var=var)
    after = read(src)
    pd.testing.assert_frame_equal(after.obs, obs)
    pd.testing.assert_frame_equal(after.var, var)
    _assert_same_sparse(after.X, before.X, "csr")
    _assert_same_sparse(after.layers["counts"], before.layers["counts"], "csr")
    pd.testing.assert_frame_equal((read_h5ad if fmt == "h5ad" else read_zarr)(src).obs, obs)


def test_update_metadata_validates_first(tmp_path):
    src = tmp_path / "src.h5ad"
    _source(src)
    before = src.read_bytes()
    obs = ad.read_h5ad(src).obs
    with pytest.raises(ValueError, match=r"has 89 rows but .* has 90 obs"):
        update_metadata(src, obs=obs.iloc[1:])
    with pytest.raises(ValueError, match=r"index of the new obs table differs.*reindex"):
        update_metadata(src, obs=obs.iloc[::-1])
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        update_metadata(src, var={"a": 1})
    assert src.read_bytes() == before


def test_update_metadata_interrupted_keeps_old_table(tmp_path, monkeypatch):
    src = tmp_path / "src.h5ad"
    _source(src)
    x_before = _x_bytes(src)
    old_obs = ad.read_h5ad(src).obs

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tools_mod.ad.io, "write_elem", crash)
    with pytest.raises(KeyboardInterrupt):
        update_metadata(src, obs=old_obs.assign(new=1))
    monkeypatch.undo()
    with h5py.File(src) as f:
        assert sorted(f.keys()) == sorted(
            ["X", "layers", "obs", "obsm", "obsp", "raw", "uns", "var", "varm", "varp"]
        )
    pd.testing.assert_frame_equal(ad.read_h5ad(src).obs, old_obs)
    assert _x_bytes(src) == x_before


def test_update_metadata_repairs_a_half_done_swap(tmp_path):
    src = tmp_path / "src.h5ad"
    _source(src)
    obs = ad.read_h5ad(src).obs
    with h5py.File(src, "a") as f:  # as if a crash hit between the two renames
        f.move("obs", "__scdask_old_obs__")
    update_metadata(src, obs=obs.assign(flag=True))
    with h5py.File(src) as f:
        assert "__scdask_old_obs__" not in f and "obs" in f
    pd.testing.assert_frame_equal(ad.read_h5ad(src).obs, obs.assign(flag=True))
