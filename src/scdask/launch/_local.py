"""A LocalCluster of worker processes sized from this machine."""

from __future__ import annotations

import os
from typing import Any

import dask.config
import psutil
from distributed import Client, LocalCluster

from scdask._errors import InputError
from scdask.launch._connect import announce
from scdask.launch._connect import dashboard_address as _dashboard_address
from scdask.launch._heap import tune_heap
from scdask.launch._security import SecurityLike, resolve_security

__all__ = ["local", "machine_size"]


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_size(
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | float | None = None,
) -> dict[str, Any]:
    """How :func:`local` splits this machine into worker processes.

    By default every worker gets 2 threads (sparse kernels release the GIL only in part, so
    processes scale better than threads), as many workers as that allows on the CPUs this
    process may use, and an equal share of the physical memory.

    Parameters
    ----------
    n_workers, threads_per_worker, memory_limit
        Fixed values; the others are derived from them and the machine.

    Returns
    -------
    dict
        ``n_workers``, ``threads_per_worker`` and ``memory_limit`` (bytes per worker, or the
        value given).

    Examples
    --------
    >>> from scdask.launch import machine_size
    >>> size = machine_size(n_workers=2, threads_per_worker=1)
    >>> size["n_workers"], size["threads_per_worker"]
    (2, 1)
    """
    cpus = _available_cpus()
    if threads_per_worker is None:
        if n_workers is not None:
            threads_per_worker = max(1, cpus // max(1, n_workers))
        else:
            threads_per_worker = int(dask.config.get("scdask.launch.threads-per-worker", 2) or 2)
            threads_per_worker = max(1, min(threads_per_worker, cpus))
    if n_workers is None:
        n_workers = max(1, cpus // threads_per_worker)
    if n_workers < 1 or threads_per_worker < 1:
        raise InputError(
            f"n_workers and threads_per_worker must be >= 1, got {n_workers}, {threads_per_worker}"
        )
    if memory_limit is None:
        memory_limit = int(psutil.virtual_memory().total // n_workers)
    return {
        "n_workers": int(n_workers),
        "threads_per_worker": int(threads_per_worker),
        "memory_limit": memory_limit,
    }


def local(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | float | None = None,
    *,
    dashboard_address: str | None = None,
    security: SecurityLike = None,
    **kwargs: Any,
) -> Client:
    """Start a LocalCluster of worker processes on this machine and return its Client.

    The scheduler listens on 127.0.0.1 only and the dashboard binds to 127.0.0.1 (a free port)
    unless ``dashboard_address`` or the ``scdask.launch.dashboard-address`` config says
    otherwise. The dashboard link is printed to stderr.

    Parameters
    ----------
    n_workers, threads_per_worker, memory_limit
        Worker layout; what is not given is derived from the machine (see
        :func:`machine_size`).
    dashboard_address
        Where the dashboard binds, e.g. ``"0.0.0.0:8787"`` to expose it (default loopback).
    security
        TLS for the scheduler and workers: ``True`` for a temporary certificate, or
        certificate files (see :func:`resolve_security`). Default ``None``: no TLS, which on
        a single-user machine is safe because everything listens on 127.0.0.1; on a shared
        machine (a login node) use ``security=True``.
    **kwargs
        Passed to :class:`distributed.LocalCluster` (``processes=False`` for threads only).

    Returns
    -------
    distributed.Client
        Connected to the new cluster; ``client.cluster`` is the LocalCluster. Close both with
        ``client.shutdown()``, or use the client as a context manager.

    Examples
    --------
    >>> import dask.array as da
    >>> from scdask.launch import local
    >>> with local(n_workers=2, threads_per_worker=1) as client:  # doctest: +SKIP
    ...     float(da.ones((1000, 10), chunks=100).sum().compute())
    10000.0
    """
    size = machine_size(
        n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit
    )
    sec = resolve_security(security)
    options: dict[str, Any] = {
        "processes": True,
        "dashboard_address": _dashboard_address(dashboard_address),
        **size,
    }
    if sec is not None:
        options["security"] = sec
        options.setdefault("protocol", "tls://")
    options.update(kwargs)
    cluster = LocalCluster(**options)
    try:
        client = Client(cluster, security=sec) if sec is not None else Client(cluster)
        tune_heap(client)
    except BaseException:
        cluster.close()
        raise
    announce(client, kind="local")
    return client
