"""glibc heap settings for worker processes: freed block memory is reused, not re-faulted.

A ``distributed`` Nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also
pins glibc's mmap threshold at 128 KiB. Every array above that is then mapped fresh from the
kernel and unmapped when freed, so each read block and each temporary of a block kernel
pays one page fault per 4 KiB, every time. scdask's tasks allocate and free tens of MB per
block: measured at 100,000 cells x 20,000 genes (``pp.recipe``, 24 blocks of 33 MB arrays),
one process took 17.3 s with the Nanny's setting and 8.0 s with the settings below; on a
2-worker LocalCluster the recipe went from 10.8-12.8 s to 7.3-8.0 s (largest worker 473 →
510-630 MB). The settings keep up to :data:`TRIM_THRESHOLD` of freed memory in a worker's
heap for the next block instead of handing it back at once.
"""

from __future__ import annotations

import ctypes
import sys

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["tune_heap"]

#: Allocations from this size on are mapped from the kernel (32 MiB, glibc's upper bound).
MMAP_THRESHOLD = 32 * 2**20
#: Freed memory at the top of the heap kept for reuse before it is returned.
TRIM_THRESHOLD = 128 * 2**20
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def set_heap() -> bool:
    """Apply :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD` to this process's glibc heap.

    Returns ``False`` (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class HeapPlugin(WorkerPlugin):
    """Runs :func:`set_heap` in every worker, present and future."""

    name = "scdask-heap"

    def setup(self, worker) -> None:
        set_heap()


def dask_setup(worker) -> None:
    """``dask worker --preload scdask.launch._heap``: :func:`set_heap` in that worker
    (``deploy/slurm/workers.sbatch`` starts its workers so)."""
    set_heap()


def tune_heap(client: Client) -> None:
    """Let the workers of ``client``'s cluster reuse freed block memory (glibc heaps).

    The launchers (:func:`~scdask.launch.local`, :func:`~scdask.launch.cuda`,
    :func:`~scdask.launch.slurm`) call this; call it yourself on a cluster you started
    another way (or start its workers with ``--preload scdask.launch._heap``). Workers that
    join later get it too. On other C libraries it does nothing.

    Parameters
    ----------
    client
        A client of the cluster whose workers to set.

    Examples
    --------
    >>> from distributed import Client
    >>> from scdask.launch import tune_heap
    >>> client = Client("tcp://127.0.0.1:8786")  # doctest: +SKIP
    >>> tune_heap(client)  # doctest: +SKIP
    """
    client.register_plugin(HeapPlugin(), name=HeapPlugin.name)
