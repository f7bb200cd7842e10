"""Streaming, atomic writers: exact round trips, lazy results, failures leave nothing behind."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask.io._write as write_mod
from scdask.io import CSCReadWarning, read_h5ad, read_zarr, write_h5ad, write_zarr
from scdask.io._write import WriteOptions, _computed, write_store

pytestmark = pytest.mark.filterwarnings("ignore:Writing zarr v2 data")

READERS = {"h5ad": (write_h5ad, ad.read_h5ad), "zarr": (write_zarr, ad.read_zarr)}


def make_adata(layout: str, n_obs: int = 53, n_vars: int = 17, seed: int = 0) -> ad.AnnData:
    """A small AnnData with every element filled; X stored in ``layout``."""
    rng = np.random.default_rng(seed)
    counts = sp.random(n_obs, n_vars, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    counts.data = np.round(counts.data * 10) + 1
    as_layout = {
        "csr": lambda m: m.tocsr(),
        "csc": lambda m: m.tocsc(),
        "dense": lambda m: m.toarray(),
    }[layout]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_obs)),
            "n_counts": np.asarray(counts.sum(axis=1)).ravel(),
            "donor": rng.choice(["d1", "d2"], n_obs),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(
        {"highly_variable": rng.random(n_vars) > 0.5},
        index=[f"gene{i}" for i in range(n_vars)],
    )
    adata = ad.AnnData(
        X=as_layout(counts),
        obs=obs,
        var=var,
        layers={"counts": as_layout(counts.astype(np.int32))},
        obsm={"X_pca": rng.standard_normal((n_obs, 3))},
        varm={"loadings": rng.standard_normal((n_vars, 2))},
        uns={"title": "test", "params": {"k": 3, "values": np.arange(4)}},
    )
    raw_var = pd.DataFrame(index=[f"raw_gene{i}" for i in range(n_vars + 2)])
    raw_x = sp.random(n_obs, n_vars + 2, density=0.2, format="csr", random_state=rng)
    adata.raw = ad.AnnData(X=as_layout(raw_x.astype(np.float64)), obs=obs, var=raw_var)
    return adata


def assert_matrix_equal(got, want) -> None:
    """Exact equality of values, dtype and (for sparse) CSR structure."""
    assert got.dtype == want.dtype
    if sp.issparse(want):
        assert sp.issparse(got)
        got, want = sp.csr_matrix(got), sp.csr_matrix(want)
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.data, want.data)
    else:
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)


def assert_uns_equal(got, want) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        if isinstance(v, dict):
            assert_uns_equal(got[k], v)
        else:
            np.testing.assert_array_equal(got[k], v)


def assert_adata_equal(got: ad.AnnData, want: ad.AnnData) -> None:
    assert_matrix_equal(got.X, want.X)
    pd.testing.assert_frame_equal(got.obs, want.obs)
    pd.testing.assert_frame_equal(got.var, want.var)
    assert set(got.layers) == set(want.layers)
    for k in want.layers:
        assert_matrix_equal(got.layers[k], want.layers[k])
    for k in want.obsm:
        assert_matrix_equal(got.obsm[k], want.obsm[k])
    for k in want.varm:
        assert_matrix_equal(got.varm[k], want.varm[k])
    assert_matrix_equal(got.raw.X, want.raw.X)
    pd.testing.assert_frame_equal(got.raw.var, want.raw.var)
    assert_uns_equal(got.uns, want.uns)


def read_lazy(path, fmt: str, **kwargs) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CSCReadWarning)
        return (read_h5ad if fmt == "h5ad" else read_zarr)(path, **kwargs)


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_round_trip_exact(tmp_path, layout, fmt):
    src = tmp_path / f"src.{fmt}"
    source = make_adata(layout)
    if fmt == "h5ad":
        source.write_h5ad(src)
    else:
        source.write_zarr(src)
    reference = READERS[fmt][1](src)
    lazy = read_lazy(src, fmt, chunk_size=10)
    assert isinstance(lazy.X, da.Array) and lazy.X.numblocks[0] == 6
    out = tmp_path / f"out.{fmt}"
    READERS[fmt][0](lazy, out)
    got = READERS[fmt][1](out)
    assert_adata_equal(got, reference)
    if layout != "dense":  # streamed sparse matrices are CSR whatever the input layout
        assert isinstance(got.X, sp.csr_matrix)
    # scdask reads its own output back with the same values
    again = read_lazy(out, fmt, chunk_size=7)
    assert_matrix_equal(sp.csr_matrix(again.X.compute()), sp.csr_matrix(reference.X))


def test_lazy_operations_are_written(tmp_path):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    ref = ad.read_h5ad(src)
    lazy = read_h5ad(src, chunk_size=8)
    lazy.X = np.log1p(lazy.X)
    lazy.layers["shifted"] = lazy.layers["counts"] - 1  # not zero-preserving: dense blocks
    write_h5ad(lazy, tmp_path / "out.h5ad")
    got = ad.read_h5ad(tmp_path / "out.h5ad")
    assert_matrix_equal(got.X, sp.csr_matrix(np.log1p(ref.X.toarray())))
    assert_matrix_equal(got.layers["shifted"], ref.layers["counts"].toarray() - 1)
    with h5py.File(tmp_path / "out.h5ad") as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert f["layers/shifted"].attrs["encoding-type"] == "array"
        # matching index dtypes: scipy would copy int32 indices to int64 otherwise
        assert f["X/indptr"].dtype == f["X/indices"].dtype == np.int32


def test_transpose_is_written_as_csc(tmp_path):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    ref = ad.read_h5ad(src)
    lazy = read_h5ad(src, chunk_size=10)
    transposed = ad.AnnData(X=lazy.X.T, obs=lazy.var, var=lazy.obs)
    write_h5ad(transposed, tmp_path / "t.h5ad")
    with h5py.File(tmp_path / "t.h5ad") as f:
        assert f["X"].attrs["encoding-type"] == "csc_matrix"
    got = ad.read_h5ad(tmp_path / "t.h5ad")
    assert isinstance(got.X, sp.csc_matrix)
    np.testing.assert_array_equal(got.X.toarray(), ref.X.toarray().T)


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_in_memory_anndata(tmp_path, fmt):
    adata = make_adata("csc")
    out = tmp_path / f"mem.{fmt}"
    READERS[fmt][0](adata, out)
    got = READERS[fmt][1](out)
    assert isinstance(got.X, sp.csc_matrix)  # anndata keeps an in-memory matrix's format
    assert_adata_equal(got, adata)


def test_compression(tmp_path):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    write_h5ad(read_h5ad(src, chunk_size=9), tmp_path / "gz.h5ad", compression="gzip")
    with h5py.File(tmp_path / "gz.h5ad") as f:
        assert f["X/data"].compression == "gzip"
        assert f["obsm/X_pca"].compression == "gzip"
    assert_adata_equal(ad.read_h5ad(tmp_path / "gz.h5ad"), ad.read_h5ad(src))
    with pytest.raises(ValueError, match="compression must be"):
        write_h5ad(read_h5ad(src), tmp_path / "x.h5ad", compression="zstd-ish")


def _failing_at(x: da.Array, bad_block: int, exc: type[BaseException]) -> da.Array:
    def fn(block, block_info=None):
        if block_info[0]["chunk-location"][0] == bad_block:
            raise exc("injected failure")
        return block

    return x.map_blocks(fn, meta=x._meta, dtype=x.dtype)


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_failed_write_leaves_nothing(tmp_path, fmt):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    lazy = read_h5ad(src, chunk_size=5)
    lazy.X = _failing_at(lazy.X, 7, RuntimeError)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="injected failure"):
        READERS[fmt][0](lazy, out_dir / f"a.{fmt}")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_interrupted_overwrite_keeps_old_file(tmp_path, fmt, monkeypatch):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / f"a.{fmt}"
    old = make_adata("dense", n_obs=11, seed=5)
    READERS[fmt][0](old, target)
    before = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*"))

    calls = []
    real_append = write_mod._append

    def interrupted(dset, values):
        calls.append(1)
        if len(calls) == 6:  # a few blocks into X
            raise KeyboardInterrupt
        real_append(dset, values)

    monkeypatch.setattr(write_mod, "_append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        READERS[fmt][0](read_h5ad(src, chunk_size=5), target)
    assert len(calls) == 6
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*")) == before
    assert_adata_equal(READERS[fmt][1](target), old)


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_overwrite_replaces_complete_file(tmp_path, fmt):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    target = tmp_path / f"a.{fmt}"
    READERS[fmt][0](make_adata("dense", n_obs=11, seed=5), target)
    READERS[fmt][0](read_h5ad(src, chunk_size=20), target)
    assert_adata_equal(READERS[fmt][1](target), ad.read_h5ad(src))
    assert [p.name for p in tmp_path.iterdir() if "scdask" in p.name] == []


def test_refuses_to_overwrite_its_source(tmp_path):
    src = tmp_path / "src.h5ad"
    make_adata("csr").write_h5ad(src)
    before = src.read_bytes()
    lazy = read_h5ad(src)
    lazy.X = lazy.X * 2  # still reads from src
    with pytest.raises(ValueError, match="it is the input"):
        write_h5ad(lazy, src)
    assert src.read_bytes() == before


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_h5ad(make_adata("csr"), tmp_path / "nope" / "a.h5ad")


def test_blocks_in_flight_are_bounded(tmp_path, monkeypatch):
    """The writer computes a bounded window ahead of what it has written."""
    src = tmp_path / "src.h5ad"
    make_adata("csr", n_obs=200).write_h5ad(src)
    lazy = read_h5ad(src, chunk_size=10)  # 20 blocks
    computed = []

    def record(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy.X = lazy.X.map_blocks(record, meta=lazy.X._meta, dtype=lazy.X.dtype)
    lead = []
    written = []
    real_append = write_mod._append

    def spy(dset, values):
        if dset.name == "/X/data":
            written.append(1)
            lead.append(len(computed) - len(written))
        real_append(dset, values)

    monkeypatch.setattr(write_mod, "_append", spy)
    write_store(lazy, tmp_path / "out.h5ad", "h5ad", WriteOptions(window=2))
    assert sorted(computed) == list(range(20))
    assert len(written) == 20
    assert max(lead) <= 3  # the block being written plus one window of two ahead
    assert_adata_equal(ad.read_h5ad(tmp_path / "out.h5ad"), ad.read_h5ad(src))


def test_computed_blocks_in_order():
    x = da.arange(30, chunks=3).reshape(10, 3).rechunk((2, 3))
    blocks = list(_computed(list(x.to_delayed().ravel()), window=2))
    assert len(blocks) == 5
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(30).reshape(10, 3))
