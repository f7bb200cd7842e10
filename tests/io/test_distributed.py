"""read, reduce and write unchanged on a LocalCluster with two worker processes."""

from __future__ import annotations

import anndata as ad
import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask.io._write as write_mod
from scdask._compute import active_client
from scdask.io import read_h5ad, write_h5ad, write_zarr

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore:Writing zarr v2 data")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            memory_limit="1GiB",
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "src.h5ad"
    rng = np.random.default_rng(11)
    x = sp.random(400, 50, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.round(x.data * 30) + 1
    obs = pd.DataFrame(
        {"group": pd.Categorical(rng.choice(["a", "b"], 400))},
        index=[f"c{i}" for i in range(400)],
    )
    ad.AnnData(
        X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(50)]), layers={"raw": x}
    ).write_h5ad(path)
    return path


def test_read_and_sum_on_worker_processes(client, source):
    adata = read_h5ad(source, chunk_size=50)
    ref = ad.read_h5ad(source).X.toarray()
    assert active_client() is client
    with distributed.get_task_stream(client) as stream:
        col, row, total = dask.compute(adata.X.sum(axis=0), adata.X.sum(axis=1), adata.X.sum())
    np.testing.assert_allclose(col, ref.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(row, ref.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(total, ref.sum(), rtol=1e-6)
    # the 8 block reads ran as tasks in the worker processes (each opened the file by path)
    reads = [t for t in stream.data if "read-X" in str(t["key"])]
    assert len(reads) == 8
    assert {t["worker"] for t in reads} <= set(client.scheduler_info()["workers"])


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_write_streams_through_the_client(client, source, tmp_path, fmt, monkeypatch):
    adata = read_h5ad(source, chunk_size=30)
    adata.X = np.log1p(adata.X)
    windows = []
    real = write_mod._client_window

    def spy(c, blocks, window):
        windows.append((c, len(blocks), window))
        yield from real(c, blocks, window)

    monkeypatch.setattr(write_mod, "_client_window", spy)
    out = tmp_path / f"out.{fmt}"
    (write_h5ad if fmt == "h5ad" else write_zarr)(adata, out)
    # X and the layer streamed together: 14 units (a block of each), 3 in flight (2 workers + 1)
    assert windows == [(client, 14, 3)]
    got = (ad.read_h5ad if fmt == "h5ad" else ad.read_zarr)(out)
    ref = ad.read_h5ad(source)
    expected = sp.csr_matrix(np.log1p(ref.X.toarray()))
    np.testing.assert_array_equal(got.X.indptr, expected.indptr)
    np.testing.assert_array_equal(got.X.indices, expected.indices)
    np.testing.assert_array_equal(got.X.data, expected.data)
    np.testing.assert_array_equal(got.layers["raw"].toarray(), ref.X.toarray())
    pd.testing.assert_frame_equal(got.obs, ref.obs)


def _shared_work(block):
    return block * 2


def test_matrices_sharing_work_compute_it_once(client, source, tmp_path):
    """X and two layers derived from one per-block task: that task runs once per block."""
    adata = read_h5ad(source, chunk_size=50)
    shared = adata.X.map_blocks(_shared_work, meta=adata.X._meta, dtype=adata.X.dtype)
    result = ad.AnnData(
        X=shared + 1, obs=adata.obs, var=adata.var, layers={"a": shared * 3, "b": shared}
    )
    with distributed.get_task_stream(client) as stream:
        write_h5ad(result, tmp_path / "shared.h5ad")
    runs = [t for t in stream.data if "_shared_work" in str(t["key"])]
    assert len(runs) == adata.X.numblocks[0] == 8
    got = ad.read_h5ad(tmp_path / "shared.h5ad")
    ref = ad.read_h5ad(source).X.toarray() * 2
    np.testing.assert_array_equal(got.layers["b"].toarray(), ref)
    np.testing.assert_array_equal(got.layers["a"].toarray(), ref * 3)
    np.testing.assert_array_equal(np.asarray(got.X), ref + 1)


def test_failed_distributed_write_leaves_nothing(client, source, tmp_path):
    adata = read_h5ad(source, chunk_size=40)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 6:
            raise RuntimeError("worker-side failure")
        return block

    adata.X = adata.X.map_blocks(boom, meta=adata.X._meta, dtype=adata.X.dtype)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="worker-side failure"):
        write_h5ad(adata, out_dir / "a.h5ad")
    assert list(out_dir.iterdir()) == []
