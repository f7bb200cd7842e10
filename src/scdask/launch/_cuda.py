"""A dask-cuda LocalCUDACluster: one worker process per GPU of this node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distributed import Client

from scdask.launch._connect import announce
from scdask.launch._connect import dashboard_address as _dashboard_address
from scdask.launch._heap import tune_heap
from scdask.launch._security import SecurityLike, resolve_security

__all__ = ["cuda"]


def _import_dask_cuda() -> Any:
    try:
        import dask_cuda
    except ImportError as err:
        raise ImportError(
            "scdask.launch.cuda() needs dask-cuda (and cupy); install them with "
            "pip install 'scdask[gpu]'"
        ) from err
    return dask_cuda


def cuda(
    devices: Sequence[int] | str | None = None,
    *,
    rmm_pool_size: str | int | float | None = None,
    device_memory_limit: str | int | float | None = None,
    threads_per_worker: int = 1,
    dashboard_address: str | None = None,
    security: SecurityLike = None,
    **kwargs: Any,
) -> Client:
    """Start a LocalCUDACluster (one worker per GPU) and return its Client.

    Parameters
    ----------
    devices
        The GPUs to use, as indices (``[0, 1]``) or a ``CUDA_VISIBLE_DEVICES`` string
        (``"0,1"``). Default: every GPU that ``CUDA_VISIBLE_DEVICES`` leaves visible (under
        SLURM, the ones allocated to the job).
    rmm_pool_size
        Size of the RMM memory pool of each worker (``"20GB"``, a fraction of the device
        memory such as ``0.8``), which makes repeated cupy allocations cheap. Default: no pool.
    device_memory_limit
        Device memory above which a worker spills to host memory (dask-cuda's default 0.8).
    threads_per_worker
        Threads per GPU worker; 1 keeps one CUDA stream of work per device.
    dashboard_address
        Where the dashboard binds (default 127.0.0.1 and a free port).
    security
        TLS, as for :func:`scdask.launch.local`.
    **kwargs
        Passed to :class:`dask_cuda.LocalCUDACluster` (``rmm_managed_memory``,
        ``protocol="ucx"``, ``enable_nvlink``, ``jit_unspill``, ...).

    Returns
    -------
    distributed.Client
        Connected to the new cluster; ``client.cluster`` is the LocalCUDACluster.

    Raises
    ------
    ImportError
        When dask-cuda is not installed (``pip install 'scdask[gpu]'``).

    Examples
    --------
    >>> from scdask.launch import cuda
    >>> client = cuda(rmm_pool_size="4GB")  # doctest: +SKIP
    >>> len(client.scheduler_info()["workers"])  # one per GPU  # doctest: +SKIP
    1
    """
    dask_cuda = _import_dask_cuda()
    options: dict[str, Any] = {
        "threads_per_worker": threads_per_worker,
        "dashboard_address": _dashboard_address(dashboard_address),
    }
    if devices is not None:
        if not isinstance(devices, str):
            devices = ",".join(str(int(d)) for d in devices)
        options["CUDA_VISIBLE_DEVICES"] = devices
    if rmm_pool_size is not None:
        options["rmm_pool_size"] = rmm_pool_size
    if device_memory_limit is not None:
        options["device_memory_limit"] = device_memory_limit
    sec = resolve_security(security)
    if sec is not None:
        options["security"] = sec
        options.setdefault("protocol", "tls://")
    options.update(kwargs)
    cluster = dask_cuda.LocalCUDACluster(**options)
    try:
        client = Client(cluster, security=sec) if sec is not None else Client(cluster)
        tune_heap(client)
    except BaseException:
        cluster.close()
        raise
    announce(client, kind="CUDA")
    return client
