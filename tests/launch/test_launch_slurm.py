"""A real SLURMCluster on the one-node SLURM of scripts/slurm-local.sh (marked ``slurm``).

The ``slurm_client`` fixture (tests/launch/conftest.py) submits 2 jobs with the ``local``
profile and TLS on; these tests check that the workers really are SLURM jobs and that results
match the ones computed in this process.
"""

from __future__ import annotations

import os
import subprocess
import time

import dask
import dask.array as da
import numpy as np
import pytest

pytestmark = pytest.mark.slurm


def _running_job_ids() -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return set(out.stdout.split())


def _graph():
    rng = da.random.default_rng(42)
    x = rng.standard_normal((4000, 50), chunks=(500, 50))
    y = da.log1p(abs(x)) * 3.0
    return y.sum(axis=0), (y.T @ y)


def test_two_workers_each_inside_its_own_slurm_job(slurm_client):
    workers = slurm_client.scheduler_info()["workers"]
    assert len(workers) == 2
    env = slurm_client.run(
        lambda: {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION")}
    )
    job_ids = {e["SLURM_JOB_ID"] for e in env.values()}
    assert None not in job_ids, env
    assert len(job_ids) == 2, env  # one job per worker, not two workers in one job
    assert {e["SLURM_JOB_PARTITION"] for e in env.values()} == {"debug"}
    assert job_ids <= _running_job_ids()
    # the jobs dask-jobqueue says it submitted are the ones the workers run in
    assert {job.job_id for job in slurm_client.cluster.workers.values()} == job_ids


def test_workers_connect_over_tls(slurm_client):
    assert slurm_client.scheduler.address.startswith("tls://")
    assert all(addr.startswith("tls://") for addr in slurm_client.scheduler_info()["workers"])


def test_slurm_result_identical_to_local(slurm_client):
    sums, gram = _graph()
    with dask.config.set(scheduler="sync"):
        want_sums, want_gram = dask.compute(sums, gram)
    got_sums, got_gram = slurm_client.compute([sums, gram], sync=True)
    # same graph, same block functions: bit-identical, not merely close
    np.testing.assert_array_equal(got_sums, want_sums)
    np.testing.assert_array_equal(got_gram, want_gram)
    # and both agree with plain numpy up to summation order
    x = np.concatenate(
        [
            np.asarray(b)
            for b in dask.compute(
                *da.random.default_rng(42).standard_normal((4000, 50), chunks=(500, 50)).blocks
            )
        ]
    )
    np.testing.assert_allclose(got_sums, (np.log1p(np.abs(x)) * 3.0).sum(axis=0), rtol=1e-10)


def test_tasks_ran_in_slurm_jobs(slurm_client):
    # A lambda, not os.environ.get: that bound method would pickle this process's environ.
    futures = [
        slurm_client.submit(lambda i: (i, os.environ.get("SLURM_JOB_ID")), i) for i in range(20)
    ]
    results = slurm_client.gather(futures)
    assert [i for i, _ in results] == list(range(20))
    ids = {job for _, job in results}
    assert None not in ids
    assert ids <= _running_job_ids()


def test_slurm_function_end_to_end(slurm_ready, tmp_path):
    """scdask.launch.slurm itself: submit, connect over TLS, compute, and release the job."""
    import scdask.launch

    client = scdask.launch.slurm(
        "local",
        jobs=1,
        log_directory=str(tmp_path / "logs"),
        shared_temp_directory=str(tmp_path),
    )
    try:
        client.wait_for_workers(1, timeout=300)
        assert client.scheduler.address.startswith("tls://")
        (job_id,) = client.run(lambda: os.environ.get("SLURM_JOB_ID")).values()
        assert job_id in _running_job_ids()
        plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
        assert all("scdask-heap" in names for names in plugins.values())  # tune_heap
        x = da.arange(10_000, chunks=1_000)
        assert int(client.compute((x * x).sum(), sync=True)) == sum(i * i for i in range(10_000))
    finally:
        client.shutdown()
    deadline = time.monotonic() + 60
    while job_id in _running_job_ids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_id not in _running_job_ids()  # closing the cluster cancels its job


def test_activity_on_the_real_sample_through_slurm_equals_local(slurm_client, sample_path):
    """The issue's acceptance check: SecAct inference on the real sample, via SLURM workers."""
    from distributed import Client, LocalCluster

    import scdask

    counts = scdask.read_h5ad(sample_path, chunk_size=150)
    kwargs = {"level": "cell", "signature": "cytosig", "n_rand": 50}
    # the local run: the default engine, worker processes as on the SLURM jobs
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as local_client,
        dask.config.set(scheduler=local_client.get),
    ):
        local = scdask.activity.infer(counts, **kwargs)
        want = dask.compute(*(local.layers[k] for k in ("beta", "se", "zscore", "pvalue")))
    with dask.config.set(scheduler=slurm_client.get):
        remote = scdask.activity.infer(counts, **kwargs)
        got = dask.compute(*(remote.layers[k] for k in ("beta", "se", "zscore", "pvalue")))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert np.asarray(got[2]).shape == (559, 43)
