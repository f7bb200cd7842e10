"""Single-cell activity inference: scdask vs secactpy on the same cells, in one run.

Not a test (pytest does not collect it). Run::

    python tests/benchmarks/bench_activity.py --cells 1000 --n-rand 1000

The cells are drawn with replacement from the bundled real sample (real UMI counts, 16% of
the SecAct signature genes non-zero per cell), so the density is realistic. Every engine
runs in a fresh process (peak RSS is that process's own high-water mark) on the same
``.h5ad`` file, with the full SecAct signature (grouped, 1,170 proteins), at single-cell
level, rng srand, seed 0. secactpy runs its dense default path and ``sparse_mode=True``
(its two CPU modes); the faster of the two is the reference of the ratio column.
Signature loading and grouping happen before the clock starts for both (secactpy gets the
grouped signature with grouping off, so it regresses the same 657 groups). scdask runs on
the threaded scheduler of its process.

Four more tables follow:

* user paths: ``activity.to_frames``, ``scdask.write_h5ad`` and anndata's own
  ``AnnData.write_h5ad`` on the same lazy result, each against the raw layers computed in one
  ``dask.compute`` (scdask's paths run the shared work once, so they should cost the same;
  anndata computes the layers one by one);

* float32 against float64: the largest |Δ zscore| and the share of p-values that differ;
* the dense path (bulk/pseudobulk targets go through BLAS GEMMs): its GEMM rate against this
  machine's BLAS peak (a 4,096² GEMM), for float64 and float32, each the best of three runs;
* memory against size (``--flat-cells``): ``infer`` → ``scdask.write_h5ad`` on
  ``scdask.launch.local`` (2 worker processes x 1 thread), largest worker peak RSS per size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings


def _make_data(path: str, n_cells: int, seed: int) -> None:
    import anndata as ad
    import numpy as np

    from scdask.datasets import sample

    real = sample()
    rows = np.random.default_rng(seed).integers(0, real.n_obs, n_cells)
    cells = real[rows].copy()
    cells.obs_names = [f"cell{i}" for i in range(n_cells)]
    ad.AnnData(X=cells.X, obs=cells.obs, var=cells.var).write_h5ad(path)


def _run_engine(engine: str, path: str, n_rand: int, out_dir: str) -> dict:
    warnings.simplefilter("ignore")
    import anndata as ad
    import numpy as np

    if engine.startswith("secactpy"):
        import secactpy

        sig = secactpy.group_signatures(secactpy.load_signature("secact"), 0.9)
        adata = ad.read_h5ad(path)
        start, cpu = time.perf_counter(), time.process_time()
        secactpy.secact_activity_inference_scrnaseq(
            adata,
            cell_type_col="cell_type",
            sig_matrix=sig,
            is_group_sig=False,
            is_single_cell_level=True,
            n_rand=n_rand,
            backend="numpy",
            rng_method="srand",
            sparse_mode=engine.endswith("sparse"),
        )
    else:
        import dask

        from scdask.activity import infer, load_signature
        from scdask.activity._infer import _bundled_grouped

        load_signature("secact")
        _bundled_grouped("secact", 0.9)
        import scdask
        from scdask.activity import to_frames

        dtype = np.float32 if engine.endswith("float32") else np.float64
        start, cpu = time.perf_counter(), time.process_time()
        res = infer(path, level="cell", n_rand=n_rand, dtype=dtype)
        written = os.path.join(out_dir, f"{engine}.h5ad")
        if engine == "scdask-to_frames":
            to_frames(res)
        elif engine == "scdask-write_h5ad":
            scdask.write_h5ad(res, written)
        elif engine == "anndata-write_h5ad":
            res.write_h5ad(written)  # anndata computes the lazy layers one by one
        else:  # the raw layers, in one compute
            _, _, zscore, pvalue = dask.compute(
                *(res.layers[name] for name in ("beta", "se", "zscore", "pvalue"))
            )
            np.save(os.path.join(out_dir, f"{engine}-zscore.npy"), zscore)
            np.save(os.path.join(out_dir, f"{engine}-pvalue.npy"), pvalue)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": wall, "cpu": cpu, "peak_mb": peak}


def _run_cluster(path: str, n_rand: int, out_dir: str) -> dict:
    """infer → write_h5ad on scdask's 2-worker LocalCluster; the largest worker peak RSS."""
    warnings.simplefilter("ignore")
    import scdask
    import scdask.launch
    from scdask.activity import infer

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with scdask.launch.local(n_workers=2, threads_per_worker=1) as client:
        start = time.perf_counter()
        res = infer(scdask.read_h5ad(path), level="cell", n_rand=n_rand)
        scdask.write_h5ad(res, os.path.join(out_dir, "result.h5ad"))
        wall = time.perf_counter() - start
        return {"wall": wall, "worker_peak_mb": max(client.run(peak_mib).values())}


def _gemm_rates(n_rand: int) -> list[tuple[str, float, float]]:
    """GFLOP/s of a 4,096² GEMM (the peak) and of the dense permutation path, per dtype."""
    import numpy as np

    from scdask.activity import build_model
    from scdask.activity._ridge import _permutation_stats, _tables

    rng = np.random.default_rng(0)
    n, p, m = 7860, 657, 2000
    model = build_model(rng.standard_normal((n, p)), 5e5)
    tables = _tables(n, n_rand, 0, "srand")
    rows = []
    for dtype in (np.float64, np.float32):
        a = rng.standard_normal((4096, 4096)).astype(dtype)
        y = rng.standard_normal((m, n)).astype(dtype)
        tt = model.tt.astype(dtype)
        a @ a
        # best of three for both rates, alternating, so that a noisy moment of this shared
        # machine does not decide the ratio
        peak = rate = 0.0
        for _ in range(3):
            start = time.perf_counter()
            a @ a
            peak = max(peak, 2 * 4096**3 / (time.perf_counter() - start) / 1e9)
            start = time.perf_counter()
            _permutation_stats(y, tt, tables)
            rate = max(rate, 2 * m * n * p * (n_rand + 1) / (time.perf_counter() - start) / 1e9)
        rows.append((np.dtype(dtype).name, peak, rate))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--n-rand", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--engines",
        default="secactpy-dense,secactpy-sparse,scdask-float64,scdask-float32",
        help="comma-separated subset of the default",
    )
    parser.add_argument(
        "--flat-cells",
        type=int,
        nargs="*",
        default=[2000, 8000],
        help="cell counts for the memory table (n_rand 20); none to skip",
    )
    parser.add_argument(
        "--paths",
        default="scdask-to_frames,scdask-write_h5ad,anndata-write_h5ad",
        help="what users call on the lazy float64 result, each timed against scdask-float64 "
        "(the raw layers in one compute); empty to skip",
    )
    parser.add_argument("--gemm-n-rand", type=int, default=20, help="0 skips the GEMM table")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, path, n_rand, out_dir = args.worker
        run = _run_cluster if engine == "cluster" else functools.partial(_run_engine, engine)
        print(json.dumps(run(path, int(n_rand), out_dir)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cells.h5ad")
        _make_data(path, args.cells, args.seed)
        rows = {}
        for engine in args.engines.split(","):
            rows[engine] = _worker(engine, path, args.n_rand, tmp)
        paths = {}
        for engine in filter(None, args.paths.split(",")):
            paths[engine] = _worker(engine, path, args.n_rand, tmp)
        if paths and "scdask-float64" not in rows:
            rows["scdask-float64"] = _worker("scdask-float64", path, args.n_rand, tmp)
        agreement = _float32_agreement(tmp)
        flat = {}
        for n_cells in args.flat_cells:
            flat_path = os.path.join(tmp, f"flat{n_cells}.h5ad")
            _make_data(flat_path, n_cells, args.seed)
            flat[n_cells] = _worker("cluster", flat_path, 20, tmp)
    _print_throughput(args, rows)
    if agreement:
        print(f"\nfloat32 vs float64: max |Δ zscore| {agreement[0]:.2e}, p-values differing "
              f"{agreement[1]:.2%} (by one or more grid steps of 1/(n_rand+1))")  # fmt: skip
    if paths:
        raw = rows["scdask-float64"]["wall"]
        print("\nuser paths on the lazy float64 result (fresh process each, same cells)")
        print(f"{'path':<22}{'wall s':>9}{'/ raw layers':>14}{'peak MB':>9}")
        print(f"{'raw layers':<22}{raw:>9.1f}{1:>14.2f}{rows['scdask-float64']['peak_mb']:>9.0f}")
        for name, r in paths.items():
            print(f"{name:<22}{r['wall']:>9.1f}{r['wall'] / raw:>14.2f}{r['peak_mb']:>9.0f}")
    if args.gemm_n_rand:
        print(f"\ndense path (2,000 dense samples x 7,860 genes x 657, n_rand={args.gemm_n_rand})")
        print(f"{'dtype':<10}{'BLAS peak GF/s':>16}{'dense path GF/s':>17}{'of peak':>9}")
        for dtype, peak, rate in _gemm_rates(args.gemm_n_rand):
            print(f"{dtype:<10}{peak:>16.1f}{rate:>17.1f}{rate / peak:>9.0%}")
    if flat:
        print(
            "\nmemory against size (scdask.launch.local, 2 workers x 1 thread, n_rand=20, written)"
        )
        print(f"{'cells':>8}{'wall s':>9}{'worker peak MB':>16}")
        for n_cells, r in flat.items():
            print(f"{n_cells:>8}{r['wall']:>9.1f}{r['worker_peak_mb']:>16.0f}")


def _worker(engine: str, path: str, n_rand: int, out_dir: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", engine, path, str(n_rand), out_dir],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _float32_agreement(out_dir: str) -> tuple[float, float] | None:
    import numpy as np

    files = {
        f"{dtype}-{stat}": os.path.join(out_dir, f"scdask-{dtype}-{stat}.npy")
        for dtype in ("float32", "float64")
        for stat in ("zscore", "pvalue")
    }
    if not all(os.path.exists(f) for f in files.values()):
        return None
    got = {key: np.load(f) for key, f in files.items()}
    dz = np.abs(got["float32-zscore"] - got["float64-zscore"]).max()
    return float(dz), float(np.mean(got["float32-pvalue"] != got["float64-pvalue"]))


def _print_throughput(args, rows: dict) -> None:
    reference = min(
        (r["wall"] for name, r in rows.items() if name.startswith("secactpy")), default=None
    )
    print(
        f"\n{args.cells} cells x SecAct (1,170 proteins), n_rand={args.n_rand}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'engine':<18}{'wall s':>9}{'CPU s':>9}{'cells/s':>10}{'ms/cell/perm':>14}"
        f"{'100k cells h':>14}{'peak MB':>9}{'speed-up':>10}"
    )
    for name, r in rows.items():
        ratio = f"{reference / r['wall']:.2f}x" if reference else "-"
        per = r["wall"] / (args.cells * args.n_rand) * 1e3
        projected = 1e5 / (args.cells / r["wall"]) / 3600
        print(
            f"{name:<18}{r['wall']:>9.1f}{r['cpu']:>9.1f}{args.cells / r['wall']:>10.2f}"
            f"{per:>14.4f}{projected:>14.2f}{r['peak_mb']:>9.0f}{ratio:>10}"
        )
    print("(100k cells h: projected from the measured cells/s at this n_rand)")


if __name__ == "__main__":
    main()
