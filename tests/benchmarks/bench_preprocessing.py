"""Benchmark: QC → normalize → log1p → HVG (seurat, 2000) → scale → PCA (50), scdask vs peers.

On a synthetic CSR ``.h5ad`` (``scdask.datasets.synthetic``, 20,000 genes) each tool runs the
chain in a fresh process, one after the other:

* ``scdask``        ``scdask.pp.recipe`` (fused, 4 passes) on ``scdask.launch.local``: a
  ``LocalCluster`` of 2 worker processes x 1 thread with scdask's worker heap settings;
* ``scdask_steps``  the same chain with scdask's step-by-step public functions, same cluster;
* ``scanpy``        scanpy in memory, ``pca(svd_solver="covariance_eigh")`` (its fastest exact
  solver; ``--scanpy-arpack`` adds scanpy's default ARPACK solver as ``scanpy_arpack``);
* ``scanpy_dask``   scanpy on ``anndata.experimental.read_elem_lazy`` X (10,000-row CSR chunks),
  a plain ``LocalCluster`` of the same size, ``pca(svd_solver="covariance_eigh")`` (the
  default needs dask-ml);
* ``anndataoom`` and ``crispyx`` when importable, driven as in PEERS_BENCHMARK.md
  (anndataoom has no seurat HVG: its ``chunked_mean_var`` + scdask's seurat binning; crispyx
  has no scale step and no total/%MT QC, so it does less work).

For each it prints wall time of the chain (reading included, imports and cluster start-up
excluded), peak RSS of the whole process tree and of its largest process (for the dask runs:
a worker), the ratio to the fastest tool, passes over X and seconds per pass against the
floor: one raw h5py read of ``X/data`` + ``X/indices`` in 10,000-row slices (warm cache).
Correctness: min |Pearson r| of PC1..PC10 scores against scanpy's.

Usage::

    python tests/benchmarks/bench_preprocessing.py               # 100,000 cells
    python tests/benchmarks/bench_preprocessing.py --quick       # 20,000 cells
    python tests/benchmarks/bench_preprocessing.py --cells 50000 --tools scdask scanpy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

TOOLS = ("scdask", "scdask_steps", "scanpy", "scanpy_dask", "anndataoom", "crispyx")
N_TOP, N_COMPS, MAX_VALUE, TARGET = 2000, 50, 10, 1e4


# -- in the child process: one tool, timed step by step -------------------------------------
class Steps:
    """Wall time per named step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = now - self._last
        self._last = now


def _cluster(*, scdask_launcher: bool):
    """2 worker processes x 1 thread, 6 GiB each: scdask's own launcher for scdask (with its
    worker heap settings, :func:`scdask.launch.tune_heap`), distributed's defaults for peers."""
    from distributed import Client, LocalCluster

    options = {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "6GiB"}
    if scdask_launcher:
        import scdask.launch

        client = scdask.launch.local(**options)
        return client.cluster, client
    cluster = LocalCluster(processes=True, **options)
    return cluster, Client(cluster)


def _count_computes():
    """Patch ``dask.compute`` to count the batched computes (each one pass over X in scdask)."""
    import dask

    calls = {"n": 0}
    original = dask.compute

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    dask.compute = counting
    return calls


def run_scdask(path: str, steps: Steps) -> tuple[np.ndarray, int]:
    import scdask

    cluster, client = _cluster(scdask_launcher=True)
    steps.mark("cluster_start")
    adata = scdask.read_h5ad(path)
    steps.mark("read")
    scdask.pp.recipe(
        adata,
        min_genes=0,
        min_cells=0,
        target_sum=TARGET,
        n_top_genes=N_TOP,
        n_comps=N_COMPS,
        max_value=MAX_VALUE,
        verbose=False,
    )
    steps.mark("recipe")
    client.close()
    cluster.close()
    return adata.obsm["X_pca"], adata.uns["recipe"]["passes"]


def run_scdask_steps(path: str, steps: Steps) -> tuple[np.ndarray, int]:
    import scdask

    cluster, client = _cluster(scdask_launcher=True)
    calls = _count_computes()
    steps.mark("cluster_start")
    adata = scdask.read_h5ad(path)
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    steps.mark("read")
    scdask.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False)
    steps.mark("qc")
    scdask.pp.normalize_total(adata, target_sum=TARGET)
    scdask.pp.log1p(adata)
    steps.mark("normalize_log1p")
    scdask.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=N_TOP)
    steps.mark("hvg")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    scdask.pp.scale(adata, max_value=MAX_VALUE)
    steps.mark("scale")
    scdask.pp.pca(adata, n_comps=N_COMPS)
    steps.mark("pca")
    client.close()
    cluster.close()
    return adata.obsm["X_pca"], calls["n"]


def _scanpy_chain(adata, steps: Steps, *, solver: str | None):
    import scanpy as sc

    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    steps.mark("qc")
    sc.pp.normalize_total(adata, target_sum=TARGET)
    sc.pp.log1p(adata)
    steps.mark("normalize_log1p")
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=N_TOP)
    steps.mark("hvg")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(adata, max_value=MAX_VALUE)
    steps.mark("scale")
    sc.pp.pca(adata, n_comps=N_COMPS, svd_solver=solver)
    x_pca = adata.obsm["X_pca"]
    x_pca = x_pca.compute() if hasattr(x_pca, "compute") else x_pca
    steps.mark("pca")
    return x_pca


def run_scanpy(path: str, steps: Steps, solver: str | None = "covariance_eigh"):
    import anndata as ad

    adata = ad.read_h5ad(path)
    # scipy 1.17 refuses int64 indptr with int32 indices in scanpy's QC (PEERS_BENCHMARK.md §0)
    if adata.X.indptr.dtype != adata.X.indices.dtype and adata.X.nnz < 2**31:
        adata.X.indptr = adata.X.indptr.astype(adata.X.indices.dtype)
    steps.mark("read")
    return _scanpy_chain(adata, steps, solver=solver), None


def run_scanpy_dask(path: str, steps: Steps):
    import anndata as ad
    import h5py

    cluster, client = _cluster(scdask_launcher=False)
    steps.mark("cluster_start")
    with h5py.File(path, "r") as f:
        x = ad.experimental.read_elem_lazy(f["X"], chunks=(10_000, -1))
        obs, var = ad.io.read_elem(f["obs"]), ad.io.read_elem(f["var"])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    steps.mark("read")
    x_pca = _scanpy_chain(adata, steps, solver="covariance_eigh")
    client.close()
    cluster.close()
    return x_pca, None


def run_anndataoom(path: str, steps: Steps):
    import anndataoom as oom

    from scdask.preprocessing._hvg import _dispersion_table

    adata = oom.read(path)
    steps.mark("read")
    oom.chunked_qc_metrics(adata)
    oom.chunked_gene_group_pct(adata, np.asarray(adata.var_names.str.startswith("MT-")))
    steps.mark("qc")
    oom.chunked_normalize_total(adata, target_sum=TARGET)
    mean, var = oom.chunked_mean_var(adata)  # normalised, not logged: what seurat uses
    oom.chunked_log1p(adata)
    steps.mark("normalize_log1p")
    table = _dispersion_table(
        np.asarray(mean, dtype=np.float64),
        np.asarray(var, dtype=np.float64),
        flavor="seurat",
        n_bins=20,
        n_top_genes=N_TOP,
        cutoffs=(0.0125, 3, 0.5, np.inf),
    )
    full = adata  # keep the parent alive: its __del__ closes the file the subset reads
    adata = full[:, table["highly_variable"].to_numpy()]
    steps.mark("hvg")
    oom.chunked_scale(adata, max_value=MAX_VALUE)
    steps.mark("scale")
    x_pca = oom.chunked_pca(adata, n_comps=N_COMPS)[0]
    steps.mark("pca")
    del full
    return np.asarray(x_pca), None


def run_crispyx(path: str, steps: Steps):
    import tempfile

    import crispyx as cx

    out = Path(tempfile.mkdtemp(dir=Path(path).parent)) / "normalized.h5ad"
    steps.mark("read")
    cx.pp.normalize_total_log1p(path, out, target_sum=TARGET, verbose=False)
    steps.mark("normalize_log1p")
    cx.pp.highly_variable_genes(out, flavor="mean_dispersion", n_top_genes=N_TOP, cell_mask=None)
    steps.mark("hvg")
    adata = cx.AnnData(out)
    cx.pp.pca(adata, n_comps=N_COMPS, show_progress=False)
    steps.mark("pca")
    x_pca = np.asarray(cx.AnnData(out).obsm["X_pca"][:])
    out.unlink()
    out.parent.rmdir()
    return x_pca, None


RUNNERS = {
    "scdask": run_scdask,
    "scdask_steps": run_scdask_steps,
    "scanpy": run_scanpy,
    "scanpy_arpack": lambda path, steps: run_scanpy(path, steps, solver=None),
    "scanpy_dask": run_scanpy_dask,
    "anndataoom": run_anndataoom,
    "crispyx": run_crispyx,
}


def child(tool: str, path: str, out: str) -> None:
    steps = Steps()
    record: dict = {"tool": tool}
    try:
        x_pca, passes = RUNNERS[tool](path, steps)
        np.save(out + ".npy", np.asarray(x_pca, dtype=np.float32)[:, :10])
        record["passes"] = passes
    except Exception as e:  # a failing peer is a result, not a crash of the benchmark
        record["error"] = f"{type(e).__name__}: {e}"[:300]
    record["steps"] = steps.times
    Path(out + ".json").write_text(json.dumps(record))


# -- in the parent process: data, floor, one child per tool, the table -----------------------
class TreeRSS:
    """Peak RSS of a process tree (sum) and of its largest process, sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak_sum = 0
        self.peak_one: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                total += rss
                self.peak_one[p.pid] = max(self.peak_one.get(p.pid, 0), rss)
            self.peak_sum = max(self.peak_sum, total)
            self._stop.wait(0.1)

    def stop(self) -> tuple[int, int, int]:
        """(tree peak, root process peak, largest other process peak) in bytes."""
        self._stop.set()
        self._thread.join()
        root = self.peak_one.get(self.root.pid, 0)
        others = [v for k, v in self.peak_one.items() if k != self.root.pid]
        return self.peak_sum, root, max(others, default=0)


def io_floor(path: Path, rows: int = 10_000, repeats: int = 3) -> float:
    """Best-of time to read X/data and X/indices in ``rows``-row slices with h5py (warm)."""
    import h5py

    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        with h5py.File(path, "r") as f:
            indptr = f["X/indptr"][:]
            for lo in range(0, len(indptr) - 1, rows):
                a, b = int(indptr[lo]), int(indptr[min(lo + rows, len(indptr) - 1)])
                f["X/data"][a:b]
                f["X/indices"][a:b]
        best = min(best, time.perf_counter() - start)
    return best


def run_tool(tool: str, path: Path, folder: Path) -> dict:
    out = str(folder / f"result_{tool}")
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", tool, "--path", str(path), "--out", out], env=env
    )
    rss = TreeRSS(proc.pid)
    proc.wait()
    wall = time.perf_counter() - start
    tree, root, other = rss.stop()
    try:
        record = json.loads(Path(out + ".json").read_text())
    except FileNotFoundError:
        record = {"tool": tool, "error": f"child exited with {proc.returncode}", "steps": {}}
    setup = sum(v for k, v in record["steps"].items() if k == "cluster_start")
    record.update(
        process_wall=wall,
        chain=sum(record["steps"].values()) - setup,
        tree_mb=tree / 2**20,
        root_mb=root / 2**20,
        other_mb=other / 2**20,
        x_pca=out + ".npy" if Path(out + ".npy").exists() else None,
    )
    return record


def _min_abs_r(a: np.ndarray, b: np.ndarray) -> float:
    return min(abs(np.corrcoef(a[:, j], b[:, j])[0, 1]) for j in range(a.shape[1]))


def report(records: list[dict], floor: float, n_cells: int, load: tuple[float, ...]) -> None:
    ok = [r for r in records if "error" not in r]
    fastest = min((r["chain"] for r in ok), default=np.nan)
    ref = next((r for r in ok if r["tool"] == "scanpy"), None)
    ref_pca = np.load(ref["x_pca"]) if ref and ref["x_pca"] else None
    print(
        f"\n{n_cells:,} cells x 20,000 genes; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print(f"I/O floor (h5py, X/data + X/indices, 10k-row slices, warm): {floor:.2f} s per pass")
    head = (
        "| tool | chain s | x fastest | process wall s | peak RSS tree MB | driver MB | "
        "largest worker MB | passes | s / pass | pass / floor | PC1-10 min abs r vs scanpy |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in records:
        if "error" in r:
            print(f"| {r['tool']} | failed: {r['error']} |" + " |" * 9)
            continue
        passes = r.get("passes")
        per_pass = r["chain"] / passes if passes else np.nan
        corr = (
            _min_abs_r(np.load(r["x_pca"]), ref_pca)
            if ref_pca is not None and r["x_pca"]
            else np.nan
        )
        worker = f"{r['other_mb']:.0f}" if r["other_mb"] else "-"
        print(
            f"| {r['tool']} | {r['chain']:.1f} | {r['chain'] / fastest:.2f} | "
            f"{r['process_wall']:.1f} | {r['tree_mb']:.0f} | {r['root_mb']:.0f} | {worker} | "
            f"{passes if passes else '-'} | {per_pass:.2f} | {per_pass / floor:.1f} | {corr:.4f} |"
        )
    print("\nsteps (s):")
    for r in records:
        print(f"  {r['tool']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 cells")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(RUNNERS))
    parser.add_argument("--scanpy-arpack", action="store_true", help="add scanpy's default PCA")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "scdask_bench_pp"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.out)
        return

    from scdask.datasets import synthetic

    n_cells = 20_000 if args.quick else args.cells
    args.data.mkdir(parents=True, exist_ok=True)
    path = args.data / f"synth_{n_cells}.h5ad"
    if not path.exists():
        start = time.perf_counter()
        synthetic(path, n_cells)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    tools = list(args.tools) + (["scanpy_arpack"] if args.scanpy_arpack else [])
    tools = [t for t in tools if t not in ("anndataoom", "crispyx") or _importable(t)]
    floor = io_floor(path)
    records = []
    for tool in tools:
        print(f"running {tool} ...", flush=True)
        records.append(run_tool(tool, path, args.data))
    report(records, floor, n_cells, os.getloadavg())


def _importable(module: str) -> bool:
    import importlib.util

    found = importlib.util.find_spec(module) is not None
    if not found:
        print(f"{module} not installed (pip install {module}); skipped")
    return found


if __name__ == "__main__":
    main()
