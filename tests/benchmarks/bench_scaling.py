"""Scaling of activity inference: 1 worker vs 2 workers on a LocalCluster, same data, one run.

Not a test (pytest does not collect it). Run::

    python tests/benchmarks/bench_scaling.py --cells 1000 --n-rand 100

Cells are synthetic (``scdask.datasets.synthetic``, 20,000 genes, fitted on the real sample);
the full SecAct signature, single-cell level, float64. The signature and the permutation table
are built (and cached) before the clock starts, so the table measures the distributed part:
gene-means pass + blockwise ridge/permutation tasks. Prints time, cells/s, speed-up and the
largest difference between the two runs' z-scores (they must be identical).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask
import numpy as np
from distributed import Client, LocalCluster

import scdask


def _run(path: str, n_workers: int, n_rand: int, blocks: int) -> tuple[float, np.ndarray]:
    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None) as cl,
        Client(cl) as client,
        dask.config.set(scheduler=client.get),
    ):
        counts = scdask.read_h5ad(path)
        counts = scdask.read_h5ad(path, chunk_size=-(-counts.n_obs // blocks))
        t0 = time.perf_counter()
        res = scdask.activity.infer(counts, level="cell", n_rand=n_rand)
        z = res.layers["zscore"].compute()
        return time.perf_counter() - t0, np.asarray(z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--n-rand", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=8, help="row blocks (tasks)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cells.h5ad")
        scdask.datasets.synthetic(path, args.cells, n_genes=20000, seed=0)
        warm = scdask.read_h5ad(path)[:8]  # builds and caches the signature and the table
        scdask.activity.infer(warm, level="cell", n_rand=args.n_rand).layers["zscore"].compute()
        t1, z1 = _run(path, 1, args.n_rand, args.blocks)
        t2, z2 = _run(path, 2, args.n_rand, args.blocks)

    print(
        f"\n{args.cells:,} cells, SecAct (1,170 proteins), n_rand={args.n_rand}, float64, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'workers':>8} {'time s':>8} {'cells/s':>9} {'speed-up':>9}")
    for n, t in ((1, t1), (2, t2)):
        print(f"{n:>8} {t:>8.1f} {args.cells / t:>9.1f} {t1 / t:>8.2f}x")
    print(f"max |z(1 worker) - z(2 workers)| = {np.nanmax(np.abs(z1 - z2)):.3g} (target: 0)")


if __name__ == "__main__":
    main()
