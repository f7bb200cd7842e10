"""The ``scdask`` command: the main job, single steps, file tools and clusters.

Exit codes: 0 success; 2 bad usage or bad input (one clear line on stderr, no traceback
unless ``--debug``); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from scdask._errors import InputError
from scdask._pipeline import DEFAULT_CONFIG
from scdask.activity import LEVELS, RNG_METHODS

__all__ = ["main"]

_EPILOG = {
    "demo": "example:\n  scdask demo --out scdask-demo",
    "run": "example:\n  scdask run config.yaml --out results\n\n"
    "config.yaml (every key optional):\n"
    "  input: atlas.h5ad\n  output: results\n"
    "  launcher: {kind: slurm, options: {profile: cpu, jobs: 4}}\n"
    "  matrix: {use_raw: true, gene_symbols: feature_name}   # null/absent: detected\n"
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
    parser = _Parser(
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
            formatter_class=_Help,
        )

    launcher_help = (
        "engine: local (default), cuda, none (threads in this process), slurm[:PROFILE], "
        "a scheduler address (tls://host:8786) or a scheduler file"
    )

    def add_matrix_options(p: argparse.ArgumentParser) -> None:
        """--layer / --use-raw / --gene-symbols: where the counts and the symbols are."""
        p.add_argument(
            "--layer",
            default=None,
            help="layer that holds the counts (default: detected: X, or a layer named like "
            "counts or raw.X when X is not counts)",
        )
        p.add_argument(
            "--use-raw",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="read the counts from raw.X (--no-use-raw: from X) (default: detected, as "
            "for --layer)",
        )
        p.add_argument(
            "--gene-symbols",
            default=None,
            metavar="COLUMN",
            help="var column of gene symbols, for the mt/ribo/hb QC rules and the signature "
            "(default: detected: feature_name, gene_symbols, ... when var_names are "
            "Ensembl IDs, else var_names)",
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
    p.add_argument("input", help=".h5ad file or zarr store of raw counts (cells x genes)")
    p.add_argument(
        "output", help=".h5ad to write (log-normalised X, QC and HVG columns, X_pca); new path"
    )
    p.add_argument(
        "--min-genes", type=_whole(0), default=200, help="keep cells with at least this many genes"
    )
    p.add_argument(
        "--min-cells", type=_whole(0), default=3, help="keep genes seen in at least this many cells"
    )
    p.add_argument(
        "--target-sum", type=_positive, default=1e4, help="counts per cell after normalisation"
    )
    p.add_argument(
        "--n-top-genes", type=_whole(1), default=2000, help="highly variable genes kept for PCA"
    )
    p.add_argument("--n-comps", type=_whole(1), default=50, help="principal components")
    add_matrix_options(p)
    p.add_argument("--launcher", type=_launcher, default="local", help=launcher_help)

    p = add(
        "activity",
        "SecAct activity inference (ridge regression + permutation test) from counts.\n\n"
        "levels:\n"
        "  cell        one result per cell: log2(1 + 1e5 x / library), centred per gene\n"
        "  pseudobulk  one result per group of --cell-type-col: counts summed per group,\n"
        "              CPM, log2, centred on the mean over groups (needs 2+ groups)\n"
        "  spot        one result per spatial spot (as cell, genes without counts dropped)\n"
        "  bulk        one result per sample of a bulk profile (X as samples x genes)",
    )
    p.add_argument("input", help=".h5ad file or zarr store of raw counts (cells x genes)")
    p.add_argument(
        "output",
        help=".h5ad to write (obs = samples, var = proteins, layers beta/se/zscore/"
        "pvalue); a new path",
    )
    p.add_argument("--level", default="cell", choices=LEVELS, help="what one result row is")
    p.add_argument(
        "--cell-type-col",
        nargs="+",
        default=DEFAULT_CONFIG["activity"]["cell_type_col"],
        metavar="COLUMN",
        help="obs column whose values are the pseudobulk groups (pseudobulk only); several "
        "columns group by their combination (--cell-type-col donor_id cell_type: groups "
        "such as 'D1|T cells')",
    )
    p.add_argument("--signature", default="secact", help="secact, cytosig or a TSV file")
    p.add_argument(
        "--n-rand", type=_whole(0), default=1000, help="permutations (0: a t-test instead)"
    )
    p.add_argument("--seed", type=_whole(0), default=0, help="seed of the permutation table")
    p.add_argument(
        "--rng", default="srand", choices=RNG_METHODS, help="generator of the permutation table"
    )
    p.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="float64 reproduces secactpy; float32 is about 2x faster (z within ~1e-4)",
    )
    add_matrix_options(p)
    p.add_argument(
        "--gene-map",
        default=None,
        metavar="TSV",
        help="two-column tab-separated file renaming genes before they are matched to the "
        "signature (data gene -> signature gene, e.g. mouse -> human orthologs) (default: "
        "none; genes keep their names)",
    )
    p.add_argument("--launcher", type=_launcher, default="local", help=launcher_help)

    p = add(
        "info",
        "shape, layout, density, columns and I/O estimate of a file, and what to fix first "
        "(not counts, NaN, negatives, repeated names, CSC), from the first rows of X only",
    )
    p.add_argument("input")

    p = add("convert", "rewrite a file with CSR or CSC X, with bounded memory")
    p.add_argument("input", help=".h5ad file or zarr store")
    p.add_argument("output", help="a new path; a name ending in .zarr writes a zarr store")
    p.add_argument(
        "--layout",
        default="csr",
        choices=["csr", "csc"],
        help="csr: cells are rows, what every scdask pass reads fast",
    )

    p = add("synthetic", "write a realistic synthetic atlas (fitted on the bundled sample)")
    p.add_argument("output", help=".h5ad to write")
    p.add_argument("--cells", type=_whole(1), required=True, help="number of cells")
    p.add_argument("--genes", type=_whole(1), default=20000, help="number of genes")
    p.add_argument("--seed", type=_whole(0), default=0, help="random seed")

    p = add("cluster", "start a cluster and keep it running, or print a SLURM job script")
    p.add_argument("kind", choices=["local", "cuda", "slurm", "job-script"], help="what to start")
    p.add_argument(
        "--workers", type=_whole(1), default=None, help="local: worker processes (default: cores)"
    )
    p.add_argument("--profile", default=None, help="slurm: site profile name")
    p.add_argument("--jobs", type=_whole(1), default=1, help="slurm: jobs to submit")
    return parser


def _whole(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum, {minimum}")
        return value

    parse.__name__ = "whole number"
    return parse


def _positive(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the problem, and where the help is)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written; every option's default shown in its help (an
    option without a value by default says in words what happens, e.g. detected)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None and "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
    from scdask._pipeline import check_run, run_pipeline
    from scdask._progress import step

    check_run(cfg)  # before the engine starts
    t0 = time.perf_counter()
    with _engine(cfg["launcher"]) as client:
        written = run_pipeline(cfg, log=_log, progress=step)
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
    from scdask._progress import step

    _check_output(args.output, args.input)
    with _engine(args.launcher), step(f"preprocess {args.input}"):
        adata = _open(args.input)
        where = _where(adata, args)
        scdask.pp.recipe(
            adata,
            min_genes=args.min_genes,
            min_cells=args.min_cells,
            target_sum=args.target_sum,
            n_top_genes=args.n_top_genes,
            n_comps=args.n_comps,
            **where,
        )
        scdask.write_h5ad(adata, args.output)
    _log(f"[scdask] wrote {args.output}")
    return 0


def _activity(args: argparse.Namespace) -> int:
    import numpy as np

    import scdask
    from scdask._progress import step

    _check_output(args.output, args.input)
    columns = args.cell_type_col
    if isinstance(columns, list) and len(columns) == 1:
        columns = columns[0]
    with _engine(args.launcher), step(f"activity ({args.level}) {args.input}"):
        adata = _open(args.input)
        if args.level == "bulk":  # X is the bulk profile: nothing to detect
            where = {k: getattr(args, k) for k in ("layer", "use_raw", "gene_symbols")}
        else:
            where = _where(adata, args)
        res = scdask.activity.infer(
            adata,
            level=args.level,
            cell_type_col=columns if args.level == "pseudobulk" else None,
            signature=args.signature,
            n_rand=args.n_rand,
            seed=args.seed,
            rng=args.rng,
            dtype=np.dtype(args.dtype),
            gene_map=args.gene_map,
            **where,
        )
        scdask.write_h5ad(res, args.output)
    _log(f"[scdask] wrote {args.output}: {res.n_obs:,} samples x {res.n_vars:,} proteins")
    return 0


def _where(adata, args: argparse.Namespace) -> dict[str, Any]:
    """--layer/--use-raw/--gene-symbols, the rest detected from the file; says which."""
    from scdask._pipeline import detect_matrix

    given = {k: getattr(args, k) for k in ("layer", "use_raw", "gene_symbols")}
    where, line = detect_matrix(adata, args.input, given, source="command line")
    _log(line)
    return where


def _check_output(output: str, source: str) -> None:
    """Before any work: the output's folder exists and writing it replaces no input."""
    from scdask._files import refuse_to_replace

    folder = Path(output).expanduser().absolute().parent
    if not folder.is_dir():
        raise InputError(f"cannot write {output!r}: the folder {str(folder)!r} does not exist")
    refuse_to_replace([output], [source])


def _open(path: str):
    """A lazy AnnData from any file or folder :func:`scdask.read` takes."""
    import scdask

    return scdask.read(path)


def _info(args: argparse.Namespace) -> int:
    import scdask
    from scdask.io._dispatch import is_anndata_store

    if not Path(args.input).expanduser().exists() or is_anndata_store(args.input):
        print(scdask.io.inspect(args.input))
        return 0
    adata = _open(args.input)  # 10x .h5, mtx folder or Space Ranger folder
    print(
        f"{args.input} (10x counts, read lazily by scdask.read)\n"
        f"  X:      {adata.n_obs:,} cells x {adata.n_vars:,} genes\n"
        f"  obs:    {', '.join(adata.obs.columns) or 'no columns'}\n"
        f"  var:    {', '.join(adata.var.columns) or 'no columns'}\n"
        f"  obsm:   {', '.join(adata.obsm) or 'none'}\n"
        f"  note:   every scdask command reads it as it is; for repeated runs, convert once: "
        f"scdask convert {args.input} counts.h5ad"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    import scdask
    from scdask._progress import step

    _check_output(args.output, args.input)
    with step(f"convert {args.input}"):
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every writer cleans up as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM (``kill``, ``scancel``) unwinds like Ctrl-C: temporary files are
    removed and an unfinished run folder keeps its INCOMPLETE marker."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scdask`` command.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 ok; 2 bad usage or bad input (:class:`scdask.InputError`, a
        missing or unwritable file, a missing extra), one line on stderr; 1 anything
        unexpected (a bug: one line, ``--debug`` shows the traceback); 130 after Ctrl-C,
        143 after SIGTERM (files being written are removed either way).

    Examples
    --------
    >>> main(["info", "missing.h5ad"])
    2
    """
    args = _parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return _COMMANDS[args.command](args)
    except (InputError, OSError, KeyError, ImportError) as e:
        if args.debug:
            raise
        print(f"scdask: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "stopped by SIGTERM" if isinstance(e, _Terminated) else "interrupted"
        print(
            f"scdask: {what}; files being written were removed (a run's output folder "
            "keeps its INCOMPLETE marker)",
            file=sys.stderr,
        )
        return 143 if isinstance(e, _Terminated) else 130
    except Exception as e:
        if args.debug:
            raise
        print(
            f"scdask: unexpected error ({type(e).__name__}): {_one_line(e)}; this is a bug in "
            "scdask: rerun with --debug and report the traceback",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
