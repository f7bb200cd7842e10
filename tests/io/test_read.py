"""Lazy reading: nothing read or computed until asked, the dask array API, clear errors."""

from __future__ import annotations

import operator
import warnings

import anndata as ad
import dask
import dask.array as da
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdask.io import CSCReadWarning, FileFormatError, read_h5ad, read_zarr

N_OBS, N_VARS = 61, 23


def _write_source(path, layout: str) -> None:
    rng = np.random.default_rng(1)
    m = sp.random(N_OBS, N_VARS, density=0.25, format="csr", dtype=np.float32, random_state=rng)
    m.data = np.round(m.data * 20) + 1
    x = {"csr": m, "csc": m.tocsc(), "dense": m.toarray()}[layout]
    obs = pd.DataFrame(
        {"group": pd.Categorical(rng.choice(["a", "b"], N_OBS))},
        index=[f"c{i}" for i in range(N_OBS)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_VARS)])
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("read")
    paths = {}
    for layout in ("csr", "csc", "dense"):
        paths[layout] = folder / f"{layout}.h5ad"
        _write_source(paths[layout], layout)
    return paths


def _lazy(path, **kwargs) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CSCReadWarning)
        return read_h5ad(path, **kwargs)


def _dense(x) -> np.ndarray:
    if isinstance(x, da.Array):
        x = x.compute()
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _assert_same_csr(got, want) -> None:
    got, want = sp.csr_matrix(got), sp.csr_matrix(want)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


# -- laziness ---------------------------------------------------------------------------------


@pytest.fixture
def count_reads(monkeypatch):
    """Count every read of an HDF5 dataset from now on."""
    reads = []
    real = h5py.Dataset.__getitem__

    def counting(self, key):
        reads.append(self.name)
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    return reads


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_slicing_and_elementwise_ops_read_nothing(sources, layout, count_reads, counting_scheduler):
    count_reads.clear()
    with counting_scheduler(0):
        adata = read_h5ad(sources[layout], chunk_size=10)
        reads_to_open = list(count_reads)
        assert not any(name.startswith("/X") for name in reads_to_open)  # attributes only
        count_reads.clear()
        mask = (adata.obs["group"] == "a").to_numpy()
        genes = adata.var_names[[1, 4, 7]]
        x = adata.X
        totals = x.sum(axis=1)
        results = [
            adata[mask].X,
            adata[:, genes].X,
            adata[mask, genes].X,
            x[10:20],
            x[:, 3:9],
            np.log1p(x),
            x * 2,
            x / totals[:, None],
            np.sqrt(x) + 1,
            (x > 2).sum(axis=0),
        ]
    assert count_reads == []
    assert all(isinstance(r, da.Array) for r in results)
    # the same expressions compute to the right values
    ref = ad.read_h5ad(sources[layout])
    dense = _dense(ref.X)
    np.testing.assert_array_equal(_dense(results[2]), dense[mask][:, [1, 4, 7]])
    np.testing.assert_allclose(_dense(results[7]), dense / dense.sum(axis=1)[:, None], rtol=1e-6)


def test_read_h5ad_result_structure(sources):
    adata = read_h5ad(sources["csr"], chunk_size=10)
    ref = ad.read_h5ad(sources["csr"])
    assert adata.X.chunks == ((10,) * 6 + (1,), (N_VARS,))
    assert adata.X.dtype == np.float32
    pd.testing.assert_frame_equal(adata.obs, ref.obs)
    pd.testing.assert_frame_equal(adata.var, ref.var)
    blocks = dask.compute(*adata.X.to_delayed().ravel())
    assert all(sp.issparse(b) and b.format == "csr" for b in blocks)
    _assert_same_csr(sp.vstack(blocks), ref.X)


# -- the dask array API, compared with numpy on the dense matrix ---------------------------

REDUCTIONS = ["sum", "mean", "max", "min", "var", "std"]


@pytest.fixture(scope="module", params=["csr", "csc", "dense"])
def pair(request, sources):
    """(lazy X with 7 row blocks, the same matrix as dense numpy)."""
    x = _lazy(sources[request.param], chunk_size=9).X
    return x, _dense(ad.read_h5ad(sources[request.param]).X)


@pytest.mark.parametrize("axis", [0, 1, None])
@pytest.mark.parametrize("op", REDUCTIONS)
def test_reductions(pair, op, axis):
    x, dense = pair
    got = getattr(x, op)(axis=axis).compute()
    want = getattr(dense, op)(axis=axis)
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_matmul(pair):
    x, dense = pair
    rng = np.random.default_rng(3)
    right = rng.standard_normal((N_VARS, 4))
    left = rng.standard_normal((5, N_OBS))
    cells = rng.standard_normal((N_OBS, 2))
    np.testing.assert_allclose(_dense(x @ right), dense @ right, rtol=1e-6)
    np.testing.assert_allclose(_dense(left @ x), left @ dense, rtol=1e-6)
    np.testing.assert_allclose(_dense(x.T @ cells), dense.T @ cells, rtol=1e-6)


@pytest.mark.parametrize("ufunc", [np.log1p, np.sqrt, np.expm1, np.abs, np.exp, np.negative])
def test_ufuncs(pair, ufunc):
    x, dense = pair
    np.testing.assert_allclose(_dense(ufunc(x)), ufunc(dense), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("op", ["mul", "truediv", "add", "sub"])
def test_arithmetic_with_scalars_and_vectors(pair, op):
    x, dense = pair
    rng = np.random.default_rng(4)
    row = rng.random(N_VARS).astype(np.float32) + 0.5  # one value per gene
    col = rng.random((N_OBS, 1)).astype(np.float32) + 0.5  # one value per cell
    f = getattr(operator, op)
    for other in (2.5, row, col):
        np.testing.assert_allclose(_dense(f(x, other)), f(dense, other), rtol=1e-6)
        np.testing.assert_allclose(_dense(f(other, x)), f(other, dense), rtol=1e-6)
    binary = {"mul": x * 3, "truediv": x / 4, "add": x + 1, "sub": x - 1}[op]
    expected = {"mul": dense * 3, "truediv": dense / 4, "add": dense + 1, "sub": dense - 1}[op]
    np.testing.assert_allclose(_dense(binary), expected, rtol=1e-6)


def test_comparisons(pair):
    x, dense = pair
    np.testing.assert_array_equal(_dense(x > 2), dense > 2)
    np.testing.assert_array_equal(_dense(x == 0), dense == 0)
    np.testing.assert_array_equal(_dense(x <= 5), dense <= 5)
    assert int((x != 0).sum().compute()) == np.count_nonzero(dense)


def test_slicing(pair):
    x, dense = pair
    rng = np.random.default_rng(5)
    rows = rng.choice(N_OBS, 20, replace=False)
    mask = rng.random(N_OBS) > 0.4
    genes = rng.random(N_VARS) > 0.5
    np.testing.assert_array_equal(_dense(x[10:20]), dense[10:20])
    np.testing.assert_array_equal(_dense(x[:, 3:9]), dense[:, 3:9])
    np.testing.assert_array_equal(_dense(x[::3]), dense[::3])
    np.testing.assert_array_equal(_dense(x[rows]), dense[rows])
    np.testing.assert_array_equal(_dense(x[np.sort(rows)]), dense[np.sort(rows)])
    np.testing.assert_array_equal(_dense(x[mask]), dense[mask])
    np.testing.assert_array_equal(_dense(x[:, genes]), dense[:, genes])
    np.testing.assert_array_equal(_dense(x[mask][:, [2, 0, 5]]), dense[mask][:, [2, 0, 5]])
    assert float(x[3, 4].compute()) == dense[3, 4]


def test_astype_rechunk_concatenate(pair):
    x, dense = pair
    as64 = x.astype(np.float64)
    assert as64.dtype == np.float64
    assert _dense(as64).dtype == np.float64
    np.testing.assert_array_equal(_dense(as64), dense.astype(np.float64))
    re = x.rechunk((17, -1))
    assert re.chunks[0] == (17, 17, 17, 10)
    np.testing.assert_array_equal(_dense(re), dense)
    both = da.concatenate([x, x[:5]], axis=0)
    assert both.shape == (N_OBS + 5, N_VARS)
    np.testing.assert_array_equal(_dense(both), np.concatenate([dense, dense[:5]]))
    wide = da.concatenate([x, x], axis=1)
    np.testing.assert_array_equal(_dense(wide), np.concatenate([dense, dense], axis=1))


def test_compute_result_types(sources):
    sparse = _lazy(sources["csr"], chunk_size=9).X.compute()
    assert sp.issparse(sparse) and sparse.format == "csr"
    _assert_same_csr(sparse, ad.read_h5ad(sources["csr"]).X)
    dense = read_h5ad(sources["dense"], chunk_size=9).X.compute()
    assert type(dense) is np.ndarray
    total = read_h5ad(sources["csr"], chunk_size=9).X.sum().compute()
    assert np.ndim(total) == 0 and isinstance(total, np.floating)
    per_gene = read_h5ad(sources["csr"], chunk_size=9).X.sum(axis=0).compute()
    assert type(per_gene) is np.ndarray and per_gene.shape == (N_VARS,)


# -- CSC input ---------------------------------------------------------------------------------


def test_csc_reads_in_bounded_slices(sources, count_reads):
    ref = ad.read_h5ad(sources["csc"]).X
    with pytest.warns(CSCReadWarning, match=r"each of its 7 blocks scans the whole matrix") as w:
        adata = read_h5ad(sources["csc"], chunk_size=9)
    assert "GiB" in str(w[0].message) and "scdask.io.convert" in str(w[0].message)
    sizes = []
    real = h5py.Dataset.__getitem__

    def sized(self, key):
        out = real(self, key)
        if self.name == "/X/indices":
            sizes.append(len(out))
        return out

    with (
        dask.config.set({"scdask.chunk-memory": "400B"}),  # scans 50 entries at a time
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(h5py.Dataset, "__getitem__", sized)
        got = adata.X.compute(scheduler="sync")
    assert ref.nnz > 200 and max(sizes) <= 50  # never the whole matrix at once
    assert got.format == "csr"
    _assert_same_csr(got, ref)


# -- bad input ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such file.*Check the path"):
        read_h5ad(tmp_path / "missing.h5ad")
    with pytest.raises(FileNotFoundError, match="No such file"):
        read_zarr(tmp_path / "missing.zarr")


def test_not_hdf5(tmp_path):
    text = tmp_path / "notes.h5ad"
    text.write_text("gene,cell,count\nCD3E,c1,4\n")
    with pytest.raises(FileFormatError, match=r"is not an HDF5 file.*Pass an .h5ad"):
        read_h5ad(text)


def test_truncated_file(sources, tmp_path):
    cut = tmp_path / "cut.h5ad"
    data = sources["csr"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"truncated or damaged.*write it again"):
        read_h5ad(cut)


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_no_x(sources, tmp_path):
    path = _copy(sources["csr"], tmp_path / "nox.h5ad")
    with h5py.File(path, "a") as f:
        del f["X"]
    with pytest.raises(FileFormatError, match=r"has no X matrix.*write one with anndata"):
        read_h5ad(path)


def test_unknown_encoding(sources, tmp_path):
    path = _copy(sources["csr"], tmp_path / "weird.h5ad")
    with h5py.File(path, "a") as f:
        f["X"].attrs["encoding-type"] = "weird"
    with pytest.raises(FileFormatError, match=r"encoding 'weird'.*scdask reads csr_matrix"):
        read_h5ad(path)


def test_shape_attribute_disagrees_with_indptr(sources, tmp_path):
    path = _copy(sources["csr"], tmp_path / "shape.h5ad")
    with h5py.File(path, "a") as f:
        f["X"].attrs["shape"] = np.array([N_OBS + 5, N_VARS])
    with pytest.raises(FileFormatError, match=r"claims shape \(66, 23\).*damaged"):
        read_h5ad(path)


def test_obs_length_disagrees_with_x(sources, tmp_path):
    path = _copy(sources["dense"], tmp_path / "obs.h5ad")
    with h5py.File(path, "a") as f:
        del f["obs"]
        short = pd.DataFrame(index=[f"c{i}" for i in range(N_OBS - 1)])
        ad.io.write_elem(f, "obs", short)
    with pytest.raises(FileFormatError, match=r"obs has 60 rows.*disagree"):
        read_h5ad(path)


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(FileFormatError, match=r"is not a zarr store.*use scdask.read_h5ad"):
        read_zarr(tmp_path / "empty.zarr")
    with pytest.raises(FileFormatError, match=r"is a directory, not an .h5ad file"):
        read_h5ad(tmp_path / "empty.zarr")


def test_int64_indptr_gives_int32_blocks(sources, tmp_path):
    """Files with an int64 indptr (as large writers produce) give blocks with matching
    int32 index arrays: scipy would otherwise copy every block's indices to int64."""
    path = _copy(sources["csr"], tmp_path / "ptr64.h5ad")
    with h5py.File(path, "a") as f:
        ptr = f["X/indptr"][:]
        del f["X/indptr"]
        f["X"].create_dataset("indptr", data=ptr.astype(np.int64))
    blocks = dask.compute(*read_h5ad(path, chunk_size=10).X.to_delayed().ravel())
    assert all(b.indices.dtype == b.indptr.dtype == np.int32 for b in blocks)
    _assert_same_csr(sp.vstack(blocks), ad.read_h5ad(sources["csr"]).X)


@pytest.mark.parametrize("shard", [False, True], ids=["v3", "v3-sharded"])
def test_zarr_v3_stores_read_equal(tmp_path, shard):
    import scdask

    adata = scdask.datasets.sample()
    options = {"zarr_write_format": 3}
    if shard:
        options["auto_shard_zarr_v3"] = True
    with ad.settings.override(**options):
        adata.write_zarr(tmp_path / "s.zarr")
    if shard:  # the store really is sharded
        assert "sharding_indexed" in (tmp_path / "s.zarr" / "X" / "data" / "zarr.json").read_text()
    lazy = scdask.read(tmp_path / "s.zarr", chunk_size=200)
    assert lazy.X.numblocks[0] == 3
    np.testing.assert_array_equal(lazy.X.compute().toarray(), adata.X.toarray())
