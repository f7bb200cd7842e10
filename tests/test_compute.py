"""scdask._compute.compute: blocks joined in the caller, so a worker never holds the whole."""

from __future__ import annotations

import resource
import time

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from scdask._compute import compute
from scdask._ops import CSRBlock

distributed = pytest.importorskip("distributed")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_same_values_as_dask_compute():
    rng = np.random.default_rng(0)
    dense = da.from_array(rng.standard_normal((23, 7)), chunks=(5, 3))
    block = CSRBlock(sp.random_array((20, 6), density=0.3, format="csr", rng=rng))
    sparse = da.from_array(block, chunks=(7, 6), asarray=False)
    single = da.ones(4, chunks=4)
    got = compute(dense, sparse, single, 3)
    expected = dask.compute(dense, sparse, single, 3)
    np.testing.assert_array_equal(got[0], expected[0])
    assert isinstance(got[1], CSRBlock)
    np.testing.assert_array_equal(got[1].toarray(), block.toarray())
    np.testing.assert_array_equal(got[2], expected[2])
    assert got[3] == 3


def test_one_compute(counting_scheduler):
    with counting_scheduler(1) as counter:
        compute(da.ones((10, 2), chunks=(3, 2)), da.zeros(5, chunks=2))
    assert counter.count == 1


def _slow(block: np.ndarray) -> np.ndarray:
    """A block that takes a while to compute, as real per-cell work does."""
    time.sleep(0.1)
    return block + 1.0


def test_worker_memory_does_not_hold_the_result():
    """300 MB of per-row results over 30 blocks: each block leaves its worker when it is done.

    Joining on a worker would hold the whole (300 MB) there, and ``dask.compute`` of the
    blocks would keep every block on its worker until the last is done (~150 MB each)."""
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        x = da.random.default_rng(0).random((750_000, 50), chunks=(25_000, 50)).map_blocks(_slow)
        before = client.run(_peak_mib)
        (out,) = compute(x)
        after = client.run(_peak_mib)
        held = client.run(lambda dask_worker: len(dask_worker.data))
    assert out.shape == (750_000, 50)
    assert out.min() >= 1.0
    growth = max(after[w] - before[w] for w in before)
    assert growth < 0.25 * out.nbytes / 2**20, f"a worker grew by {growth:.0f} MiB"
    assert max(held.values()) == 0
