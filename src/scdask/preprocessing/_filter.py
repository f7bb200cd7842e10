"""Filter cells and genes by counts or detected features; subsetting stays lazy."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from scdask._compute import compute
from scdask._errors import InputError
from scdask.preprocessing._blocks import (
    csr,
    gene_partials,
    get_matrix,
    lazy_matrix,
    row_partials,
    sum_dtype,
)

__all__ = ["filter_cells", "filter_genes"]


def _cell_numbers(block, *, detected: bool) -> np.ndarray:
    m = csr(block)
    if detected:
        return np.diff((m > 0).tocsr().indptr)[:, None].astype(np.float64)
    return np.asarray(m.sum(axis=1, dtype=np.float64))[:, None]


def _gene_numbers(block, *, detected: bool) -> np.ndarray:
    m = csr(block)
    weights = (m.data > 0).astype(np.float64) if detected else m.data.astype(np.float64)
    return np.bincount(m.indices, weights=weights, minlength=m.shape[1])[np.newaxis]


def _one_option(kind: str, **options) -> tuple[str, float, bool]:
    given = {k: v for k, v in options.items() if v is not None}
    if len(given) != 1:
        raise InputError(
            f"Give exactly one of {', '.join(f'`{k}`' for k in options)} per call "
            f"(got {', '.join(given) or 'none'}); call {kind} once per criterion."
        )
    ((name, value),) = given.items()
    return name, value, name.startswith("min")


def _matrix(data, *, layer, use_raw, step: str | None):
    """The matrix of an AnnData (``X``, a layer or ``raw.X``), or ``data`` itself."""
    if isinstance(data, AnnData):
        return get_matrix(data, layer=layer, use_raw=use_raw, step=step)
    if layer is not None or use_raw:
        raise InputError(
            "layer= and use_raw= need an AnnData; pass the matrix itself, or the AnnData"
        )
    return data


def _numbers(x, *, axis: int, detected: bool) -> np.ndarray:
    lazy = lazy_matrix(x)
    if axis == 1:
        graph = row_partials(lazy, _cell_numbers, 1, detected=detected)[:, 0]
    else:
        graph = gene_partials(lazy, _gene_numbers, 1, detected=detected)[0]
    (number,) = compute(graph)
    return number.astype(np.int64 if detected else sum_dtype(x.dtype))


def filter_cells(
    data: AnnData,
    *,
    min_counts: float | None = None,
    min_genes: int | None = None,
    max_counts: float | None = None,
    max_genes: int | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    inplace: bool = True,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Keep cells with enough (or not too many) counts or detected genes, as scanpy does.

    Exactly one criterion per call. With ``inplace`` the cells are removed from ``data``
    (a lazy row selection of ``X``: nothing is rewritten) and ``obs['n_counts']`` (for the
    count criteria) or ``obs['n_genes']`` (genes with a count > 0) is written.

    Passes over X: 1.

    Parameters
    ----------
    data
        AnnData (``X`` lazy or in memory), or a cells x genes matrix.
    min_counts, min_genes, max_counts, max_genes
        The criterion (bounds are inclusive).
    layer, use_raw
        Count in ``adata.layers[layer]`` or in ``adata.raw.X`` (any genes: only cells are
        removed, and ``raw`` follows them) instead of ``X``.
    inplace
        Subset ``data`` and annotate it (default), or return the mask and the numbers.

    Returns
    -------
    tuple of numpy.ndarray or None
        ``(cell_subset, number_per_cell)`` if ``inplace=False`` or ``data`` is a matrix.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.filter_cells(adata, min_genes=200)
    >>> bool((adata.obs["n_genes"] >= 200).all())
    True
    """
    name, bound, is_min = _one_option(
        "filter_cells",
        min_counts=min_counts,
        min_genes=min_genes,
        max_counts=max_counts,
        max_genes=max_genes,
    )
    detected = name.endswith("genes")
    x = _matrix(data, layer=layer, use_raw=use_raw, step=None)
    number = _numbers(x, axis=1, detected=detected)
    subset = number >= bound if is_min else number <= bound
    if not isinstance(data, AnnData) or not inplace:
        return subset, number
    data.obs["n_genes" if detected else "n_counts"] = number
    data._inplace_subset_obs(subset)
    return None


def filter_genes(
    data: AnnData,
    *,
    min_counts: float | None = None,
    min_cells: int | None = None,
    max_counts: float | None = None,
    max_cells: int | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    inplace: bool = True,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Keep genes with enough (or not too many) counts or expressing cells, as scanpy does.

    Exactly one criterion per call. With ``inplace`` the genes are removed from ``data``
    (a lazy column selection of ``X``) and ``var['n_counts']`` or ``var['n_cells']``
    (cells with a count > 0) is written.

    Passes over X: 1.

    Parameters
    ----------
    data
        AnnData (``X`` lazy or in memory), or a cells x genes matrix.
    min_counts, min_cells, max_counts, max_cells
        The criterion (bounds are inclusive).
    layer, use_raw
        Count in ``adata.layers[layer]`` or in ``adata.raw.X`` instead of ``X``; with
        ``use_raw``, ``raw`` must have ``var``'s genes (genes are removed from ``var``;
        ``raw`` keeps all of its genes, as anndata does).
    inplace
        Subset ``data`` and annotate it (default), or return the mask and the numbers.

    Returns
    -------
    tuple of numpy.ndarray or None
        ``(gene_subset, number_per_gene)`` if ``inplace=False`` or ``data`` is a matrix.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.filter_genes(adata, min_cells=3)
    >>> bool((adata.var["n_cells"] >= 3).all())
    True
    """
    name, bound, is_min = _one_option(
        "filter_genes",
        min_counts=min_counts,
        min_cells=min_cells,
        max_counts=max_counts,
        max_cells=max_cells,
    )
    detected = name.endswith("cells")
    x = _matrix(data, layer=layer, use_raw=use_raw, step="filter_genes")
    number = _numbers(x, axis=0, detected=detected)
    subset = number >= bound if is_min else number <= bound
    if not isinstance(data, AnnData) or not inplace:
        return subset, number
    data.var["n_cells" if detected else "n_counts"] = number
    data._inplace_subset_var(subset)
    return None
