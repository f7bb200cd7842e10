"""Cluster fixtures: a real one-node SLURM (scripts/slurm-local.sh) and GPU detection.

``slurm_client`` is session-scoped and reusable: any test that needs "the same computation
through SLURM" can request it. It yields a Client on a 2-job SLURMCluster (profile ``local``,
TLS on) whose two workers each run inside their own SLURM job.

The SLURM tests skip with the reason when ``sinfo`` is missing or no controller answers, unless
``SCDASK_REQUIRE_SLURM=1`` (set by ``.ci/run``), in which case they fail: CI must not turn
green by skipping them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

N_SLURM_JOBS = 2


def slurm_unavailable_reason() -> str | None:
    """Why the local SLURM cannot be used, or ``None`` when its node is ready."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (no 'sinfo'); run scripts/slurm-local.sh install && start"
    # Only the one-node SLURM of scripts/slurm-local.sh: this host, in partition "debug"
    # (on a real cluster's login node the tests must not submit jobs).
    host = socket.gethostname().split(".")[0]
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-p", "debug", "-n", host, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "'sinfo' did not answer within 15 s; is slurmctld running?"
    if out.returncode != 0:
        return (
            "no SLURM controller answers ('sinfo' failed: "
            f"{out.stderr.strip() or out.returncode}); run scripts/slurm-local.sh start"
        )
    states = out.stdout.split()
    if not any(s.rstrip("*~#") in {"idle", "mixed", "allocated"} for s in states):
        return (
            f"this host ({host}) is not an idle node of a 'debug' partition (states: "
            f"{states or 'none'}); run scripts/slurm-local.sh start"
        )
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("SCDASK_REQUIRE_SLURM") == "1":
        pytest.fail(f"SCDASK_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_ready() -> None:
    """Skip (or fail under ``SCDASK_REQUIRE_SLURM=1``) unless the local SLURM is up."""
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed")
    reason = slurm_unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)


@pytest.fixture(scope="session")
def slurm_client(slurm_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A Client on a SLURMCluster with 2 jobs (one worker each), shut down after the session.

    The client is *not* the default scheduler: it lives for the whole session, and other tests'
    ``.compute()`` must not silently run on it. Use ``slurm_client.compute(...)``,
    ``slurm_client.submit(...)`` or ``dask.config.set(scheduler=slurm_client)`` explicitly.
    """
    from distributed import Client

    import scdask.launch

    work = tmp_path_factory.mktemp("slurm")
    cluster = scdask.launch.slurm_cluster(
        "local",
        security=True,
        log_directory=str(work / "logs"),
        shared_temp_directory=str(work),
    )
    client = Client(cluster, security=cluster.security, set_as_default=False)
    cluster.scale(jobs=N_SLURM_JOBS)
    try:
        client.wait_for_workers(N_SLURM_JOBS, timeout=300)
    except BaseException:
        logs = sorted((work / "logs").glob("*"))
        tail = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs)
        client.close()
        cluster.close()
        pytest.fail(f"{N_SLURM_JOBS} SLURM workers did not arrive within 300 s\n{tail}")
    yield client
    client.close()
    cluster.close()


def gpu_unavailable_reason() -> str | None:
    """Why the GPU tests cannot run here, or ``None`` when cupy sees a CUDA device."""
    for module, extra in (("cupy", "gpu"), ("dask_cuda", "gpu")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'scdask[{extra}]')"
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        return f"no usable CUDA device ({type(err).__name__}: {err})"
    if n < 1:
        return "no CUDA device visible"
    return None


@pytest.fixture(scope="session")
def gpu_ready() -> None:
    """Skip unless cupy and dask-cuda are installed and a CUDA device is visible."""
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
