"""Activity results as AnnData (samples x proteins) and as secactpy's dict of DataFrames."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd

from scdask._compute import compute

__all__ = ["STATS", "make_result", "to_frames"]

STATS = ("beta", "se", "zscore", "pvalue")


def _expanded_columns(groups: list[str], grouped: bool) -> tuple[list[str], np.ndarray]:
    """Protein names (grouped rows expanded, sorted by code point) and their group column."""
    if not grouped:
        return list(groups), np.arange(len(groups))
    pairs = sorted((member, i) for i, name in enumerate(groups) for member in name.split("|"))
    return [name for name, _ in pairs], np.array([i for _, i in pairs], dtype=np.intp)


def make_result(
    stacked,
    samples: list[str] | pd.DataFrame,
    groups: list[str],
    *,
    grouped: bool,
    params: dict,
) -> ad.AnnData:
    """Wrap a ``(m, 4, p)`` block-kernel output (numpy or dask) as the result AnnData.

    ``samples`` are the sample names, or the input's ``obs`` table (kept as the result's).
    """
    proteins, source = _expanded_columns(groups, grouped)
    layers = {}
    for i, name in enumerate(STATS):
        layer = stacked[:, i, :]
        layers[name] = layer if np.array_equal(source, np.arange(len(groups))) else layer[:, source]
    var = pd.DataFrame({"group": [groups[i] for i in source]}, index=pd.Index(proteins))
    if isinstance(samples, pd.DataFrame):
        obs = samples.copy()
    else:
        obs = pd.DataFrame(index=pd.Index([str(s) for s in samples]))
    return ad.AnnData(X=layers["zscore"], obs=obs, var=var, layers=layers, uns={"activity": params})


def to_frames(result: ad.AnnData) -> dict[str, pd.DataFrame]:
    """secactpy's output: a dict of proteins x samples float64 DataFrames.

    Lazy layers are computed together in one ``dask.compute``.

    Parameters
    ----------
    result
        The AnnData returned by :func:`infer`.

    Returns
    -------
    dict
        ``beta``, ``se``, ``zscore``, ``pvalue``; rows are proteins (grouped proteins
        expanded, sorted by code point), columns are samples.

    Examples
    --------
    >>> import pandas as pd, numpy as np
    >>> from scdask.activity import infer, to_frames
    >>> rng = np.random.default_rng(0)
    >>> sig = pd.DataFrame(rng.standard_normal((50, 2)), index=[f"G{i}" for i in range(50)],
    ...                    columns=["P1", "P2"])
    >>> expr = pd.DataFrame(rng.standard_normal((50, 3)), index=sig.index, columns=list("abc"))
    >>> frames = to_frames(infer(expr, level="bulk", signature=sig, group=False, n_rand=10))
    >>> frames["pvalue"].shape
    (2, 3)
    """
    layers = [result.layers[name] for name in STATS]
    if any(isinstance(layer, da.Array) for layer in layers):
        layers = compute(*layers)
    return {
        name: pd.DataFrame(
            np.asarray(layer, dtype=np.float64).T,
            index=result.var_names.copy(),
            columns=result.obs_names.copy(),
        )
        for name, layer in zip(STATS, layers, strict=True)
    }
