"""QC and highly-variable-gene plots.

Plots read small columns of ``obs``/``var`` only; they never touch ``X``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scdask._errors import InputError
from scdask.plotting._figure import (
    GREY,
    categories_of,
    finish,
    frame_of,
    new_figure,
    require_columns,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["hvg", "qc"]


_QC_WRITER = "run scdask.pp.calculate_qc_metrics first"
_HVG_WRITER = "run scdask.pp.highly_variable_genes first"


# -- QC -----------------------------------------------------------------------------------
def _density(data: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed histogram density of ``data`` at ``coords`` (linear in ``data.size``).

    A binned kernel density estimate with Scott's bandwidth: cheap for millions of cells,
    where an exact KDE costs ``len(data) * len(coords)``.
    """
    lo, hi = float(coords[0]), float(coords[-1])
    if hi <= lo:
        return np.ones_like(coords, dtype=float)
    n_bins = 512
    counts, edges = np.histogram(data, bins=n_bins, range=(lo, hi))
    width = edges[1] - edges[0]
    q75, q25 = np.percentile(data, [75, 25])
    spread = float(np.std(data))
    scale = min(spread, (q75 - q25) / 1.34) if q75 > q25 else spread
    sigma = 1.06 * scale * data.size ** (-0.2) / width  # bandwidth in bins
    density = counts.astype(float)
    if sigma > 0.5:
        radius = min(int(np.ceil(4 * sigma)), (n_bins - 1) // 2)
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        density = np.convolve(density, kernel / kernel.sum(), mode="same")
    centres = (edges[:-1] + edges[1:]) / 2
    return np.interp(coords, centres, density) / (data.size * width)


def qc(
    adata: ad.AnnData | pd.DataFrame,
    *,
    keys: Sequence[str] = ("total_counts", "n_genes_by_counts", "pct_counts_mt"),
    groupby: str | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Plot the distributions of per-cell QC metrics.

    One panel per metric: a histogram with the median marked, or, with ``groupby``, one
    violin per group (median and extrema shown). Only the ``obs`` columns named in ``keys``
    (and ``groupby``) are read; ``X`` is never touched. Non-finite values are left out.

    Parameters
    ----------
    adata
        An AnnData whose ``obs`` holds the metrics, or the per-cell QC table itself.
    keys
        ``obs`` columns to plot. The defaults are written by
        :func:`scdask.pp.calculate_qc_metrics` (``pct_counts_mt`` needs ``qc_vars=["mt"]``).
    groupby
        Categorical ``obs`` column (e.g. sample or cell type): one violin per value.
    save
        Write the figure to this path as a PNG (dpi 150, atomically).

    Returns
    -------
    matplotlib.figure.Figure
        The figure, one Axes per key.

    Raises
    ------
    KeyError
        A key or ``groupby`` is not a column of ``obs``.
    ValueError
        ``keys`` is empty, or ``groupby`` has more than 100 distinct values.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> from scdask import plotting
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({
    ...     "total_counts": rng.lognormal(8, 0.5, 500),
    ...     "n_genes_by_counts": rng.lognormal(7, 0.4, 500),
    ...     "pct_counts_mt": rng.gamma(2, 2, 500),
    ...     "sample": rng.choice(["a", "b"], 500),
    ... }, index=[f"c{i}" for i in range(500)])
    >>> adata = ad.AnnData(obs=obs)
    >>> fig = plotting.qc(adata, groupby="sample")
    >>> len(fig.axes)
    3
    """
    obs = frame_of(adata, "obs")
    keys = list(keys)
    if not keys:
        raise InputError("keys is empty; name at least one obs column to plot")
    require_columns(obs, keys, where="obs", writer=_QC_WRITER)
    if groupby is not None:
        require_columns(obs, [groupby], where="obs", writer="pass the name of an obs column")
        return finish(_qc_violins(obs, keys, groupby), save)
    fig = new_figure(figsize=(3.4 * len(keys), 3.0))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys, strict=True):
        values = np.asarray(obs[key], dtype=float)
        values = values[np.isfinite(values)]
        bins = int(np.clip(np.sqrt(values.size), 10, 80))
        ax.hist(values, bins=bins, color="#4c72b0", edgecolor="none")
        if values.size:
            median = float(np.median(values))
            ax.axvline(median, color="black", linestyle="--", linewidth=1)
            ax.text(
                0.97,
                0.95,
                f"median {median:,.4g}",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
            )
        ax.set_xlabel(key)
        ax.set_ylabel("cells")
    return finish(fig, save)


def _qc_violins(obs: pd.DataFrame, keys: list[str], groupby: str) -> Figure:
    from matplotlib.cbook import violin_stats

    groups = categories_of(obs[groupby], name=groupby)
    names = [str(c) for c in groups.categories]
    fig = new_figure(figsize=(max(4.0, 0.55 * len(names) + 1.8), 2.4 * len(keys) + 0.6))
    axes = fig.subplots(len(keys), 1, squeeze=False, sharex=True)[:, 0]
    codes = groups.codes
    for ax, key in zip(axes, keys, strict=True):
        values = np.asarray(obs[key], dtype=float)
        per_group = [values[(codes == i) & np.isfinite(values)] for i in range(len(names))]
        drawn = [i for i, v in enumerate(per_group) if v.size]
        if drawn:
            stats = violin_stats([per_group[i] for i in drawn], _density)
            parts = ax.violin(stats, positions=drawn, widths=0.8, showmedians=True)
            for body in parts["bodies"]:
                body.set_facecolor("#4c72b0")
                body.set_alpha(0.7)
            for name in ("cmins", "cmaxes", "cbars", "cmedians"):
                parts[name].set_color("#333333")
                parts[name].set_linewidth(0.8)
        ax.set_ylabel(key)
    axes[-1].set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    axes[-1].set_xlabel(groupby)
    return fig


# -- highly variable genes ------------------------------------------------------------------
def hvg(
    adata: ad.AnnData | pd.DataFrame,
    *,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Plot each gene's mean expression against its normalised dispersion or variance.

    Highly variable genes are drawn in colour, the others in grey. The y axis is
    ``var["dispersions_norm"]`` (flavors ``seurat`` and ``cell_ranger``) when present,
    else ``var["variances_norm"]`` (flavor ``seurat_v3``, whose means are raw counts and
    are drawn on a log axis). Genes with a non-finite value are left out.

    Parameters
    ----------
    adata
        An AnnData whose ``var`` holds the columns written by
        :func:`scdask.pp.highly_variable_genes`, or that per-gene table itself.
    save
        Write the figure to this path as a PNG (dpi 150, atomically).

    Returns
    -------
    matplotlib.figure.Figure
        The figure, with one Axes holding one scatter (one point per plotted gene).

    Raises
    ------
    KeyError
        ``means``, ``highly_variable`` or both of ``dispersions_norm`` / ``variances_norm``
        are missing from ``var``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from scdask import plotting
    >>> rng = np.random.default_rng(0)
    >>> var = pd.DataFrame({"means": rng.gamma(1, 1, 300), "dispersions_norm": rng.normal(0, 1, 300)})
    >>> var["highly_variable"] = var["dispersions_norm"] > 1
    >>> fig = plotting.hvg(var)
    >>> fig.axes[0].get_ylabel()
    'normalised dispersion'
    """
    var = frame_of(adata, "var")
    require_columns(var, ["means", "highly_variable"], where="var", writer=_HVG_WRITER)
    if "dispersions_norm" in var.columns:
        y_key, y_label, log_x = "dispersions_norm", "normalised dispersion", False
    elif "variances_norm" in var.columns:
        y_key, y_label, log_x = "variances_norm", "normalised variance", True
    else:
        raise KeyError(
            "var has neither 'dispersions_norm' (flavors seurat, cell_ranger) nor "
            f"'variances_norm' (flavor seurat_v3); {_HVG_WRITER}. Columns present: "
            f"{list(var.columns)}"
        )
    x = np.asarray(var["means"], dtype=float)
    y = np.asarray(var[y_key], dtype=float)
    selected = np.asarray(var["highly_variable"], dtype=bool)
    keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
    x, y, selected = x[keep], y[keep], selected[keep]
    order = np.argsort(selected, kind="stable")  # highly variable genes drawn on top
    colors = np.where(selected[order], "#c0392b", GREY)

    from matplotlib.lines import Line2D

    fig = new_figure(figsize=(5.0, 4.0))
    ax = fig.subplots()
    ax.scatter(x[order], y[order], c=colors, s=6, linewidths=0, rasterized=True)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("mean expression" + (" (counts)" if log_x else ""))
    ax.set_ylabel(y_label)
    handles = [
        Line2D([], [], marker="o", linestyle="", color="#c0392b"),
        Line2D([], [], marker="o", linestyle="", color=GREY),
    ]
    n_hvg = int(selected.sum())
    labels = [f"highly variable ({n_hvg:,})", f"other ({selected.size - n_hvg:,})"]
    ax.legend(handles, labels, loc="best", frameon=False, fontsize=8)
    return finish(fig, save)
