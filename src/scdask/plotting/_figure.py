"""Figure helpers shared by the plotting modules: creation, atomic saving, input checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scdask._compute import compute
from scdask._errors import InputError
from scdask._files import atomic_target

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Shared style: marker for "not selected / not significant" points.
GREY = "#bdbdbd"
#: Diverging colormap used for z-scores everywhere (centred at 0).
DIVERGING = "RdBu_r"
#: Most categories a colour legend or violin plot shows.
MAX_GROUPS = 100


def new_figure(*, figsize: tuple[float, float]) -> Figure:
    """Return an empty constrained-layout Figure that pyplot does not keep alive.

    The figure is made through pyplot (so Jupyter's inline backend knows how to show it)
    and closed at once: it is shown once, as the value a plotting function returns, and
    scripts that make thousands of plots do not accumulate open figures. Raises an
    ImportError naming the ``plot`` extra when matplotlib is missing.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "scdask.plotting needs matplotlib; install it with: pip install 'scdask[plot]'"
        ) from err
    fig = plt.figure(figsize=figsize, layout="constrained")
    plt.close(fig)
    return fig


def finish(fig: Figure, save: str | os.PathLike[str] | None) -> Figure:
    """Write ``fig`` as a PNG at dpi 150 to ``save`` atomically (when given); return ``fig``.

    The PNG is written to a hidden temporary file in the target folder and renamed over
    ``save``, so a reader never sees a half-written file.
    """
    if save is None:
        return fig
    with atomic_target(save) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return fig


def to_numpy(x) -> np.ndarray:
    """A small array-like (pandas, numpy, scipy/cupy sparse, cupy, dask of those) as numpy.

    A dask collection is computed here: callers slice it down to what the plot needs first.
    """
    if isinstance(x, pd.Series | pd.DataFrame):
        return x.to_numpy()
    if dask.is_dask_collection(x):
        (x,) = compute(x)
    if type(x).__module__.split(".")[0] in ("cupy", "cupyx"):
        x = x.get()
    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x)


def frame_of(data: ad.AnnData | pd.DataFrame, attr: str) -> pd.DataFrame:
    """``data.obs``/``data.var`` of an AnnData, or ``data`` itself when it is a table."""
    if isinstance(data, ad.AnnData):
        return getattr(data, attr)
    if isinstance(data, pd.DataFrame):
        return data
    raise TypeError(f"expected an AnnData or a pandas DataFrame, got {type(data).__name__}")


def require_columns(frame: pd.DataFrame, keys: Sequence[str], *, where: str, writer: str) -> None:
    """Raise a KeyError naming every key of ``keys`` missing from ``frame`` and its writer."""
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise KeyError(
            f"{where} has no column {', '.join(map(repr, missing))}; {writer}. "
            f"Columns present: {list(frame.columns)}"
        )


def categories_of(values: pd.Series, *, name: str) -> pd.Categorical:
    """``values`` as a categorical without unused categories; too many groups is an error."""
    cat = pd.Categorical(values).remove_unused_categories()
    if len(cat.categories) > MAX_GROUPS:
        raise InputError(
            f"{name!r} has {len(cat.categories)} distinct values; group by a categorical column "
            f"with at most {MAX_GROUPS} values (cell types, clusters, samples)."
        )
    return cat
