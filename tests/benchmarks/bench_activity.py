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
grouped signature with grouping off, so it regresses the same 657 groups).
"""

from __future__ import annotations

import argparse
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


def _run_engine(engine: str, path: str, n_rand: int) -> dict:
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
        dtype = np.float32 if engine.endswith("float32") else np.float64
        start, cpu = time.perf_counter(), time.process_time()
        res = infer(path, level="cell", n_rand=n_rand, dtype=dtype)
        dask.compute(*(res.layers[name] for name in ("beta", "se", "zscore", "pvalue")))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": wall, "cpu": cpu, "peak_mb": peak}


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
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, path, n_rand = args.worker
        print(json.dumps(_run_engine(engine, path, int(n_rand))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cells.h5ad")
        _make_data(path, args.cells, args.seed)
        rows = {}
        for engine in args.engines.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", engine, path, str(args.n_rand)],
                check=True,
                capture_output=True,
                text=True,
            )
            rows[engine] = json.loads(out.stdout.strip().splitlines()[-1])
    reference = min(
        (r["wall"] for name, r in rows.items() if name.startswith("secactpy")), default=None
    )
    print(
        f"\n{args.cells} cells x SecAct (1,170 proteins), n_rand={args.n_rand}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'engine':<18}{'wall s':>9}{'CPU s':>9}{'cells/s':>10}{'peak MB':>9}{'speed-up':>10}")
    for name, r in rows.items():
        ratio = f"{reference / r['wall']:.2f}x" if reference else "-"
        print(
            f"{name:<18}{r['wall']:>9.1f}{r['cpu']:>9.1f}{args.cells / r['wall']:>10.2f}"
            f"{r['peak_mb']:>9.0f}{ratio:>10}"
        )


if __name__ == "__main__":
    main()
