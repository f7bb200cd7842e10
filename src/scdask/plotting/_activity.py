"""Plots of secreted-protein activity results: per-group heatmaps and volcano plots."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import dask
import numpy as np
import pandas as pd

from scdask._compute import compute
from scdask._errors import InputError
from scdask.plotting._figure import DIVERGING, GREY, finish, new_figure, to_numpy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["activity_heatmap", "volcano"]

_UP, _DOWN = "#c0392b", "#2166ac"


def activity_heatmap(
    frame: pd.DataFrame,
    *,
    top: int = 20,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Heatmap of the proteins with the strongest activity across groups.

    Keeps the ``top`` proteins with the largest ``max |z|`` over the groups and orders them
    without clustering: by the group in which each is highest (the groups' order), then by
    decreasing value, so every group's most active proteins form a block on the diagonal.
    Colours use a diverging map centred at 0 with symmetric limits; missing values are grey.

    Parameters
    ----------
    frame
        Proteins × groups, numeric (e.g. activity z-scores per cell type). The index names
        the proteins and the columns the groups; ``frame.index.name`` and
        ``frame.columns.name`` label the axes when set.
    top
        How many proteins to show (all of them when there are fewer).
    save
        Write the figure to this path as a PNG (dpi 150, atomically).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; its first Axes holds one image of shape ``(min(top, n_proteins), n_groups)``
        and the second the colorbar.

    Raises
    ------
    ValueError
        ``frame`` is empty, not numeric or all missing, or ``top`` is below 1.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from scdask import plotting
    >>> rng = np.random.default_rng(0)
    >>> z = pd.DataFrame(rng.normal(size=(50, 4)), index=[f"P{i}" for i in range(50)],
    ...                  columns=["B", "T", "NK", "Myeloid"])
    >>> fig = plotting.activity_heatmap(z, top=10)
    >>> fig.axes[0].images[0].get_array().shape
    (10, 4)
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame (proteins x groups), got {type(frame)}")
    if top < 1:
        raise InputError(f"top must be at least 1, got {top}")
    if frame.empty:
        raise InputError("frame is empty; expected proteins x groups")
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise InputError(f"frame must be numeric; columns {non_numeric} are not")
    z = frame.to_numpy(dtype=float)
    if not np.isfinite(z).any():
        raise InputError("frame holds no finite value")
    strength = np.abs(np.where(np.isfinite(z), z, 0.0)).max(axis=1)
    chosen = np.argsort(-strength, kind="stable")[:top]
    z = z[chosen]
    peak_group = np.argmax(np.where(np.isfinite(z), z, -np.inf), axis=1)
    peak = z[np.arange(len(chosen)), peak_group]
    order = np.lexsort((-np.nan_to_num(peak, nan=-np.inf), peak_group))
    z, proteins = z[order], frame.index[chosen][order]
    groups = frame.columns

    import matplotlib as mpl

    bound = float(np.nanmax(np.abs(z))) or 1.0
    fig = new_figure(figsize=(1.6 + 0.42 * len(groups) + 1.2, 1.4 + 0.22 * len(proteins)))
    ax = fig.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(z),
        aspect="auto",
        interpolation="nearest",
        cmap=mpl.colormaps[DIVERGING].with_extremes(bad=GREY),
        vmin=-bound,
        vmax=bound,
    )
    ax.set_xticks(range(len(groups)), labels=[str(g) for g in groups], rotation=45, ha="right")
    ax.set_yticks(range(len(proteins)), labels=[str(p) for p in proteins], fontsize=8)
    ax.set_xlabel(str(groups.name) if groups.name is not None else "group")
    ax.set_ylabel(str(frame.index.name) if frame.index.name is not None else "protein")
    fig.colorbar(image, ax=ax, label="activity z-score", shrink=0.8)
    return finish(fig, save)


def _as_series(values, names, *, what: str) -> pd.Series:
    """``values`` as a float Series indexed by protein name."""
    if isinstance(values, pd.Series):
        return values.astype(float)
    flat = to_numpy(values).reshape(-1).astype(float)
    if names is None:
        raise InputError(f"{what} is not a pandas Series; pass names= (one protein name each)")
    names = pd.Index(names)
    if len(names) != flat.size:
        raise InputError(f"{what} has {flat.size} values but names has {len(names)}")
    return pd.Series(flat, index=names)


def volcano(
    zscore,
    pvalue,
    *,
    names=None,
    label_top: int = 10,
    threshold: float = 0.05,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Volcano plot of one sample's or group's activity: z-score against −log10 p-value.

    Proteins with ``p < threshold`` are red (z > 0) or blue (z < 0), the others grey; a
    dashed line marks the threshold. The ``label_top`` proteins with the largest ``|z|`` are
    labelled. Proteins with a non-finite z or p are left out. A p-value of exactly 0 has no
    finite −log10: such proteins are drawn as triangles at the height of the smallest
    non-zero p-value.

    Parameters
    ----------
    zscore, pvalue
        One value per protein: pandas Series indexed by protein name (aligned by name), or
        1-D array-likes in the same order together with ``names``.
    names
        Protein names, when ``zscore`` and ``pvalue`` are not Series.
    label_top
        How many proteins to label, by decreasing ``|z|`` (0 labels none).
    threshold
        Significance level for colouring and the dashed line.
    save
        Write the figure to this path as a PNG (dpi 150, atomically).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; its first Axes holds one point per plotted protein and one text label
        per labelled protein.

    Raises
    ------
    ValueError
        The two inputs name different proteins or differ in length, ``names`` is missing
        for arrays, a p-value lies outside [0, 1], ``label_top`` is negative or
        ``threshold`` is not in (0, 1).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from scdask import plotting
    >>> rng = np.random.default_rng(0)
    >>> names = [f"P{i}" for i in range(100)]
    >>> z = pd.Series(rng.normal(0, 2, 100), index=names)
    >>> p = pd.Series(np.clip(np.exp(-np.abs(z)), 1e-4, 1), index=names)
    >>> fig = plotting.volcano(z, p, label_top=5)
    >>> len(fig.axes[0].texts)
    5
    """
    if label_top < 0:
        raise InputError(f"label_top must be 0 or more, got {label_top}")
    if not 0 < threshold < 1:
        raise InputError(f"threshold must lie in (0, 1), got {threshold}")
    if dask.is_dask_collection(zscore) or dask.is_dask_collection(pvalue):
        # one compute: rows of one lazy result share the task that makes them
        zscore, pvalue = compute(zscore, pvalue)
    z = _as_series(zscore, names, what="zscore")
    p = _as_series(pvalue, names, what="pvalue")
    if len(z) != len(p) or not p.index.isin(z.index).all():
        raise InputError(
            "zscore and pvalue must name the same proteins "
            f"({len(z)} and {len(p)} values; {int((~p.index.isin(z.index)).sum())} of pvalue's "
            "names are not in zscore)"
        )
    p = p.reindex(z.index)
    keep = np.isfinite(z.to_numpy()) & np.isfinite(p.to_numpy())
    z, p = z[keep], p[keep]
    if ((p < 0) | (p > 1)).any():
        raise InputError("p-values must lie in [0, 1]")
    positive = p[p > 0]
    floor = float(positive.min()) if len(positive) else np.finfo(float).tiny
    y = -np.log10(p.clip(lower=floor).to_numpy())
    x = z.to_numpy()
    colors = np.where(p < threshold, np.where(x > 0, _UP, _DOWN), GREY)
    zero = (p == 0).to_numpy()

    from matplotlib.lines import Line2D

    fig = new_figure(figsize=(5.4, 4.6))
    ax = fig.subplots()
    ax.scatter(x[~zero], y[~zero], c=colors[~zero], s=14, linewidths=0, rasterized=True)
    if zero.any():
        ax.scatter(x[zero], y[zero], c=colors[zero], s=22, marker="^", linewidths=0)
    ax.margins(x=0.12, y=0.25)  # room for the labels above the outermost points
    ax.set_ylim(bottom=0)
    ax.axhline(-np.log10(threshold), color="black", linestyle="--", linewidth=0.8)
    ax.axvline(0, color=GREY, linewidth=0.8)
    _label_points(ax, x, y, z.index, np.argsort(-np.abs(x), kind="stable")[:label_top])
    ax.set_xlabel("activity z-score")
    ax.set_ylabel(r"$-\log_{10}$ p-value")
    handles = [Line2D([], [], marker="o", linestyle="", color=c) for c in (_UP, _DOWN, GREY)]
    labels = [f"up, p < {threshold:g}", f"down, p < {threshold:g}", "not significant"]
    if zero.any():
        handles.append(Line2D([], [], marker="^", linestyle="", color="black"))
        labels.append("p = 0 (drawn at smallest p)")
    ax.legend(handles, labels, loc="best", frameon=False, fontsize=8)
    return finish(fig, save)


def _label_points(ax, x, y, names, chosen, fontsize: float = 7) -> None:
    """Name the ``chosen`` points, stacking labels in rows so that none overlap.

    Strong proteins pile up at the p-value floor; taken in x order, each label goes to the
    lowest row whose last label ends left of it (widths estimated from the font size), with
    a leader line to its point.
    """
    ax.autoscale_view()
    pixels = ax.transData.transform(np.column_stack([x, y]))[:, 0]
    points_per_pixel = 72 / ax.figure.dpi
    ends: list[float] = []  # right end (pixels) of the last label in each row
    for i in sorted(chosen, key=lambda i: x[i]):
        half = 0.3 * fontsize * len(str(names[i])) / points_per_pixel
        left = pixels[i] - half
        row = next((r for r, end in enumerate(ends) if end < left), len(ends))
        if row == len(ends):
            ends.append(0.0)
        ends[row] = pixels[i] + half + 2
        ax.annotate(
            str(names[i]),
            (x[i], y[i]),
            xytext=(0, 5 + 1.6 * fontsize * row),
            textcoords="offset points",
            ha="center",
            fontsize=fontsize,
            arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": GREY},
        )
