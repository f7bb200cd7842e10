"""The main job: file → QC/preprocessing → activity inference → results and figures.

``scdask demo`` runs it on the bundled sample with a local cluster; ``scdask run CONFIG.yaml``
runs it on any file and any engine. The configuration is a plain mapping (YAML), validated
here so that a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import yaml

from scdask._compat import named_layers
from scdask._errors import InputError
from scdask._files import INCOMPLETE, MANIFEST, atomic_target, refuse_to_replace
from scdask.activity import LEVELS, RNG_METHODS, STATS
from scdask.activity._signature import BUNDLED_SIGNATURES

__all__ = [
    "DEFAULT_CONFIG",
    "FIGURES",
    "check_run",
    "detect_matrix",
    "load_config",
    "run_outputs",
    "run_pipeline",
]

#: Every key the pipeline understands, with its default. ``input: sample`` is the bundled data.
DEFAULT_CONFIG: dict[str, Any] = {
    "input": "sample",
    "output": "scdask-results",
    "chunk_size": "auto",
    "launcher": {"kind": "local", "options": {}},
    # where the counts and the gene symbols are; null: detected from the file (detect_matrix)
    "matrix": {"layer": None, "use_raw": None, "gene_symbols": None},
    "preprocess": {
        "min_genes": 200,
        "min_cells": 3,
        "target_sum": 1e4,
        "n_top_genes": 2000,
        "flavor": "seurat",
        "max_value": 10,
        "n_comps": 50,
        "umap": True,
    },
    "activity": {
        "levels": ["pseudobulk", "cell"],
        "cell_type_col": "cell_type",
        "signature": "secact",
        "n_rand": 1000,
        "seed": 0,
        "rng": "srand",
        "dtype": "float64",
        # layers written for per-cell/per-spot results (pseudobulk/bulk keep all four)
        "layers": ["beta", "se", "zscore", "pvalue"],
        # a two-column TSV (data gene -> signature gene), e.g. mouse -> human orthologs
        "gene_map": None,
    },
    "plots": True,
}

_LAUNCHERS = ("local", "cuda", "slurm", "connect", "none")


class ConfigError(InputError):
    """The run configuration names an unknown key or holds a bad value."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e4`` as a number (YAML 1.2's rule; PyYAML
    follows YAML 1.1, where a number in exponent form needs a dot and a signed exponent)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)

_FLAVORS = ("seurat", "cell_ranger")  # the HVG flavors pp.recipe runs within its passes
_NO = object()  # what a rule's accept() returns for a value it refuses


def _kind(value: Any) -> str:
    """A config value's kind, in the words of a YAML file."""
    if value is None:
        return "no value"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, numbers.Integral):
        return "whole number"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _show(value: Any) -> str:
    """A config value on one short line, spelled as in YAML where Python's spelling differs."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_real(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or math.isfinite(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and bool(value.strip()))


# Rule factories: each returns (what the value must be, accept), where accept(value) returns
# the value to use or _NO, or raises ConfigError itself where the value names a missing file.


def _whole(low: int) -> tuple[str, Callable[[Any], Any]]:
    def accept(value: Any) -> Any:
        whole = _is_real(value) and (
            isinstance(value, numbers.Integral) or float(value).is_integer()
        )
        return int(value) if whole and value >= low else _NO

    return f"a whole number >= {low}", accept


def _positive(*, null: bool = False) -> tuple[str, Callable[[Any], Any]]:
    def accept(value: Any) -> Any:
        if value is None and null:
            return None
        return float(value) if _is_real(value) and value > 0 else _NO

    return "a number > 0" + (" or null" if null else ""), accept


def _one_of(choices: tuple[str, ...]) -> tuple[str, Callable[[Any], Any]]:
    shown = ", ".join(map(repr, choices))
    return f"one of {shown}", lambda value: value if value in choices else _NO


def _some_of(choices: tuple[str, ...]) -> tuple[str, Callable[[Any], Any]]:
    def accept(value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        ok = (
            isinstance(items, list | tuple)
            and len(items) > 0
            and all(isinstance(item, str) and item in choices for item in items)
            and len(set(items)) == len(items)
        )
        return list(items) if ok else _NO

    shown = ", ".join(map(repr, choices))
    return f"one or more of {shown} (a list without repeats)", accept


_FLAG = ("true or false", lambda value: value if isinstance(value, bool) else _NO)
_WHOLE_1 = _whole(1)[1]


def _input(value: Any) -> Any:
    if value == "sample":
        return value
    if not _is_path(value):
        return _NO
    path = os.fspath(value)
    if not Path(path).exists():
        raise ConfigError(
            f"input: no such file or folder {path!r} (relative paths are read from the "
            f"current folder, {os.getcwd()}); fix the path, or write input: sample for the "
            "bundled data"
        )
    return path


def _output(value: Any) -> Any:
    if not _is_path(value):
        return _NO
    path = os.fspath(value)
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            f"output: {path!r} is a file, but results go into a folder; name a folder "
            "(it is created if missing)"
        )
    return path


def _options(value: Any) -> Any:
    if value is None:
        return {}
    ok = isinstance(value, Mapping) and all(isinstance(key, str) for key in value)
    return dict(value) if ok else _NO


def _columns(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    ok = (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(isinstance(col, str) and col for col in value)
        and len(set(value)) == len(value)
    )
    return list(value) if ok else _NO


def _name_or_null(value: Any) -> Any:
    return value if value is None or (isinstance(value, str) and value.strip()) else _NO


def _flag_or_null(value: Any) -> Any:
    return value if value is None or isinstance(value, bool) else _NO


def _gene_map(value: Any) -> Any:
    if value is None:
        return None
    if not _is_path(value):
        return _NO
    path = os.fspath(value)
    if Path(path).is_file():
        return path
    raise ConfigError(
        f"activity.gene_map: no such file {path!r} (relative paths are read from the current "
        f"folder, {os.getcwd()}); fix the path, or write gene_map: null"
    )


def _signature(value: Any) -> Any:
    if not _is_path(value):
        return _NO
    name = os.fspath(value)
    if name.lower() in BUNDLED_SIGNATURES or Path(name).is_file():
        return name
    raise ConfigError(
        f"activity.signature: {name!r} is neither one of {sorted(BUNDLED_SIGNATURES)} nor a "
        f"file (relative paths are read from the current folder, {os.getcwd()}); fix the "
        "path, or write signature: secact"
    )


#: One rule per setting: its key, what its value must be, accept(value) (the value to use,
#: or _NO), and the example a refusal ends with. load_config applies them in this order.
_RULES: tuple[tuple[str, str, Callable[[Any], Any], str], ...] = (
    ("input", "'sample' or the path of a .h5ad or .zarr", _input, "e.g. input: atlas.h5ad"),
    ("output", "a folder path", _output, "e.g. output: results"),
    (
        "chunk_size",
        "'auto' or a whole number >= 1 (cells per block)",
        lambda value: value if value == "auto" else _WHOLE_1(value),
        "e.g. chunk_size: auto",
    ),
    ("launcher.kind", *_one_of(_LAUNCHERS), "e.g. kind: local"),
    (
        "launcher.options",
        "a mapping of option names to values",
        _options,
        "e.g. options: {n_workers: 4}",
    ),
    ("plots", *_FLAG, "write plots: true or plots: false"),
    (
        "matrix.layer",
        "a layer name or null",
        _name_or_null,
        "e.g. layer: counts (null: detected from the file)",
    ),
    (
        "matrix.use_raw",
        "true, false or null",
        _flag_or_null,
        "e.g. use_raw: true (null: detected from the file)",
    ),
    (
        "matrix.gene_symbols",
        "a var column name or null",
        _name_or_null,
        "e.g. gene_symbols: feature_name (null: detected from the file)",
    ),
    ("preprocess.min_genes", *_whole(0), "e.g. min_genes: 200"),
    ("preprocess.min_cells", *_whole(0), "e.g. min_cells: 3"),
    ("preprocess.target_sum", *_positive(), "e.g. target_sum: 1e4"),
    ("preprocess.n_top_genes", *_whole(1), "e.g. n_top_genes: 2000"),
    (
        "preprocess.flavor",
        *_one_of(_FLAVORS),
        "e.g. flavor: seurat (other flavors: run scdask.pp.highly_variable_genes yourself)",
    ),
    ("preprocess.max_value", *_positive(null=True), "e.g. max_value: 10 (null: no clipping)"),
    ("preprocess.n_comps", *_whole(1), "e.g. n_comps: 50"),
    ("preprocess.umap", *_FLAG, "write umap: true or umap: false"),
    ("activity.levels", *_some_of(LEVELS), "e.g. levels: [pseudobulk, cell]"),
    (
        "activity.cell_type_col",
        "an obs column name, a list of them, or null",
        _columns,
        "e.g. cell_type_col: cell_type",
    ),
    (
        "activity.signature",
        "'secact', 'cytosig' or a file path",
        _signature,
        "e.g. signature: secact",
    ),
    ("activity.n_rand", *_whole(0), "e.g. n_rand: 1000"),
    ("activity.seed", *_whole(0), "e.g. seed: 0"),
    ("activity.rng", *_one_of(RNG_METHODS), "e.g. rng: srand"),
    ("activity.dtype", *_one_of(("float64", "float32")), "e.g. dtype: float64"),
    ("activity.layers", *_some_of(STATS), "e.g. layers: [zscore, pvalue]"),
    (
        "activity.gene_map",
        "null or the path of a two-column tab-separated file",
        _gene_map,
        "e.g. gene_map: mouse_to_human.tsv",
    ),
)


def _refusal(key: str, want: str, value: Any, accept: Callable[[Any], Any], example: str) -> str:
    """The one-line message for a refused value: key, rule, value, its kind and the fix."""
    fix = example
    if isinstance(value, str) and value.strip() and "\n" not in value:
        try:  # text that would be accepted without its quotes ('100', 'true', 'null')
            bare = yaml.load(value, Loader=_Loader)  # _Loader is a SafeLoader
            if not isinstance(bare, str) and accept(bare) is not _NO:
                fix = f"write it without quotes: {key.rsplit('.', 1)[-1]}: {value.strip()}"
        except (yaml.YAMLError, ConfigError):
            pass
    return f"{key} must be {want}, got {_show(value)} ({_kind(value)}); {fix}"


def _merge(defaults: Mapping, given: Mapping, where: str) -> dict:
    unknown = sorted(set(given) - set(defaults), key=str)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'the config'}; known keys: {sorted(defaults)}"
        )
    merged = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if isinstance(defaults[key], Mapping) and key != "options":
            if value is None:  # a section left empty keeps its defaults
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{where}{key} must be a mapping of settings, got {_show(value)} "
                    f"({_kind(value)}); write them indented below '{key}:' (known keys: "
                    f"{sorted(defaults[key])})"
                )
            merged[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged


def load_config(source: str | os.PathLike | Mapping | None = None, **overrides: Any) -> dict:
    """Read and validate a run configuration (YAML file or mapping) over the defaults.

    Every setting is checked here, before any work starts: a wrong value is a one-line
    :class:`ConfigError` naming the setting, the value, its kind and the fix.

    Parameters
    ----------
    source
        A YAML file, a mapping, or ``None`` for the defaults (the bundled sample).
    **overrides
        Top-level keys that replace the file's (e.g. ``output=``).

    Returns
    -------
    dict
        The full configuration, every key present, each value in the form listed below.

    Raises
    ------
    FileNotFoundError
        ``source`` names no file.
    ConfigError
        The file is not YAML or not a mapping; an unknown key; a value of the wrong kind,
        out of range or not one of the choices; an input or signature file that is missing.

    Notes
    -----
    The rules, checked in this order (defaults in ``DEFAULT_CONFIG``):

    * ``input``: ``sample`` (the bundled data) or the path of an existing ``.h5ad`` or
      ``.zarr``; a relative path is read from the current folder, not the config file's.
    * ``output``: a folder path (created if missing; an existing file is refused).
    * ``chunk_size``: ``auto`` or a whole number >= 1 (cells per block).
    * ``launcher.kind``: ``local``, ``cuda``, ``slurm``, ``connect`` or ``none``;
      ``launcher.options``: a mapping of option names (null is an empty one).
    * ``plots``, ``preprocess.umap``: true or false.
    * ``matrix``: where the counts and the gene symbols are, for every step.
      ``matrix.layer``: a layer name or null; ``matrix.use_raw``: true, false or null;
      not ``layer`` with ``use_raw: true``. ``matrix.gene_symbols``: a ``var`` column
      name or null (the column of gene symbols, used for the mt/ribo/hb rules of the QC
      and matched to the signature). null (the default) is detected from the file by
      :func:`detect_matrix`: counts from ``X`` unless ``X`` does not hold counts and a
      layer named like counts or ``raw.X`` does (CELLxGENE files); symbols from a column
      such as ``feature_name`` when the gene names are Ensembl IDs. A value set here
      replaces what would be detected.
    * ``preprocess.min_genes``, ``min_cells``: whole numbers >= 0; ``n_top_genes``,
      ``n_comps``: whole numbers >= 1; ``target_sum``: a number > 0; ``max_value``: a
      number > 0, or null for no clipping; ``flavor``: ``seurat`` or ``cell_ranger`` (the
      flavors :func:`scdask.pp.recipe` runs in its passes).
    * ``activity.levels``: one or more of ``cell``, ``pseudobulk``, ``spot``, ``bulk``, no
      repeats; ``activity.layers``: one or more of ``beta``, ``se``, ``zscore``,
      ``pvalue``, no repeats. A single name (``levels: pseudobulk``) is a one-item list.
    * ``activity.cell_type_col``: an ``obs`` column name, a list of them (pseudobulk
      groups are then their combinations, named ``"D1|T cells"``), or null; null is
      refused when ``levels`` holds ``pseudobulk``, which groups cells by it.
    * ``activity.signature``: ``secact``, ``cytosig`` (any case) or an existing file.
    * ``activity.gene_map``: null or an existing two-column tab-separated file (data
      gene -> signature gene, e.g. mouse -> human orthologs; see
      :func:`scdask.activity.infer`).
    * ``activity.n_rand``, ``seed``: whole numbers >= 0; ``rng``: ``srand``, ``gsl`` or
      ``numpy``; ``dtype``: ``float64`` or ``float32``.

    Numbers: true/false is not a number (``n_rand: true`` is refused); a whole float
    (``200.0``, ``1e3``) is accepted where a whole number is wanted and becomes an int, a
    fraction (``200.5``) is refused; NaN and infinity are refused. Text is never read as a
    number (``n_rand: "100"`` is refused, and the message says to drop the quotes), but a
    YAML file may write numbers in exponent form: ``target_sum: 1e4`` is read as 10000.0
    here (YAML 1.2's rule; YAML 1.1 readers take it as text). A section left empty
    (``preprocess:`` with nothing below) keeps its defaults; an unknown key is refused with
    the known keys listed.

    Examples
    --------
    >>> cfg = load_config({"activity": {"n_rand": 100}}, output="out")
    >>> cfg["activity"]["n_rand"], cfg["activity"]["signature"], cfg["output"]
    (100, 'secact', 'out')
    >>> load_config({"activity": {"levels": "pseudobulk"}})["activity"]["levels"]
    ['pseudobulk']
    >>> load_config({"preprocess": {"min_genes": 200.0}})["preprocess"]["min_genes"]
    200
    >>> load_config({"activity": {"n_rand": "100"}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scdask._pipeline.ConfigError: activity.n_rand must be a whole number >= 0, got '100' (text); ...
    >>> load_config({"activity": {"levels": ["pseudobulk", "tissue"]}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scdask._pipeline.ConfigError: activity.levels must be one or more of 'cell', ... got [...]
    """
    if source is None:
        given: Mapping = {}
    elif isinstance(source, Mapping):
        given = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"No such config file: {str(source)!r}.")
        with path.open() as f:
            try:
                given = yaml.load(f, Loader=_Loader) or {}  # a SafeLoader
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = " ".join(str(getattr(e, "problem", None) or "bad syntax").split())
                raise ConfigError(
                    f"{str(source)!r} is not valid YAML: {problem}{where}; indent with spaces "
                    "and write one 'key: value' per line"
                ) from None
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"{str(source)!r} must hold a YAML mapping of settings (key: value lines), "
                f"got {_kind(given)}"
            )
    cfg = _merge(DEFAULT_CONFIG, {**given, **overrides}, "")
    for key, want, accept, example in _RULES:
        *sections, leaf = key.split(".")
        section = cfg
        for name in sections:
            section = section[name]
        value = section[leaf]
        if isinstance(value, np.generic):  # numpy scalars from Python callers
            value = value.item()
        checked = accept(value)
        if checked is _NO:
            raise ConfigError(_refusal(key, want, value, accept, example))
        section[leaf] = checked
    m = cfg["matrix"]
    if m["layer"] is not None and m["use_raw"]:
        raise ConfigError(
            f"matrix.layer is {m['layer']!r} and matrix.use_raw is true, but the counts are "
            "in one place: keep one of them (write the other as null)"
        )
    a = cfg["activity"]
    if "pseudobulk" in a["levels"] and a["cell_type_col"] is None:
        raise ConfigError(
            "activity.cell_type_col is null, but level 'pseudobulk' sums cells per type; name "
            "the obs column of cell types (e.g. cell_type_col: cell_type) or drop pseudobulk "
            "from activity.levels"
        )
    return cfg


def detect_matrix(
    adata: ad.AnnData,
    path: str | os.PathLike | None,
    given: Mapping[str, Any] | None = None,
    *,
    source: str = "config",
) -> tuple[dict[str, Any], str]:
    """Where the counts and the gene symbols of ``adata`` (read from ``path``) are.

    What ``given`` sets (``layer``, ``use_raw``, ``gene_symbols``; ``None`` for unset) is
    kept; the rest is detected cheaply, from the first stored values of the file's
    matrices (:func:`scdask.io._tools.looks_like_counts`) and the gene names:

    * the counts are ``X``, unless ``X`` does not look like counts (log-normalised,
      scaled) and a layer named like ``counts`` or else ``raw.X`` does: then that one
      (the CELLxGENE layout: normalised ``X``, counts in ``raw.X``);
    * the gene symbols are ``var_names``, unless most of the names of the chosen matrix's
      genes are Ensembl IDs (``ENSG…``, ``ENSMUSG…``) and ``var`` has a column
      ``feature_name``, ``gene_symbols``, ``gene_name``, ``gene_symbol`` or ``symbol``.

    Returns the keyword arguments for :func:`scdask.pp.recipe` and
    :func:`scdask.activity.infer` (``layer``, ``use_raw``, ``gene_symbols``) and the one
    line that says what was used. ``source`` names where ``given`` came from, for that
    line.

    Raises
    ------
    scdask.InputError
        ``given`` sets both ``layer`` and ``use_raw=True``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> detect_matrix(adata, scdask.datasets.sample_path())
    ({'layer': None, 'use_raw': False, 'gene_symbols': None}, '[scdask] counts from X; gene symbols from var_names')
    """
    from scdask.io._tools import looks_like_counts
    from scdask.preprocessing._blocks import matrix_name, symbol_column

    given = dict(given or {})
    layer, use_raw, symbols = (given.get(k) for k in ("layer", "use_raw", "gene_symbols"))
    if layer is not None and use_raw:
        raise InputError(
            f"the {source} sets both layer ({layer!r}) and use_raw: the counts are in one "
            "place; keep one of them"
        )
    why = ""
    if layer is not None or use_raw is not None:
        why = f" (set by the {source})"
        use_raw = bool(use_raw)
    else:
        use_raw = False
        if path is not None and looks_like_counts(path, "X") is False:
            why = " (X is not counts, and no layer named like counts nor raw.X is)"
            candidates = [(k, f"layers/{k}") for k in named_layers(adata) if "count" in k.lower()]
            if adata.raw is not None:
                candidates.append((None, "raw/X"))
            for name, key in candidates:
                if looks_like_counts(path, key):
                    layer, use_raw = name, name is None
                    why = " (X is not counts)"
                    break
    if symbols is not None:
        shown = f"var[{symbols!r}] (set by the {source})"
    else:
        genes = adata.raw.var if use_raw and adata.raw is not None else adata.var
        symbols = symbol_column(genes, adata.var)
        shown = "var_names" if symbols is None else f"var[{symbols!r}] (var_names are Ensembl IDs)"
    where = matrix_name(layer=layer, use_raw=use_raw)
    line = f"[scdask] counts from {where}{why}; gene symbols from {shown}"
    return {"layer": layer, "use_raw": use_raw, "gene_symbols": symbols}, line


def start_engine(launcher: Mapping) -> Any:
    """Start (or join) the engine a configuration names; ``None`` for ``kind: none``.

    Examples
    --------
    >>> start_engine({"kind": "none", "options": {}}) is None
    True
    """
    import scdask.launch as launch

    kind, options = launcher["kind"], dict(launcher.get("options") or {})
    if kind == "none":
        return None
    if kind == "connect":
        address = options.pop("address", None)
        if not address:
            raise ConfigError("launcher.kind 'connect' needs launcher.options.address")
        return launch.connect(address, **options)
    return getattr(launch, kind)(**options)


def run_pipeline(
    cfg: Mapping, *, log: Callable[[str], None] = print, progress: Callable | None = None
) -> dict[str, Path]:
    """Run QC → preprocessing → activity inference and write results and figures.

    Parameters
    ----------
    cfg
        A configuration from :func:`load_config`.
    log
        Where progress lines go.
    progress
        Optional context-manager factory called with each step's name and wrapped around
        the step, such as :func:`scdask._progress.step` (what the ``scdask`` command uses).

    Returns
    -------
    dict
        What was written: name → path.

    Raises
    ------
    scdask.InputError
        Before any work: a file the run would write (:func:`run_outputs`) is the input, a
        link to it, or inside it.

    Notes
    -----
    The output folder is marked unfinished (a file named ``INCOMPLETE``) from the start,
    and a previous run's ``manifest.json`` there is removed; the run writes
    ``manifest.json`` (files, sizes, configuration) last and then removes the marker. A
    run that fails or is stopped half-way leaves the marker, so none of its files passes
    for a finished result (``scdask info`` says so).

    Examples
    --------
    >>> cfg = load_config(output="demo-out", activity={"levels": ["pseudobulk"], "n_rand": 50},
    ...                   launcher={"kind": "none"}, plots=False)
    >>> sorted(run_pipeline(cfg, log=lambda s: None))  # doctest: +SKIP
    ['activity_pseudobulk', 'cells']
    """

    import scdask
    from scdask import activity, pp

    src = check_run(cfg)
    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)
    # the folder is unfinished from here until the manifest is written, last
    (out / MANIFEST).unlink(missing_ok=True)
    (out / INCOMPLETE).write_text(
        f"scdask run started {time.strftime('%Y-%m-%d %H:%M:%S')} and has not finished: the "
        f"files in this folder are not a finished result. A finished run writes {MANIFEST} "
        "and removes this file.\n"
    )
    written: dict[str, Path] = {}

    def timed(name: str, func: Callable[[], Any]) -> Any:
        log(f"[scdask] {name} ...")
        if progress is not None:  # the step reports, and closes with its time
            with progress(name):
                return func()
        t0 = time.perf_counter()
        result = func()
        log(f"[scdask] {name}: {time.perf_counter() - t0:.1f} s")
        return result

    counts = scdask.read(src, chunk_size=cfg["chunk_size"])
    log(f"[scdask] input {src}: {counts.n_obs:,} cells x {counts.n_vars:,} genes")
    where, line = detect_matrix(counts, src, cfg["matrix"])
    log(line)

    p = cfg["preprocess"]
    adata = timed(
        "QC + preprocessing (recipe)",
        lambda: pp.recipe(
            counts,
            min_genes=p["min_genes"],
            min_cells=p["min_cells"],
            target_sum=p["target_sum"],
            n_top_genes=p["n_top_genes"],
            flavor=p["flavor"],
            max_value=p["max_value"],
            n_comps=p["n_comps"],
            **where,
            copy=True,
            verbose=False,
        ),
    )
    log(
        f"[scdask] kept {adata.n_obs:,} cells, {int(adata.var['highly_variable'].sum()):,} "
        f"highly variable genes; {adata.uns['recipe']['passes']} passes over X"
    )
    if p["umap"]:
        timed("neighbors + UMAP + Leiden", lambda: _embed(adata))

    a = cfg["activity"]
    kept = counts[adata.obs_names]
    common = {
        "signature": a["signature"],
        "n_rand": a["n_rand"],
        "seed": a["seed"],
        "rng": a["rng"],
        "dtype": np.dtype(a["dtype"]),
        "gene_map": a["gene_map"],
        **where,
    }
    results: dict[str, ad.AnnData] = {}
    for level in a["levels"]:
        groups = {"cell_type_col": a["cell_type_col"]} if level == "pseudobulk" else {}
        res = timed(
            f"activity ({level})",
            lambda level=level, groups=groups: activity.infer(
                kept, level=level, **groups, **common
            ),
        )
        if level in ("cell", "spot"):  # per-cell results can be large; group results are small
            res = _keep_layers(res, a["layers"])
        path = out / f"activity_{level}.h5ad"
        timed(f"write {path.name}", lambda res=res, path=path: scdask.write_h5ad(res, path))
        written[f"activity_{level}"] = path
        # figures read the written result: a lazy one would run the inference again
        results[level] = scdask.read_h5ad(path) if level in ("cell", "spot") else res

    cells = ad.AnnData(obs=adata.obs, var=adata.var, obsm=dict(adata.obsm), uns=dict(adata.uns))
    cells_path = out / "cells.h5ad"
    scdask.write_h5ad(cells, cells_path)
    written["cells"] = cells_path

    if cfg["plots"]:
        written.update(timed("figures", lambda: _figures(adata, results, a, out)))
    _finish(out, written, cfg)
    return written


#: Figures a run may write (``NAME.png``), so that the outputs are known before it starts.
FIGURES = (
    "qc",
    "hvg",
    "pca",
    "umap",
    "activity_heatmap",
    "volcano",
    "umap_activity",
    "pca_activity",
)


def run_outputs(cfg: Mapping) -> list[Path]:
    """Every path a run with ``cfg`` may write, known before it starts.

    Examples
    --------
    >>> [p.name for p in run_outputs(load_config(activity={"levels": "cell"}, plots=False))]
    ['activity_cell.h5ad', 'cells.h5ad', 'manifest.json', 'INCOMPLETE']
    """
    out = Path(cfg["output"])
    names = [f"activity_{level}.h5ad" for level in cfg["activity"]["levels"]]
    names += ["cells.h5ad", MANIFEST, INCOMPLETE]
    if cfg["plots"]:
        names += [f"{name}.png" for name in FIGURES]
    return [out / name for name in names]


def check_run(cfg: Mapping) -> Path:
    """The input of a run, after checking that no file the run may write would replace it
    (:func:`run_outputs`; raises :class:`scdask.InputError`). Nothing is read or written.

    Examples
    --------
    >>> check_run(load_config()).name
    'celltypist_sample_counts.h5ad'
    """
    from scdask.datasets import sample_path

    src = Path(sample_path() if cfg["input"] == "sample" else cfg["input"])
    refuse_to_replace(run_outputs(cfg), [src], replaces_folder=False)
    return src


def _finish(out: Path, written: Mapping[str, Path], cfg: Mapping) -> None:
    """Write the manifest (the finished files, their sizes, the configuration), then drop
    the INCOMPLETE marker: a folder with a manifest and no marker is a finished run."""
    import scdask

    manifest = {
        "scdask": scdask.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {
            name: {"path": path.name, "bytes": path.stat().st_size}
            for name, path in written.items()
        },
        "config": cfg,
    }
    with atomic_target(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    (out / INCOMPLETE).unlink(missing_ok=True)


def _embed(adata: ad.AnnData) -> None:
    from scdask import pp

    pp.neighbors(adata)
    pp.umap(adata)
    pp.leiden(adata)


def _keep_layers(res: ad.AnnData, layers: list[str]) -> ad.AnnData:
    unknown = sorted(set(layers) - set(named_layers(res)))
    if unknown:
        raise ConfigError(
            f"activity.layers: unknown layer(s) {unknown}; have {sorted(named_layers(res))}"
        )
    for name in list(named_layers(res)):
        if name not in layers:
            del res.layers[name]
    return res


def _figures(adata: ad.AnnData, results: Mapping, a: Mapping, out: Path) -> dict[str, Path]:
    from scdask import plotting
    from scdask.activity import to_frames

    figs: dict[str, Path] = {}

    def save(name: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        path = out / f"{name}.png"
        func(*args, save=path, **kwargs)
        figs[f"figure_{name}"] = path

    # several grouping columns (donor, type): colour by the last one, the finest-grained
    columns = a["cell_type_col"]
    column = columns[-1] if isinstance(columns, list) else columns
    ct = column if column is not None and column in adata.obs else None
    save("qc", plotting.qc, adata, groupby=ct)
    save("hvg", plotting.hvg, adata)
    save("pca", plotting.embedding, adata, basis="pca", color=ct)
    if "X_umap" in adata.obsm:
        save("umap", plotting.embedding, adata, basis="umap", color=ct)
    pb = results.get("pseudobulk")
    if pb is not None and "zscore" in pb.layers and "pvalue" in pb.layers:
        frames = to_frames(pb)
        z, pv = frames["zscore"], frames["pvalue"]
        save("activity_heatmap", plotting.activity_heatmap, z)
        group = z.columns[0]
        save("volcano", plotting.volcano, z[group], pv[group])
        top = z.abs().max(axis=1).idxmax()
        cell = results.get("cell")
        basis = "umap" if "X_umap" in adata.obsm else "pca"
        if cell is not None and "zscore" in cell.layers:
            save(
                f"{basis}_activity",
                plotting.embedding,
                adata,
                basis=basis,
                color=top,
                values=cell,
                layer="zscore",
                title=f"{top} activity (z)",
            )
    return figs
