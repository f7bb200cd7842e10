"""deploy/slurm/{scheduler,workers}.sbatch on the local SLURM: scheduler in a job, TLS, connect()."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from scdask.launch import connect

pytestmark = pytest.mark.slurm

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "slurm"


def _sbatch(script: Path, *options: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *options, str(script)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return out.stdout.strip().split(";")[0]


def test_scheduler_and_workers_as_sbatch_jobs(slurm_ready, tmp_path):
    cluster_dir = tmp_path / "cluster"
    env = {
        **os.environ,
        "SCDASK_DIR": str(cluster_dir),
        "SCDASK_PYTHON": sys.executable,
        "SCDASK_DASHBOARD": "127.0.0.1:0",
    }
    common = ("--partition=debug", "--time=00:10:00", f"--chdir={tmp_path}")
    jobs = [
        _sbatch(
            DEPLOY / "scheduler.sbatch",
            *common,
            "--cpus-per-task=1",
            "--mem=1G",
            f"--output={tmp_path}/scheduler-%j.out",
            env=env,
        )
    ]
    try:
        jobs.append(
            _sbatch(
                DEPLOY / "workers.sbatch",
                *common,
                "--nodes=1",
                "--ntasks-per-node=2",
                "--cpus-per-task=1",
                "--mem=2G",
                f"--output={tmp_path}/workers-%j.out",
                env=env,
            )
        )
        sched_file = cluster_dir / "scheduler.json"
        deadline = time.monotonic() + 120
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        logs = lambda: "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))  # noqa: E731
        assert sched_file.exists(), logs()
        # the key stays private
        assert oct(os.stat(cluster_dir / "tls" / "key.pem").st_mode & 0o777) == "0o600"

        with connect(sched_file, security=cluster_dir / "tls") as client:
            client.wait_for_workers(2, timeout=120)
            workers = client.scheduler_info()["workers"]
            assert client.scheduler.address.startswith("tls://")
            assert all(a.startswith("tls://") for a in workers), workers
            env_of = client.run(
                lambda: (os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_PROCID"))
            )
            assert {job for job, _ in env_of.values()} == {jobs[1]}
            assert sorted(rank for _, rank in env_of.values()) == ["0", "1"]
            # memory limit: 2G per node / 2 tasks = 1024 MB each
            assert {w["memory_limit"] for w in workers.values()} == {1024 * 10**6}
            # the workers' heaps are tuned (scdask.launch.tune_heap's preload)
            preloads = client.run(lambda dask_worker: [p.name for p in dask_worker.preloads])
            assert all("scdask.launch._heap" in names for names in preloads.values()), preloads

            x = da.random.default_rng(7).standard_normal((3000, 40), chunks=(300, 40))
            y = (x**2).sum(axis=1)
            with dask.config.set(scheduler="sync"):
                want = y.compute()
            got = client.compute(y, sync=True)
            np.testing.assert_array_equal(got, want)
    finally:
        subprocess.run(["scancel", *jobs], check=False, timeout=60)
