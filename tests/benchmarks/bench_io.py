"""Benchmark: scdask's lazy reader on a 2-worker LocalCluster against a one-process h5py loop.

For ``--cells`` N and then 4N cells (synthetic CSR .h5ad, 20,000 genes), it times

(a) a single-process h5py loop over the file computing row sums and column sums, and
(b) ``scdask.read_h5ad`` + ``X.sum(axis=0)`` and ``X.sum(axis=1)`` in one ``dask.compute``
    on a ``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)``,

and prints time, cells/s, the ratio of (b) to (a) (target >= 0.70) and the peak RSS of the
worker processes (sampled with psutil every 20 ms). Worker peak RSS must not grow with the
number of cells. ``--chunk-memory`` runs (b) once per value, to find the block size that
reads fastest. Both runs read a warm page cache (the file is read once before timing);
``--repeat`` keeps the best of several runs of each, for a machine shared with others.

Usage::

    python tests/benchmarks/bench_io.py                    # 200,000 and 800,000 cells
    python tests/benchmarks/bench_io.py --quick            # 20,000 and 80,000 cells
    python tests/benchmarks/bench_io.py --cells 100000 --chunk-memory 32MiB 64MiB 256MiB
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import dask
import h5py
import numpy as np
import psutil
import scipy.sparse as sp
from dask.utils import format_bytes
from distributed import Client, LocalCluster

import scdask
from scdask.datasets import synthetic


def h5py_loop(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sums of the CSR X of ``path``, ``rows`` rows at a time, one process.

    The sums use scipy's CSR kernels on the raw arrays (faster than ``np.bincount``), so
    this is the best a plain single-process loop does.
    """
    with h5py.File(path, "r") as f:
        x = f["X"]
        n_rows, n_cols = (int(s) for s in x.attrs["shape"])
        indptr = x["indptr"][:]
        row_sums = np.zeros(n_rows, dtype=np.float64)
        col_sums = np.zeros(n_cols, dtype=np.float64)
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            lo, hi = int(indptr[start]), int(indptr[stop])
            ptr = (indptr[start : stop + 1] - lo).astype(np.int32)
            block = sp.csr_array(
                (x["data"][lo:hi], x["indices"][lo:hi], ptr), shape=(stop - start, n_cols)
            )
            col_sums += block.sum(axis=0)
            row_sums[start:stop] = block.sum(axis=1)
    return row_sums, col_sums


class PeakRSS:
    """Sample the RSS of some processes in a background thread; keep the peak of each."""

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peaks = [p.memory_info().rss for p in self.procs]
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, p in enumerate(self.procs):
                try:
                    self.peaks[i] = max(self.peaks[i], p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * 2**20):
            pass


def scdask_sums(client: Client, path: Path, chunk_memory: str) -> dict:
    pids = list(client.run(os.getpid).values())
    with dask.config.set({"scdask.chunk-memory": chunk_memory}):
        t0 = time.perf_counter()
        with PeakRSS(pids) as rss:
            adata = scdask.read_h5ad(path)
            col, row = dask.compute(adata.X.sum(axis=0), adata.X.sum(axis=1))
        elapsed = time.perf_counter() - t0
    return {
        "time": elapsed,
        "col": col,
        "row": row,
        "rss": max(rss.peaks),
        "blocks": adata.X.numblocks[0],
        "rows": adata.X.chunks[0][0],
    }


def run(
    n_cells: int,
    n_genes: int,
    folder: Path,
    chunk_memories: list[str],
    *,
    rows: int,
    repeat: int,
) -> dict:
    path = folder / f"synthetic_{n_cells}x{n_genes}.h5ad"
    if not path.exists():
        t0 = time.perf_counter()
        synthetic(path, n_cells, n_genes=n_genes)
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s")
    size = path.stat().st_size
    warm(path)
    t_h5 = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        row_ref, col_ref = h5py_loop(path, rows)
        t_h5 = min(t_h5, time.perf_counter() - t0)
    print(f"\n{n_cells:,} cells x {n_genes:,} genes, {format_bytes(size)} on disk")
    header = f"{'method':<54}{'time s':>8}{'cells/s':>11}{'ratio':>7}{'worker peak RSS':>17}"
    print(header)
    print("-" * len(header))
    print(f"{f'h5py loop, 1 process, {rows:,}-row reads':<54}{t_h5:>8.2f}{n_cells / t_h5:>11,.0f}")
    results = {}
    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        for cm in chunk_memories:
            r = min((scdask_sums(client, path, cm) for _ in range(repeat)), key=lambda r: r["time"])
            np.testing.assert_allclose(r["row"], row_ref, rtol=1e-4)
            np.testing.assert_allclose(r["col"], col_ref, rtol=1e-4)
            label = f"scdask 2 workers, chunk-memory {cm} ({r['rows']:,} rows)"
            print(
                f"{label:<54}{r['time']:>8.2f}{n_cells / r['time']:>11,.0f}"
                f"{t_h5 / r['time']:>7.2f}{format_bytes(r['rss']):>17}"
            )
            results[cm] = r
    return {"h5py": t_h5, "scdask": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=200_000, help="cells of the first file")
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="20,000 and 80,000 cells")
    parser.add_argument("--no-scale", action="store_true", help="skip the 4x file")
    parser.add_argument(
        "--chunk-memory",
        nargs="+",
        default=[str(dask.config.get("scdask.chunk-memory"))],
        help="scdask.chunk-memory values to time (default: the configured one)",
    )
    parser.add_argument("--h5py-rows", type=int, default=10_000, help="rows per h5py read")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is shown")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "scdask-bench"
    )
    args = parser.parse_args()
    n_cells = 20_000 if args.quick else args.cells
    args.data_dir.mkdir(parents=True, exist_ok=True)
    opts = {"rows": args.h5py_rows, "repeat": args.repeat}
    print(f"scdask {scdask.__version__}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    small = run(n_cells, args.genes, args.data_dir, args.chunk_memory, **opts)
    if args.no_scale:
        return
    big = run(4 * n_cells, args.genes, args.data_dir, args.chunk_memory, **opts)
    print(f"\nworker peak RSS, {n_cells:,} -> {4 * n_cells:,} cells:")
    for cm in args.chunk_memory:
        a, b = small["scdask"][cm]["rss"], big["scdask"][cm]["rss"]
        verdict = "does not grow" if b <= 1.15 * a else "GROWS"
        print(
            f"  chunk-memory {cm}: {format_bytes(a)} -> {format_bytes(b)} ({b / a:.2f}x, {verdict})"
        )


if __name__ == "__main__":
    main()
