"""10x Genomics readers and scdask.read: parity with scanpy 1.11, laziness, the mtx cache."""

from __future__ import annotations

import os
import shutil
import warnings

import anndata as ad
import dask
import dask.array as da
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask.datasets._tenx import write_10x_h5, write_10x_mtx, write_visium
from scdask.io import FileFormatError, _tenx

sc = pytest.importorskip("scanpy")

N_CELLS = 90


@pytest.fixture(autouse=True)
def cache(tmp_path):
    """Every test gets its own mtx cache folder."""
    folder = tmp_path / "cache"
    with dask.config.set({"scdask.cache-dir": str(folder)}):
        yield folder / "10x-mtx"


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    """Real counts from the bundled sample: 90 cells x 300 genes, 3 antibodies, a repeated
    symbol, a few cells out of tissue."""
    full = scdask.datasets.sample()
    x = sp.csr_array(full.X[:N_CELLS])
    genes = np.argsort(-np.asarray((x > 0).sum(axis=0)).ravel(), kind="stable")[:300]
    a = full[:N_CELLS, np.sort(genes)].copy()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    names = list(a.var_names)
    names[7] = names[2]  # a symbol twice, as in real references
    names[250] = names[2]
    a.var_names = names
    a.var["gene_ids"] = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    types = np.array(["Gene Expression"] * a.n_vars, dtype=object)
    types[[5, 120, 299]] = "Antibody Capture"  # not only at the end: three runs to keep
    a.var["feature_types"] = types
    rng = np.random.default_rng(3)
    a.obs_names = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(N_CELLS)]
    a.obs["in_tissue"] = (np.arange(N_CELLS) % 7 != 0).astype(int)
    return a


@pytest.fixture(scope="module")
def files(counts, tmp_path_factory):
    d = tmp_path_factory.mktemp("tenx")
    return {
        "h5": write_10x_h5(counts, d / "filtered_feature_bc_matrix.h5"),
        "mtx": write_10x_mtx(counts, d / "mtx"),
        "mtx_plain": write_10x_mtx(counts, d / "mtx_plain", compress=False),
        "mtx_shuffled": write_10x_mtx(counts, d / "mtx_shuffled", order="shuffled"),
        "visium_csv": write_visium(counts, d / "visium_csv", positions="csv"),
        "visium_list": write_visium(counts, d / "visium_list", positions="list"),
        "visium_mtx": write_visium(counts, d / "visium_mtx", counts="mtx"),
    }


def _scanpy(func, *args, **kwargs) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations, non-unique names
        return func(*args, **kwargs)


def _ours(func, *args, **kwargs) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Variable names are not unique")
        return func(*args, **kwargs)


def _assert_same(ours: ad.AnnData, theirs: ad.AnnData) -> None:
    assert isinstance(ours.X, da.Array)
    x = ours.X.compute()
    assert isinstance(x, scdask._ops.CSRBlock)
    assert x.dtype == theirs.X.dtype
    assert x.shape == theirs.shape
    assert abs(sp.csr_array(x) - sp.csr_array(theirs.X)).max() == 0
    pd.testing.assert_index_equal(ours.obs_names, theirs.obs_names)
    pd.testing.assert_index_equal(ours.var_names, theirs.var_names)
    pd.testing.assert_frame_equal(ours.var, theirs.var)
    pd.testing.assert_frame_equal(ours.obs, theirs.obs)


# -- Cell Ranger .h5 ---------------------------------------------------------------------------


@pytest.mark.parametrize("gex_only", [True, False])
def test_10x_h5_matches_scanpy(files, gex_only):
    theirs = _scanpy(sc.read_10x_h5, files["h5"], gex_only=gex_only)
    ours = _ours(scdask.read_10x_h5, files["h5"], gex_only=gex_only, chunk_size=16)
    _assert_same(ours, theirs)
    assert list(ours.var.columns) == ["gene_ids", "feature_types", "genome"]
    assert ours.n_vars == (297 if gex_only else 300)
    assert ours.var_names.duplicated().any()  # as scanpy: the symbols as stored


def test_10x_h5_genome(files):
    theirs = _scanpy(sc.read_10x_h5, files["h5"], genome="GRCh38")
    _assert_same(_ours(scdask.read_10x_h5, files["h5"], genome="GRCh38"), theirs)
    with pytest.raises(scdask.InputError, match="genome 'mm10'"):
        scdask.read_10x_h5(files["h5"], genome="mm10")


def test_10x_h5_legacy_v2_matches_scanpy(counts, tmp_path):
    path = tmp_path / "v2.h5"
    m = sp.csc_array(sp.csr_array(counts.X).T.astype(np.int32))  # genes x cells
    with h5py.File(path, "w") as f:
        g = f.create_group("hg19")
        g["barcodes"] = np.asarray(counts.obs_names, "S")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr
        g["shape"] = np.array(m.shape, np.int32)
        g["gene_names"] = np.asarray(counts.var_names, "S")
        g["genes"] = np.asarray(counts.var["gene_ids"], "S")
    theirs = _scanpy(sc.read_10x_h5, path)
    _assert_same(_ours(scdask.read_10x_h5, path, chunk_size=25), theirs)


def test_10x_h5_refuses_nonfinite_when_read(counts, tmp_path):
    path = write_10x_h5(counts, tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        data = f["matrix/data"][()].astype(np.float32)
        data[3] = np.nan
        del f["matrix/data"]
        f["matrix/data"] = data
    adata = _ours(scdask.read_10x_h5, path)  # building reads nothing
    with pytest.raises(scdask.InputError, match="NaN or infinite"):
        adata.X.compute()


def test_10x_h5_errors(tmp_path, sample_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(FileFormatError, match="not an HDF5 file"):
        scdask.read_10x_h5(text)
    with pytest.raises(FileFormatError, match="not a 10x matrix"):
        scdask.read_10x_h5(sample_path)
    with pytest.raises(FileNotFoundError):
        scdask.read_10x_h5(tmp_path / "missing.h5")


# -- mtx folders -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gex_only": False},
        {"var_names": "gene_ids"},
        {"make_unique": False},
    ],
)
def test_10x_mtx_matches_scanpy(files, kwargs):
    theirs = _scanpy(sc.read_10x_mtx, files["mtx"], **kwargs)
    ours = _ours(scdask.read_10x_mtx, files["mtx"], chunk_size=16, **kwargs)
    # scanpy's X is CSC (the transpose of the genes x cells mtx); values and dtype agree
    _assert_same(ours, theirs)


def test_10x_mtx_matches_10x_h5_values(files):
    h5 = _ours(scdask.read_10x_h5, files["h5"])
    mtx = scdask.read_10x_mtx(files["mtx"])
    assert abs(sp.csr_array(h5.X.compute()) - sp.csr_array(mtx.X.compute())).max() == 0
    pd.testing.assert_index_equal(h5.obs_names, mtx.obs_names)


def test_10x_mtx_plain_names(files):
    """Uncompressed v3 names (scanpy 1.11 expects .gz for v3, so compare with our .gz read)."""
    plain = scdask.read_10x_mtx(files["mtx_plain"])
    _assert_same(plain, _scanpy(sc.read_10x_mtx, files["mtx"]))


def test_10x_mtx_legacy_v2_matches_scanpy(counts, tmp_path):
    folder = tmp_path / "v2"
    write_10x_mtx(counts, folder, compress=False)
    table = pd.read_csv(folder / "features.tsv", sep="\t", header=None)
    table[[0, 1]].to_csv(folder / "genes.tsv", sep="\t", header=False, index=False)
    (folder / "features.tsv").unlink()
    theirs = _scanpy(sc.read_10x_mtx, folder)
    ours = scdask.read_10x_mtx(folder)
    _assert_same(ours, theirs)
    assert "feature_types" not in ours.var


@pytest.mark.parametrize("memory", ["64MiB", "1KiB"])
def test_10x_mtx_unsorted_entries(files, monkeypatch, memory):
    """Shuffled entries go through buckets (many at 1 KiB); same result as sorted ones."""
    monkeypatch.setattr(_tenx, "_MIN_LINES", 500)
    with dask.config.set({"scdask.chunk-memory": memory}):
        shuffled = scdask.read_10x_mtx(files["mtx_shuffled"], chunk_size=1000)
        ordered = scdask.read_10x_mtx(files["mtx"], chunk_size=1000)
    theirs = _scanpy(sc.read_10x_mtx, files["mtx_shuffled"])
    _assert_same(shuffled, theirs)
    _assert_same(ordered, theirs)


def test_10x_mtx_sorted_in_many_chunks_writes_in_one_pass(files, monkeypatch):
    """Entries in small parsing chunks: cells that straddle chunks are carried over."""
    monkeypatch.setattr(_tenx, "_MIN_LINES", 37)
    calls = []
    real = _tenx._write_bucketed
    monkeypatch.setattr(_tenx, "_write_bucketed", lambda *a: calls.append(1) or real(*a))
    with dask.config.set({"scdask.chunk-memory": "1KiB"}):
        ours = scdask.read_10x_mtx(files["mtx"])
    assert not calls
    _assert_same(ours, _scanpy(sc.read_10x_mtx, files["mtx"]))


def test_10x_mtx_duplicates_are_summed_and_pattern_read(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n% a comment\n3 2 4\n"
        "2 2 1\n1 1 2\n2 2 3\n3 1 1\n"
    )
    (folder / "features.tsv").write_text(
        "".join(f"g{i}\tG{i}\tGene Expression\n" for i in (1, 2, 3))
    )
    (folder / "barcodes.tsv").write_text("a\nb\n")
    x = scdask.read_10x_mtx(folder).X.compute().toarray()
    np.testing.assert_array_equal(x, [[2, 0, 1], [0, 4, 0]])
    pattern = tmp_path / "p"
    shutil.copytree(folder, pattern)
    (pattern / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate pattern general\n3 2 2\n3 2\n1 1\n"
    )
    x = scdask.read_10x_mtx(pattern).X.compute().toarray()
    np.testing.assert_array_equal(x, [[1, 0, 0], [0, 0, 1]])
    (pattern / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate real general\n3 2 0\n")
    x = scdask.read_10x_mtx(pattern).X.compute()
    assert x.shape == (2, 3) and x.nnz == 0


def test_10x_mtx_cache_reused_then_invalidated(counts, tmp_path, cache):
    folder = write_10x_mtx(counts, tmp_path / "mtx")
    first = scdask.read_10x_mtx(folder)
    (cached,) = cache.glob("*.h5ad")
    stamp = cached.stat().st_mtime_ns
    second = scdask.read_10x_mtx(folder)
    assert list(cache.glob("*.h5ad")) == [cached]
    assert cached.stat().st_mtime_ns == stamp  # not rewritten
    assert abs(sp.csr_array(first.X.compute()) - sp.csr_array(second.X.compute())).max() == 0
    assert not any(folder.glob("*.h5ad")) and sorted(p.name for p in folder.iterdir()) == [
        "barcodes.tsv.gz",
        "features.tsv.gz",
        "matrix.mtx.gz",
    ]  # nothing written into the input folder
    # the input changes: new values, a new cache, the stale one removed
    expected = 2 * sp.csr_array(first.X.compute())
    changed = _ours(counts.copy)
    changed.X = changed.X * 2
    write_10x_mtx(changed, folder)
    st = (folder / "matrix.mtx.gz").stat()
    os.utime(folder / "matrix.mtx.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = scdask.read_10x_mtx(folder)
    (renewed,) = cache.glob("*.h5ad")
    assert renewed != cached
    assert abs(sp.csr_array(third.X.compute()) - expected).max() == 0


def test_10x_mtx_errors(counts, tmp_path):
    folder = write_10x_mtx(counts, tmp_path / "mtx")
    (folder / "features.tsv.gz").unlink()
    with pytest.raises(FileFormatError, match=r"no features\.tsv\.gz"):
        scdask.read_10x_mtx(folder)
    truncated = write_10x_mtx(counts, tmp_path / "short", compress=False)
    lines = (truncated / "matrix.mtx").read_text().splitlines()
    (truncated / "matrix.mtx").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(FileFormatError, match=r"declares .* entries"):
        scdask.read_10x_mtx(truncated)
    with pytest.raises(scdask.InputError, match="var_names"):
        scdask.read_10x_mtx(folder, var_names="symbols")
    dense = tmp_path / "dense"
    shutil.copytree(truncated, dense)
    (dense / "matrix.mtx").write_text("%%MatrixMarket matrix array real general\n1 1\n1\n")
    with pytest.raises(FileFormatError, match="coordinate"):
        scdask.read_10x_mtx(dense)
    gz = tmp_path / "cut"
    shutil.copytree(folder.parent / "mtx", gz)
    write_10x_mtx(counts, gz)
    data = (gz / "matrix.mtx.gz").read_bytes()
    (gz / "matrix.mtx.gz").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(FileFormatError, match="truncated"):
        scdask.read_10x_mtx(gz)


# -- Space Ranger folders ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["visium_csv", "visium_list"])
def test_visium_matches_scanpy(files, kind):
    theirs = _scanpy(sc.read_visium, files[kind])
    ours = _ours(scdask.read_visium, files[kind], chunk_size=20)
    _assert_same(ours, theirs)
    assert list(ours.obs.columns) == ["in_tissue", "array_row", "array_col"]
    assert (ours.obs["in_tissue"] == 0).any()  # spots out of tissue are kept
    assert ours.n_obs == N_CELLS  # spots of the slide that are not in the matrix are not
    assert ours.obsm["spatial"].dtype == theirs.obsm["spatial"].dtype
    np.testing.assert_array_equal(ours.obsm["spatial"], theirs.obsm["spatial"])
    (lib,) = theirs.uns["spatial"]
    assert list(ours.uns["spatial"]) == [lib] == ["sample"]
    mine, ref = ours.uns["spatial"][lib], theirs.uns["spatial"][lib]
    assert mine["scalefactors"] == ref["scalefactors"]
    assert mine["metadata"] == ref["metadata"]
    assert sorted(mine["images"]) == sorted(ref["images"]) == ["hires", "lowres"]
    for res in ("hires", "lowres"):
        assert mine["images"][res].dtype == ref["images"][res].dtype
        np.testing.assert_array_equal(mine["images"][res], ref["images"][res])


def test_visium_positions_by_hand(files, counts):
    """The pixel coordinates as (x, y) = (pxl_col_in_fullres, pxl_row_in_fullres)."""
    table = pd.read_csv(files["visium_csv"] / "spatial" / "tissue_positions.csv", index_col=0)
    ours = _ours(scdask.read_visium, files["visium_csv"], library_id="A1")
    spots = table.loc[counts.obs_names]
    np.testing.assert_array_equal(
        ours.obsm["spatial"], spots[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    )
    np.testing.assert_array_equal(ours.obs["in_tissue"], counts.obs["in_tissue"])
    assert list(ours.uns["spatial"]) == ["A1"]


def test_visium_mtx_counts_and_no_images(files, counts, tmp_path):
    """The mtx folder when the .h5 is absent (scanpy 1.11 needs the .h5: compared with ours);
    missing images are skipped (scanpy 1.11 raises)."""
    from_h5 = _ours(scdask.read_visium, files["visium_csv"])
    from_mtx = scdask.read_visium(files["visium_mtx"])
    assert abs(sp.csr_array(from_mtx.X.compute()) - sp.csr_array(from_h5.X.compute())).max() == 0
    pd.testing.assert_index_equal(from_mtx.obs_names, from_h5.obs_names)
    assert list(from_mtx.uns["spatial"]) == ["visium_mtx"]  # no .h5 attributes: the folder
    assert from_mtx.uns["spatial"]["visium_mtx"]["metadata"] == {}
    bare = write_visium(counts, tmp_path / "bare", images=False)
    adata = _ours(scdask.read_visium, bare)
    assert adata.uns["spatial"]["sample"]["images"] == {}


def test_visium_errors(files, counts, tmp_path):
    other = write_visium(_ours(counts[:10].copy), tmp_path / "other")
    broken = tmp_path / "broken"
    shutil.copytree(files["visium_csv"], broken)
    shutil.copy(
        other / "spatial" / "tissue_positions.csv", broken / "spatial" / "tissue_positions.csv"
    )
    with pytest.raises(FileFormatError, match="80 barcodes of the matrix"):
        _ours(scdask.read_visium, broken)
    (broken / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(FileFormatError, match="tissue_positions"):
        _ours(scdask.read_visium, broken)
    shutil.rmtree(broken / "spatial")
    with pytest.raises(FileFormatError, match="no spatial/ folder"):
        _ours(scdask.read_visium, broken)
    with pytest.raises(FileFormatError, match=r"has no raw\.h5"):
        scdask.read_visium(files["visium_csv"], count_file="raw.h5")


# -- laziness and blocks -----------------------------------------------------------------------


def test_building_reads_no_block(files, counting_scheduler, monkeypatch):
    scdask.read_10x_mtx(files["mtx"])  # the cache is made before counting (a pass, no compute)
    scdask.read_10x_mtx(files["visium_mtx"] / "filtered_feature_bc_matrix")

    def refuse(*args, **kwargs):
        raise AssertionError("a matrix block was read while building")

    monkeypatch.setattr("scdask.io._read._csr_rows", refuse)
    with counting_scheduler(0):
        adatas = [
            _ours(scdask.read_10x_h5, files["h5"]),
            _ours(scdask.read_10x_mtx, files["mtx"]),
            _ours(scdask.read_visium, files["visium_csv"]),
            _ours(scdask.read_visium, files["visium_mtx"]),
            _ours(scdask.read, files["h5"]),
            _ours(scdask.read, files["mtx"]),
        ]
    assert all(isinstance(a.X, da.Array) for a in adatas)
    with pytest.raises(AssertionError, match="block was read"):
        adatas[0].X.compute()


@pytest.mark.parametrize("reader,key", [("read_10x_h5", "h5"), ("read_10x_mtx", "mtx")])
def test_many_blocks_equal_one(files, reader, key):
    func = getattr(scdask, reader)
    many = _ours(func, files[key], chunk_size=7)
    one = _ours(func, files[key], chunk_size=10**6)
    assert many.X.numblocks == (13, 1) and one.X.numblocks == (1, 1)
    assert many.X.chunks[0][:2] == (7, 7)
    blocks = many.X.to_delayed().ravel()
    assert all(isinstance(b.compute(), scdask._ops.CSRBlock) for b in blocks[:2])
    a, b = sp.csr_array(many.X.compute()), sp.csr_array(one.X.compute())
    assert a.dtype == b.dtype and abs(a - b).max() == 0
    # auto blocks are sized from scdask.chunk-memory
    auto = _ours(func, files[key])
    assert auto.X.numblocks == (1, 1)


# -- scdask.read -------------------------------------------------------------------------------


def test_read_dispatches_each_kind(files, sample_path, tmp_path):
    assert scdask.read(sample_path, chunk_size=200).X.chunks[0] == (200, 200, 159)
    small = tmp_path / "small.zarr"
    scdask.write_zarr(scdask.read_h5ad(sample_path), small)
    assert scdask.read(small).shape == (559, 32786)
    assert _ours(scdask.read, files["h5"]).shape == (N_CELLS, 297)
    assert _ours(scdask.read, files["h5"], gex_only=False).shape == (N_CELLS, 300)
    assert scdask.read(files["mtx"]).shape == (N_CELLS, 297)
    assert scdask.read(files["mtx"] / "matrix.mtx.gz").shape == (N_CELLS, 297)
    assert scdask.read(files["mtx_plain"]).shape == (N_CELLS, 297)
    for kind in ("visium_csv", "visium_list", "visium_mtx"):
        adata = _ours(scdask.read, files[kind])
        assert adata.obsm["spatial"].shape == (N_CELLS, 2), kind
    assert scdask.io.read is scdask.read


def test_read_says_what_it_found(tmp_path, files):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    (folder / "sub").mkdir()
    with pytest.raises(FileFormatError) as e:
        scdask.read(folder)
    msg = str(e.value)
    assert "\n" not in msg
    assert "a folder holding ['notes.txt', 'sub/']" in msg
    assert "an .h5ad file, an anndata zarr store, a 10x .h5 matrix" in msg
    assert isinstance(e.value, scdask.InputError)
    with pytest.raises(FileFormatError, match="is not HDF5"):
        scdask.read(folder / "notes.txt")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["weights"] = np.arange(3)
    with pytest.raises(FileFormatError, match=r"HDF5 file with top-level keys \['weights'\]"):
        scdask.read(other)
    with pytest.raises(FileNotFoundError):
        scdask.read(tmp_path / "missing")
    # Cell Ranger outs/ without spatial/: say which file to pass
    outs = tmp_path / "outs"
    outs.mkdir()
    shutil.copy(files["h5"], outs / "filtered_feature_bc_matrix.h5")
    with pytest.raises(FileFormatError, match=r"pass outs/filtered_feature_bc_matrix\.h5"):
        scdask.read(outs)
