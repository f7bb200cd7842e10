"""Scatter plots of a low-dimensional embedding (PCA, UMAP) coloured per cell."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scdask._errors import InputError
from scdask.plotting._figure import DIVERGING, GREY, categories_of, finish, new_figure, to_numpy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["embedding"]

_WRITERS = {"pca": "scdask.pp.pca", "umap": "scdask.pp.umap"}
_AXIS_NAMES = {"pca": "PC", "umap": "UMAP", "tsne": "tSNE"}


def _coordinates(adata: ad.AnnData, basis: str) -> tuple[np.ndarray, str]:
    """The first two columns of ``obsm[f"X_{basis}"]`` (only those are computed) and the key."""
    key = basis if basis.startswith("X_") else f"X_{basis}"
    if key not in adata.obsm:
        name = key.removeprefix("X_")
        writer = f"run {_WRITERS[name]} first" if name in _WRITERS else "compute it first"
        raise KeyError(f"obsm has no {key!r}; {writer}. obsm holds: {list(adata.obsm.keys())}")
    emb = adata.obsm[key]
    if emb.ndim != 2 or emb.shape[1] < 2:
        raise InputError(f"obsm[{key!r}] has shape {emb.shape}; an embedding needs 2 columns")
    xy = to_numpy(emb.iloc[:, :2] if isinstance(emb, pd.DataFrame) else emb[:, :2])
    return xy.astype(float), key


def _axis_labels(adata: ad.AnnData, key: str) -> list[str]:
    """Axis labels: ``PC1 (12.3%)`` when the PCA variance ratio is known, else ``UMAP1``…"""
    name = key.removeprefix("X_")
    stem = _AXIS_NAMES.get(name, name)
    labels = [f"{stem}{i}" for i in (1, 2)]
    ratio = adata.uns.get(name, {}).get("variance_ratio") if name == "pca" else None
    if ratio is not None and len(ratio) >= 2:
        labels = [
            f"{lab} ({100 * float(r):.1f}%)" for lab, r in zip(labels, ratio[:2], strict=True)
        ]
    return labels


def _column_of(values: ad.AnnData, name: str, layer: str | None, obs_names: pd.Index) -> np.ndarray:
    """One var column of ``values`` (``X`` or a layer), aligned to ``obs_names``.

    Only that column is computed when the matrix is a dask array.
    """
    if name not in values.var_names:
        raise KeyError(
            f"{name!r} is not in values.var_names ({values.n_vars} names, e.g. "
            f"{list(values.var_names[:5])})"
        )
    if layer is None:
        matrix = values.X
        if matrix is None:
            raise InputError(f"values.X is empty; pass layer= one of {list(values.layers.keys())}")
    elif layer not in values.layers:
        raise KeyError(f"values has no layer {layer!r}; layers: {list(values.layers.keys())}")
    else:
        matrix = values.layers[layer]
    j = values.var_names.get_loc(name)
    column = to_numpy(matrix[:, j : j + 1]).reshape(-1)
    if values.obs_names.equals(obs_names):
        return column
    where = values.obs_names.get_indexer(obs_names)
    if values.n_obs != len(obs_names) or (where < 0).any():
        raise InputError(
            "values and adata must describe the same cells: their obs_names differ "
            f"({values.n_obs} vs {len(obs_names)} cells)"
        )
    return column[where]


def _per_cell(color_values, obs_names: pd.Index) -> pd.Series:
    """``color_values`` as a Series over ``obs_names``: by name for a Series that holds
    every cell name, else by position."""
    if isinstance(color_values, pd.Series) and obs_names.isin(color_values.index).all():
        return color_values.reindex(obs_names)
    flat = to_numpy(color_values).reshape(-1)
    if flat.size != len(obs_names):
        raise InputError(f"color_values has {flat.size} values for {len(obs_names)} cells")
    return pd.Series(flat, index=obs_names)


def _stored_palette(adata: ad.AnnData, color: str) -> dict[object, str] | None:
    """``uns[f"{color}_colors"]`` as category → colour, when it has one per category."""
    stored = adata.uns.get(f"{color}_colors")
    dtype = adata.obs[color].dtype
    if stored is None or not isinstance(dtype, pd.CategoricalDtype):
        return None
    if len(stored) != len(dtype.categories):
        return None
    return dict(zip(dtype.categories, stored, strict=True))


def _point_size(n: int) -> float:
    """Marker area that keeps a scatter of ``n`` cells readable (large for few, tiny for many)."""
    return float(np.clip(2.5e4 / max(n, 1), 0.2, 30.0))


def _palette(categories: pd.Index, stored: Mapping[object, str] | None) -> list:
    """One colour per category: the AnnData-stored palette when it covers them all, else a
    matplotlib one."""
    import matplotlib as mpl

    n = len(categories)
    if stored is not None and categories.isin(list(stored)).all():
        colors = [stored[c] for c in categories]
    elif n <= 10:
        colors = mpl.colormaps["tab10"].colors[:n]
    elif n <= 20:
        colors = mpl.colormaps["tab20"].colors[:n]
    else:
        colors = mpl.colormaps["turbo"](np.linspace(0.05, 0.95, n))
    return [mpl.colors.to_rgba(c) for c in colors]


def _categorical(ax: Axes, xy: np.ndarray, values: pd.Series, name: str, stored, size: float):
    """One scatter with per-point colours (cells in a fixed random order) and a legend."""
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    cats = categories_of(values, name=name)
    colors = _palette(cats.categories, stored)
    rgba = np.tile(mpl.colors.to_rgba(GREY), (len(cats), 1))
    present = cats.codes >= 0
    rgba[present] = np.asarray(colors)[cats.codes[present]]
    # a fixed shuffle, so no category is hidden under the one drawn last; unlabelled at the back
    order = np.random.default_rng(0).permutation(len(cats))
    order = np.concatenate([order[~present[order]], order[present[order]]])
    ax.scatter(xy[order, 0], xy[order, 1], c=rgba[order], s=size, linewidths=0, rasterized=True)
    handles = [Line2D([], [], marker="o", linestyle="", color=c) for c in colors]
    labels = [str(c) for c in cats.categories]
    if not present.all():
        handles.append(Line2D([], [], marker="o", linestyle="", color=GREY))
        labels.append("NA")
    ax.legend(
        handles,
        labels,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        fontsize=8,
        ncols=1 if len(labels) <= 16 else 2,
        handletextpad=0.2,
    )


def _continuous(ax: Axes, xy: np.ndarray, values: np.ndarray, label: str | None, size: float):
    """One scatter coloured through a colormap; diverging and centred at 0 for signed values."""
    import matplotlib as mpl

    finite = np.isfinite(values)
    lo, hi = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 1.0)
    if lo < 0 < hi:  # signed values (z-scores, activities): symmetric limits, 0 in the middle
        bound = max(-lo, hi)
        norm, cmap, rank = mpl.colors.Normalize(-bound, bound), DIVERGING, np.abs(values)
    else:
        norm, cmap, rank = mpl.colors.Normalize(lo, hi), "viridis", values
    # NaN cells at the back, then the strongest values drawn on top
    order = np.argsort(np.where(finite, rank, -np.inf), kind="stable")
    sc = ax.scatter(
        xy[order, 0],
        xy[order, 1],
        c=values[order],
        s=size,
        linewidths=0,
        rasterized=True,
        cmap=mpl.colormaps[cmap].with_extremes(bad=GREY),
        norm=norm,
        plotnonfinite=True,
    )
    ax.figure.colorbar(sc, ax=ax, label=label, shrink=0.8)


def embedding(
    adata: ad.AnnData,
    *,
    basis: str = "umap",
    color: str | None = None,
    values: ad.AnnData | None = None,
    layer: str | None = None,
    color_values=None,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Scatter the cells on the first two components of an embedding, coloured per cell.

    Reads ``obsm[f"X_{basis}"][:, :2]`` and one colour column, never ``X``. Categorical
    colours (strings, categories, booleans) get a legend and use ``uns[f"{color}_colors"]``
    when it holds one colour per category; numeric colours get a colorbar, with a
    diverging colormap centred at 0 when the values take both signs (z-scores). Cells
    without a value are drawn in grey, behind the others.

    Parameters
    ----------
    adata
        The cells, with the embedding in ``obsm``.
    basis
        ``"pca"``, ``"umap"`` or any other ``obsm`` key, with or without the ``X_`` prefix.
    color
        An ``obs`` column of ``adata``, or, with ``values``, a var name of ``values``.
    values
        Another AnnData over the same cells (e.g. the cells × proteins result of
        :func:`scdask.activity.infer`); ``color`` then names one of its ``var_names``.
        When its matrix is a dask array, only that one column is computed.
    layer
        Layer of ``values`` to read (e.g. ``"zscore"``); ``None`` reads ``values.X``.
    color_values
        Arbitrary per-cell values instead of ``color``: a pandas Series indexed by
        ``obs_names`` (aligned by name), or any array-like in ``adata`` order. Numeric values get a colorbar, others a legend.
    title
        Axes title; defaults to ``color`` (else the basis name).
    save
        Write the figure to this path as a PNG (dpi 150, atomically).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; its first Axes holds one scatter with one point per cell.

    Raises
    ------
    KeyError
        The embedding, the ``obs`` column, the var name or the layer does not exist.
    ValueError
        ``color`` and ``color_values`` are both given, ``values`` is given without
        ``color``, the values do not cover the cells of ``adata``, or a categorical colour
        has more than 100 distinct values.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> from scdask import plotting
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(obs=pd.DataFrame(
    ...     {"cell_type": rng.choice(["B", "T", "NK"], 200)}, index=[f"c{i}" for i in range(200)]))
    >>> adata.obsm["X_umap"] = rng.normal(size=(200, 2))
    >>> fig = plotting.embedding(adata, basis="umap", color="cell_type")
    >>> len(fig.axes[0].collections[0].get_offsets())
    200
    >>> fig = plotting.embedding(adata, color_values=rng.normal(size=200), title="IL6 activity")
    """
    if color is not None and color_values is not None:
        raise InputError("pass either color or color_values, not both")
    if values is not None and color is None:
        raise InputError("values= needs color= naming one of its var_names")
    xy, key = _coordinates(adata, basis)
    stored = None
    if color_values is not None:
        colour = _per_cell(color_values, adata.obs_names)
    elif values is not None:
        colour = pd.Series(_column_of(values, color, layer, adata.obs_names), index=adata.obs_names)
    elif color is not None:
        if color not in adata.obs.columns:
            raise KeyError(
                f"{color!r} is not an obs column of adata; to colour by a gene or protein, pass "
                "the AnnData that holds it as values= (and layer=). obs columns: "
                f"{list(adata.obs.columns)}"
            )
        colour = adata.obs[color]
        stored = _stored_palette(adata, color)
    else:
        colour = None

    fig = new_figure(figsize=(5.6 if colour is not None else 4.6, 4.4))
    ax = fig.subplots()
    size = _point_size(adata.n_obs)
    if colour is None:
        ax.scatter(xy[:, 0], xy[:, 1], c="#4c72b0", s=size, linewidths=0, rasterized=True)
    elif pd.api.types.is_numeric_dtype(colour) and not pd.api.types.is_bool_dtype(colour):
        _continuous(ax, xy, colour.to_numpy(dtype=float), color, size)
    else:
        _categorical(ax, xy, colour, color or "color_values", stored, size)
    xlabel, ylabel = _axis_labels(adata, key)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else (color or key.removeprefix("X_")))
    return finish(fig, save)
