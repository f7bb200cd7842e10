"""scdask.launch.local: a real LocalCluster of worker processes, loopback-only by default."""

from __future__ import annotations

import inspect
import os
import platform
import socket
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster

import scdask.launch
from scdask.launch import local, machine_size


def _http_bound_hosts(cluster) -> set[str]:
    """The hosts the scheduler's dashboard HTTP server has bound sockets to."""
    server = cluster.scheduler.http_server
    sockets = list(server._sockets.values())
    assert sockets, "the dashboard HTTP server has no listening socket"
    return {s.getsockname()[0] for s in sockets if s.family in (socket.AF_INET, socket.AF_INET6)}


def test_local_runs_on_worker_processes_and_computes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 30))
    with local(n_workers=2, threads_per_worker=1) as client:
        info = client.scheduler_info()["workers"]
        assert len(info) == 2
        assert all(w["nthreads"] == 1 for w in info.values())
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2
        assert os.getpid() not in pids  # processes, not threads of this one

        d = da.from_array(x, chunks=(250, 30))
        got = client.compute((d * 2 + 1).sum(axis=0)).result()
        np.testing.assert_allclose(got, (x * 2 + 1).sum(axis=0), rtol=1e-12)
        # the same graph through the default (now distributed) scheduler
        np.testing.assert_allclose(d.mean().compute(), x.mean(), rtol=1e-12)


def test_local_listens_on_loopback_and_dashboard_on_127_0_0_1():
    with local(n_workers=1, threads_per_worker=1) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert _http_bound_hosts(client.cluster) == {"127.0.0.1"}
        assert client.dashboard_link.startswith("http://127.0.0.1:")


def test_local_dashboard_everywhere_only_when_asked():
    with local(n_workers=1, threads_per_worker=1, dashboard_address="0.0.0.0:0") as client:
        assert _http_bound_hosts(client.cluster) == {"0.0.0.0"}


def test_dashboard_address_from_config():
    with dask.config.set({"scdask.launch.dashboard-address": "127.0.0.1:0"}):
        with local(n_workers=1, threads_per_worker=1) as client:
            assert _http_bound_hosts(client.cluster) == {"127.0.0.1"}


def test_local_prints_the_dashboard_link(capsys):
    with local(n_workers=1, threads_per_worker=1) as client:
        link = client.dashboard_link
    err = capsys.readouterr().err
    assert f"dashboard {link}" in err


def test_machine_size_fits_the_machine():
    size = machine_size()
    cpus = len(os.sched_getaffinity(0))
    assert size["n_workers"] >= 1
    assert size["threads_per_worker"] >= 1
    assert size["n_workers"] * size["threads_per_worker"] <= max(cpus, 1)
    assert size["n_workers"] * size["memory_limit"] <= psutil.virtual_memory().total


def test_machine_size_respects_given_values():
    size = machine_size(n_workers=3, threads_per_worker=2, memory_limit="1GiB")
    assert size == {"n_workers": 3, "threads_per_worker": 2, "memory_limit": "1GiB"}
    with pytest.raises(ValueError, match=">= 1"):
        machine_size(n_workers=0, threads_per_worker=1)


def test_public_surface_is_explicit():
    for name in scdask.launch.__all__:
        obj = getattr(scdask.launch, name)
        if callable(obj):
            assert obj.__doc__ and "Examples" in obj.__doc__, name


def _heap_use() -> tuple[bool, bool]:
    """Whether a 16 MiB array is mapped from the kernel, and whether, freed, it stays in the
    heap (glibc's ``mallinfo2``)."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                         "uordblks", "fordblks", "keepcost")
        ]  # fmt: skip

    info = ctypes.CDLL("libc.so.6").mallinfo2
    info.restype = Info
    a = np.ones(2 * 2**20)
    mapped = info().hblkhd >= a.nbytes
    del a
    return mapped, info().fordblks >= 2**24


_libc, _version = platform.libc_ver()
glibc = pytest.mark.skipif(
    _libc != "glibc" or tuple(int(v) for v in _version.split(".")[:2]) < (2, 33),
    reason="glibc heaps only (mallinfo2: glibc >= 2.33)",
)


@glibc
def test_set_heap_keeps_freed_blocks_under_the_nannys_setting(tmp_path):
    """A Nanny's MALLOC_TRIM_THRESHOLD_=65536 maps every array above 128 KiB fresh from the
    kernel and unmaps it when freed (a page fault per page on every use); after set_heap()
    such arrays come from the heap and stay there when freed."""
    script = tmp_path / "heap.py"
    script.write_text(
        "import sys\nimport numpy as np\nfrom scdask.launch._heap import set_heap\n"
        + inspect.getsource(_heap_use)
        + "if sys.argv[1] == 'tuned':\n    assert set_heap()\nprint(*_heap_use())\n"
    )
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    got = {
        mode: subprocess.run(
            [sys.executable, str(script), mode], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for mode in ("plain", "tuned")
    }
    assert got == {"plain": ["True", "False"], "tuned": ["False", "True"]}


@glibc
def test_launched_workers_keep_freed_blocks():
    with local(n_workers=1, threads_per_worker=1) as client:
        (tuned,) = client.run(_heap_use).values()
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        (plain,) = client.run(_heap_use).values()
        scdask.launch.tune_heap(client)  # a cluster started another way
        (fixed,) = client.run(_heap_use).values()
    assert plain == (True, False)
    assert tuned == fixed == (False, True)
