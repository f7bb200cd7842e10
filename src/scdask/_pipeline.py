"""The main job: file → QC/preprocessing → activity inference → results and figures.

``scdask demo`` runs it on the bundled sample with a local cluster; ``scdask run CONFIG.yaml``
runs it on any file and any engine. The configuration is a plain mapping (YAML), validated
here so that a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import yaml

from scdask._errors import InputError

__all__ = ["DEFAULT_CONFIG", "load_config", "run_pipeline"]

#: Every key the pipeline understands, with its default. ``input: sample`` is the bundled data.
DEFAULT_CONFIG: dict[str, Any] = {
    "input": "sample",
    "output": "scdask-results",
    "chunk_size": "auto",
    "launcher": {"kind": "local", "options": {}},
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
    },
    "plots": True,
}

_LAUNCHERS = ("local", "cuda", "slurm", "connect", "none")


class ConfigError(InputError):
    """The run configuration names an unknown key or holds a bad value."""


def _merge(defaults: Mapping, given: Mapping, where: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'the config'}; known keys: {sorted(defaults)}"
        )
    merged = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if isinstance(defaults[key], Mapping) and key != "options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key} must be a mapping, got {value!r}")
            merged[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged


def load_config(source: str | os.PathLike | Mapping | None = None, **overrides: Any) -> dict:
    """Read and validate a run configuration (YAML file or mapping) over the defaults.

    Parameters
    ----------
    source
        A YAML file, a mapping, or ``None`` for the defaults (the bundled sample).
    **overrides
        Top-level keys that replace the file's (e.g. ``output=``).

    Returns
    -------
    dict
        The full configuration, every key present.

    Raises
    ------
    ConfigError
        An unknown key, or a value of the wrong kind.

    Examples
    --------
    >>> cfg = load_config({"activity": {"n_rand": 100}}, output="out")
    >>> cfg["activity"]["n_rand"], cfg["activity"]["signature"], cfg["output"]
    (100, 'secact', 'out')
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
            given = yaml.safe_load(f) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"{str(source)!r} must hold a YAML mapping, got {type(given).__name__}"
            )
    cfg = _merge(DEFAULT_CONFIG, {**given, **overrides}, "")
    kind = cfg["launcher"]["kind"]
    if kind not in _LAUNCHERS:
        raise ConfigError(f"launcher.kind must be one of {_LAUNCHERS}, got {kind!r}")
    levels = cfg["activity"]["levels"]
    bad = [lv for lv in levels if lv not in ("cell", "pseudobulk", "spot", "bulk")]
    if bad:
        raise ConfigError(f"activity.levels has unknown level(s) {bad}")
    if cfg["activity"]["dtype"] not in ("float64", "float32"):
        raise ConfigError("activity.dtype must be 'float64' or 'float32'")
    return cfg


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
        Optional context-manager factory wrapped around every step (a progress bar).

    Returns
    -------
    dict
        What was written: name → path.

    Examples
    --------
    >>> cfg = load_config(output="demo-out", activity={"levels": ["pseudobulk"], "n_rand": 50},
    ...                   launcher={"kind": "none"}, plots=False)
    >>> sorted(run_pipeline(cfg, log=lambda s: None))  # doctest: +SKIP
    ['activity_pseudobulk', 'cells']
    """
    import contextlib

    import scdask
    from scdask import activity, pp

    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    step = progress or (lambda name: contextlib.nullcontext())

    def timed(name: str, func: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log(f"[scdask] {name} ...")
        with step(name):
            result = func()
        log(f"[scdask] {name}: {time.perf_counter() - t0:.1f} s")
        return result

    src = scdask.datasets.sample_path() if cfg["input"] == "sample" else cfg["input"]
    counts = scdask.read_h5ad(src, chunk_size=cfg["chunk_size"])
    log(f"[scdask] input {src}: {counts.n_obs:,} cells x {counts.n_vars:,} genes")

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
        "cell_type_col": a["cell_type_col"],
        "n_rand": a["n_rand"],
        "seed": a["seed"],
        "rng": a["rng"],
        "dtype": np.dtype(a["dtype"]),
    }
    results: dict[str, ad.AnnData] = {}
    for level in a["levels"]:
        res = timed(
            f"activity ({level})", lambda level=level: activity.infer(kept, level=level, **common)
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
    return written


def _embed(adata: ad.AnnData) -> None:
    from scdask import pp

    pp.neighbors(adata)
    pp.umap(adata)
    pp.leiden(adata)


def _keep_layers(res: ad.AnnData, layers: list[str]) -> ad.AnnData:
    unknown = sorted(set(layers) - set(res.layers))
    if unknown:
        raise ConfigError(f"activity.layers: unknown layer(s) {unknown}; have {sorted(res.layers)}")
    for name in list(res.layers):
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

    ct = a["cell_type_col"] if a["cell_type_col"] in adata.obs else None
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
