"""scdask.launch.cuda on a real GPU (marked ``gpu``; skipped without cupy, dask-cuda or CUDA)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_client(gpu_ready):
    from scdask.launch import cuda

    client = cuda()
    yield client
    client.shutdown()


def test_one_worker_per_gpu(cuda_client):
    import cupy

    n_gpus = cupy.cuda.runtime.getDeviceCount()
    workers = cuda_client.scheduler_info()["workers"]
    assert len(workers) == n_gpus
    visible = cuda_client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    first_devices = sorted(v.split(",")[0] for v in visible.values())
    assert len(set(first_devices)) == n_gpus  # each worker leads with a different device


def test_cupy_computation_on_workers(cuda_client):
    import cupy
    import dask.array as da

    x = np.arange(40_000, dtype=np.float64).reshape(400, 100)
    d = da.from_array(x, chunks=(100, 100)).map_blocks(cupy.asarray)
    got = cuda_client.compute((d * 2).sum(axis=0)).result()
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), (x * 2).sum(axis=0))


def test_rmm_pool_option(gpu_ready):
    pytest.importorskip("rmm", reason="rmm is not installed")
    from scdask.launch import cuda

    with cuda(rmm_pool_size="256MiB") as client:
        kinds = client.run(
            lambda: type(__import__("rmm").mr.get_current_device_resource()).__name__
        )
        assert all("Pool" in k for k in kinds.values()), kinds
