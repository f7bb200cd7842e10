"""The ``scdask`` command: the main job, single steps, file tools and clusters.

Exit codes: 0 success; 2 bad usage or bad input (one clear line on stderr, no traceback
unless ``--debug``); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main"]

_EPILOG = {
    "demo": "example:\n  scdask demo --out scdask-demo",
    "run": "example:\n  scdask run config.yaml --out results\n\n"
    "config.yaml (every key optional):\n"
    "  input: atlas.h5ad\n  output: results\n"
    "  launcher: {kind: slurm, options: {profile: cpu, jobs: 4}}\n"
    "  preprocess: {min_genes: 200, n_top_genes: 2000, n_comps: 50, umap: true}\n"
    "  activity: {levels: [pseudobulk, cell], cell_type_col: cell_type, n_rand: 1000}",
    "preprocess": "example:\n  scdask preprocess atlas.h5ad cells.h5ad --n-top-genes 2000",
    "activity": "examples:\n  scdask activity atlas.h5ad act.h5ad --level pseudobulk "
    "--cell-type-col cell_type\n  scdask activity atlas.h5ad act_cells.h5ad --level cell "
    "--dtype float32 --launcher slurm:cpu",
    "info": "example:\n  scdask info atlas.h5ad",
    "convert": "example:\n  scdask convert atlas_csc.h5ad atlas.h5ad --layout csr",
    "synthetic": "example:\n  scdask synthetic atlas_1m.h5ad --cells 1000000 --genes 20000",
    "cluster": "examples:\n  scdask cluster local --workers 2\n"
    "  scdask cluster slurm --profile cpu --jobs 4\n  scdask cluster job-script --profile gpu",
}


def _launcher(value: str) -> dict[str, Any]:
    """``local`` | ``cuda`` | ``none`` | ``slurm[:PROFILE]`` | ``ADDRESS`` | ``scheduler.json``."""
    if value in ("local", "cuda", "none"):
        return {"kind": value, "options": {}}
    if value == "slurm" or value.startswith("slurm:"):
        profile = value.partition(":")[2] or None
        return {"kind": "slurm", "options": {"profile": profile}}
    return {"kind": "connect", "options": {"address": value}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scdask",
        description="Single-cell analysis and SecAct activity inference on atlases larger "
        "than memory, as Dask graphs.",
        epilog="Run 'scdask COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_EPILOG[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    launcher_help = (
        "engine: local (default), cuda, none (threads in this process), slurm[:PROFILE], "
        "a scheduler address (tls://host:8786) or a scheduler file"
    )

    p = add("demo", "the main job on the bundled real sample, on a local cluster")
    p.add_argument("--out", default="scdask-demo", help="output folder (default: %(default)s)")
    p.add_argument(
        "--n-rand",
        type=int,
        default=1000,
        help="permutations (default: %(default)s, secactpy's default)",
    )
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")

    p = add("run", "the main job as described by a YAML configuration")
    p.add_argument("config", help="YAML file (see below)")
    p.add_argument("--out", help="output folder (overrides the config's 'output')")

    p = add("preprocess", "QC → filter → normalize → log1p → HVG → scale → PCA, streamed")
    p.add_argument("input", help=".h5ad or zarr store of counts")
    p.add_argument("output", help=".h5ad to write (log-normalised X, QC/HVG columns, PCA)")
    p.add_argument("--min-genes", type=int, default=200)
    p.add_argument("--min-cells", type=int, default=3)
    p.add_argument("--target-sum", type=float, default=1e4)
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--n-comps", type=int, default=50)
    p.add_argument("--launcher", type=_launcher, default="local", help=launcher_help)

    p = add("activity", "SecAct activity inference (ridge + permutation test)")
    p.add_argument("input", help=".h5ad of counts")
    p.add_argument("output", help=".h5ad to write (obs = samples, var = proteins)")
    p.add_argument("--level", default="cell", choices=["cell", "pseudobulk", "spot", "bulk"])
    p.add_argument("--cell-type-col", default=None, help="obs column for pseudobulk")
    p.add_argument("--signature", default="secact", help="secact, cytosig or a TSV file")
    p.add_argument("--n-rand", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rng", default="srand", choices=["srand", "gsl", "numpy"])
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--launcher", type=_launcher, default="local", help=launcher_help)

    p = add("info", "shape, layout, density, columns and I/O estimate of a file")
    p.add_argument("input")

    p = add("convert", "rewrite a file with CSR or CSC X, with bounded memory")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--layout", default="csr", choices=["csr", "csc"])

    p = add("synthetic", "write a realistic synthetic atlas (fitted on the bundled sample)")
    p.add_argument("output")
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)

    p = add("cluster", "start a cluster and keep it running, or print a SLURM job script")
    p.add_argument("kind", choices=["local", "cuda", "slurm", "job-script"])
    p.add_argument("--workers", type=int, default=None, help="local: worker processes")
    p.add_argument("--profile", default=None, help="slurm: site profile name")
    p.add_argument("--jobs", type=int, default=1, help="slurm: jobs to submit")
    return parser


@contextlib.contextmanager
def progress_bar(client: Any) -> Iterator[None]:
    """Show a progress bar for every compute inside: dask's, or distributed's with a client.

    Examples
    --------
    >>> import dask.array as da
    >>> with progress_bar(None):
    ...     _ = da.ones(10, chunks=5).sum().compute()
    """
    import dask

    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=1.0, dt=0.5):
            yield
        return
    from dask.core import flatten
    from distributed.diagnostics.progressbar import progress

    def get(dsk, keys, **kwargs):
        futures = client.get(dsk, keys, sync=False, **kwargs)
        progress(list(flatten(futures)), notebook=False, minimum=1.0)
        return client.gather(futures)

    # Like ``client.get``, this scheduler belongs to the client: scdask._compute.active_client
    # must still find it (the writer's sliding window of futures and the broadcast activity
    # model depend on it; without it the 37 MB SecAct model rode along with every window).
    get.__self__ = client
    with dask.config.set(scheduler=get):
        yield


@contextlib.contextmanager
def _engine(launcher: dict[str, Any]) -> Iterator[Any]:
    """The command's engine (a Client, or ``None`` for local threads), closed on the way out."""
    from scdask._pipeline import start_engine

    client = start_engine(launcher)
    try:
        yield client
    finally:
        if client is not None:
            client.close()


def _demo(args: argparse.Namespace) -> int:
    from scdask._pipeline import load_config

    cfg = load_config(
        output=args.out,
        chunk_size=100,  # the 559-cell sample in 6 blocks, so every worker has cells to do
        launcher={"kind": "local", "options": {"n_workers": args.workers, "threads_per_worker": 1}},
        activity={"n_rand": args.n_rand},
        plots=not args.no_plots,
    )
    return _run_config(cfg)


def _run(args: argparse.Namespace) -> int:
    from scdask._pipeline import load_config

    overrides = {"output": args.out} if args.out else {}
    return _run_config(load_config(args.config, **overrides))


def _run_config(cfg: dict[str, Any]) -> int:
    from scdask._pipeline import run_pipeline

    t0 = time.perf_counter()
    with _engine(cfg["launcher"]) as client:
        written = run_pipeline(cfg, log=_log, progress=lambda name: progress_bar(client))
        if client is not None:
            peaks = client.run(_peak_rss_mib)
            _log("[scdask] worker peak RSS: " + ", ".join(f"{v:.0f} MiB" for v in peaks.values()))
    _log(
        f"[scdask] done in {time.perf_counter() - t0:.1f} s; wrote to {Path(cfg['output']).resolve()}:"
    )
    for name, path in written.items():
        _log(f"  {name:24s} {path}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    import scdask

    with _engine(args.launcher) as client, progress_bar(client):
        adata = scdask.read_h5ad(args.input)
        scdask.pp.recipe(
            adata,
            min_genes=args.min_genes,
            min_cells=args.min_cells,
            target_sum=args.target_sum,
            n_top_genes=args.n_top_genes,
            n_comps=args.n_comps,
        )
        scdask.write_h5ad(adata, args.output)
    _log(f"[scdask] wrote {args.output}")
    return 0


def _activity(args: argparse.Namespace) -> int:
    import numpy as np

    import scdask

    with _engine(args.launcher) as client, progress_bar(client):
        res = scdask.activity.infer(
            scdask.read_h5ad(args.input),
            level=args.level,
            cell_type_col=args.cell_type_col,
            signature=args.signature,
            n_rand=args.n_rand,
            seed=args.seed,
            rng=args.rng,
            dtype=np.dtype(args.dtype),
        )
        scdask.write_h5ad(res, args.output)
    _log(f"[scdask] wrote {args.output}: {res.n_obs:,} samples x {res.n_vars:,} proteins")
    return 0


def _info(args: argparse.Namespace) -> int:
    import scdask

    print(scdask.io.inspect(args.input))
    return 0


def _convert(args: argparse.Namespace) -> int:
    import scdask

    with progress_bar(None):
        scdask.io.convert(args.input, args.output, layout=args.layout)
    _log(f"[scdask] wrote {args.output} ({args.layout.upper()})")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    import scdask

    t0 = time.perf_counter()
    path = scdask.datasets.synthetic(args.output, args.cells, n_genes=args.genes, seed=args.seed)
    _log(
        f"[scdask] wrote {path}: {args.cells:,} cells x {args.genes:,} genes "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _cluster(args: argparse.Namespace) -> int:
    import scdask.launch as launch

    if args.kind == "job-script":
        print(launch.job_script(args.profile))
        return 0
    if args.kind == "local":
        client = launch.local(n_workers=args.workers)
    elif args.kind == "cuda":
        client = launch.cuda()
    else:
        client = launch.slurm(args.profile, jobs=args.jobs)
    _log(f"[scdask] scheduler at {client.scheduler.address}; press Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


_COMMANDS = {
    "demo": _demo,
    "run": _run,
    "preprocess": _preprocess,
    "activity": _activity,
    "info": _info,
    "convert": _convert,
    "synthetic": _synthetic,
    "cluster": _cluster,
}


def _peak_rss_mib() -> float:
    """Peak resident memory of the calling process (a worker, when run through a client)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scdask`` command.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 ok, 2 bad usage or input, 1 unexpected failure.

    Examples
    --------
    >>> main(["info", "missing.h5ad"])  # doctest: +SKIP
    scdask: error: No such file: 'missing.h5ad'. Check the path (...)
    2
    """
    from scdask._pipeline import ConfigError
    from scdask.io import FileFormatError

    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (
        FileNotFoundError,
        FileFormatError,
        ConfigError,
        ValueError,
        KeyError,
        ImportError,
    ) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"scdask: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scdask: interrupted; no partial output was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
