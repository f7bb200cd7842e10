"""A worker killed (SIGKILL) in the middle of an activity run: the run completes, identically."""

from __future__ import annotations

import os
import signal
import threading
import time

import anndata as ad
import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

import scdask


@pytest.fixture
def two_process_client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def test_killed_worker_run_completes_identically(two_process_client, sample_path, tmp_path):
    client = two_process_client
    counts = scdask.read_h5ad(sample_path, chunk_size=40)  # 14 blocks: the kill lands mid-run
    kwargs = {"level": "cell", "signature": "cytosig", "n_rand": 200}
    # the undisturbed run, on the same kind of workers (one BLAS thread each, as nannies set)
    with dask.config.set(scheduler=client.get):
        want = scdask.activity.infer(counts, **kwargs).layers["zscore"].compute()

    out = tmp_path / "activity.h5ad"
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    started = threading.Event()

    def kill_when_running() -> None:
        started.wait(60)
        time.sleep(0.5)  # let some blocks finish on the victim first
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    with dask.config.set(scheduler=client.get):
        res = scdask.activity.infer(counts, **kwargs)
        started.set()
        scdask.write_h5ad(res, out)
    killer.join()

    assert victim not in client.run(os.getpid).values(), "the worker was not killed"
    got = ad.read_h5ad(out).layers["zscore"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_failed_write_leaves_no_file_that_looks_complete(two_process_client, sample_path, tmp_path):
    client = two_process_client
    counts = scdask.read_h5ad(sample_path, chunk_size=100)
    res = scdask.activity.infer(counts, level="cell", signature="cytosig", n_rand=20)
    broken = res.layers["zscore"].map_blocks(_fail_on_third_block, dtype=float)
    res.layers["zscore"] = broken
    out = tmp_path / "activity.h5ad"
    with dask.config.set(scheduler=client.get), pytest.raises(RuntimeError, match="injected"):
        scdask.write_h5ad(res, out)
    assert list(tmp_path.iterdir()) == []


def _fail_on_third_block(block, block_info=None):
    if block_info[None]["chunk-location"][0] == 2:
        raise RuntimeError("injected failure")
    return block
