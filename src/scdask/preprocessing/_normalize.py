"""Library-size normalisation and log1p: lazy, block by block, sparsity and dtype kept."""

from __future__ import annotations

import warnings
from numbers import Number

import dask.array as da
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from scdask._compute import compute
from scdask._errors import InputError
from scdask.preprocessing._blocks import (
    csr,
    gene_partials,
    get_matrix,
    lazy_matrix,
    row_of_values,
    row_partials,
)

__all__ = ["log1p", "normalize_total"]


def _with_data(block, data: np.ndarray):
    """A sparse block of the same class (CSR or CSC) with new stored values."""
    return type(block)((data, block.indices, block.indptr), shape=block.shape, copy=False)


def _cell_totals(block, gene_mask: np.ndarray, *, out_dtype) -> np.ndarray:
    """Per-cell totals over the genes in ``gene_mask``, summed in float64, cast to ``dtype``."""
    m = csr(block)
    keep = gene_mask[m.indices].astype(np.float64)
    totals = np.bincount(row_of_values(m), weights=m.data * keep, minlength=m.shape[0])
    return totals.astype(out_dtype)


def _totals_kernel(block, gene_mask: np.ndarray, *, out_dtype) -> np.ndarray:
    return _cell_totals(block, gene_mask, out_dtype=out_dtype)[:, np.newaxis].astype(np.float64)


def _highly_expressed(block, *, max_fraction: float, out_dtype) -> np.ndarray:
    """Per gene: number of cells in which it holds more than ``max_fraction`` of the total."""
    m = csr(block)
    totals = _cell_totals(block, np.ones(m.shape[1], dtype=bool), out_dtype=out_dtype)
    limit = max_fraction * totals.astype(np.float64)[row_of_values(m)]
    hits = (m.data > limit).astype(np.float64)
    return np.bincount(m.indices, weights=hits, minlength=m.shape[1])[np.newaxis]


def _factors(totals: np.ndarray, target_sum: float, dtype) -> np.ndarray:
    return totals.astype(dtype) / np.asarray(target_sum, dtype=dtype)


def _scale_rows(block, gene_mask: np.ndarray, *, target_sum: float, out_dtype):
    """Divide each cell by (its total over ``gene_mask``) / ``target_sum``, in ``out_dtype``."""
    totals = _cell_totals(block, gene_mask, out_dtype=out_dtype)
    factor = _factors(totals, target_sum, out_dtype)
    factor[factor == 0] = 1
    if sp.issparse(block):
        block = block if block.format == "csr" else block.tocsr()
        data = block.data.astype(out_dtype, copy=False)
        return _with_data(block, data / np.repeat(factor, np.diff(block.indptr)))
    return np.asarray(block, dtype=out_dtype) / factor[:, np.newaxis]


def normalize_total(
    adata: AnnData,
    *,
    target_sum: float | None = None,
    exclude_highly_expressed: bool = False,
    max_fraction: float = 0.05,
    key_added: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    inplace: bool = True,
    copy: bool = False,
) -> AnnData | dict[str, np.ndarray] | None:
    """Scale every cell to the same total count, lazily (scanpy's ``normalize_total``).

    Each cell is divided by ``total / target_sum``; ``target_sum=None`` uses the median
    total over cells with a non-zero total. Cells with zero counts stay zero. Sparse
    blocks stay sparse; float32 stays float32, integer counts become float32. With
    ``exclude_highly_expressed``, genes holding more than ``max_fraction`` of a cell's
    total in at least one cell do not count towards any total. The result is a new lazy
    ``X`` (or layer): blocks are normalised when computed.

    Passes over X: none when ``target_sum`` is given (and neither ``key_added`` nor
    ``exclude_highly_expressed``); 1 for the totals (median, ``key_added``) or for the
    highly-expressed genes; 2 with ``exclude_highly_expressed`` and ``target_sum=None``
    or ``key_added`` (the totals depend on the excluded genes).

    Parameters
    ----------
    adata
        Cells x genes counts; ``X`` lazy (Dask) or in memory.
    target_sum
        Total of every cell after normalisation; ``None``: the median total.
    exclude_highly_expressed
        Leave out very highly expressed genes when computing the totals.
    max_fraction
        The fraction of a cell's total above which a gene counts as highly expressed.
    key_added
        Column of ``obs`` for the size factors (``total / target_sum``).
    layer
        Normalise ``adata.layers[layer]`` instead of ``X``.
    use_raw
        Normalise ``adata.raw.X`` (the counts of a CELLxGENE file) and put the result in
        ``X`` (``raw`` is left as it is); ``raw`` must have ``var``'s genes.
    inplace
        Replace the matrix in ``adata`` (default), or return ``{"X": ..., "norm_factor": ...}``.
    copy
        Work on a copy of ``adata`` and return it.

    Returns
    -------
    anndata.AnnData or dict or None
        The copy if ``copy``; the dict if ``inplace=False``; otherwise ``None``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> float(adata.X[:3].sum(axis=1).compute().round(2)[0])
    10000.0
    """
    if copy and not inplace:
        raise InputError("`copy=True` cannot be used with `inplace=False`.")
    if not 0 <= max_fraction <= 1:
        raise InputError(f"max_fraction must be between 0 and 1, got {max_fraction}.")
    if copy:
        adata = adata.copy()
    x = get_matrix(adata, layer=layer, use_raw=use_raw, step="normalize_total")
    dtype = np.dtype(np.float32) if np.issubdtype(x.dtype, np.integer) else np.dtype(x.dtype)
    is_lazy = isinstance(x, da.Array)
    gene_mask = np.ones(x.shape[1], dtype=bool)
    if exclude_highly_expressed:
        hits = gene_partials(
            lazy_matrix(x), _highly_expressed, 1, max_fraction=max_fraction, out_dtype=dtype
        )
        (hits,) = compute(hits[0])
        gene_mask = hits == 0
    totals = None
    if not is_lazy:
        x = x.tocsr() if sp.issparse(x) else x
        totals = _cell_totals(x, gene_mask, out_dtype=dtype)
    elif target_sum is None or key_added is not None:
        graph = row_partials(lazy_matrix(x), _totals_kernel, 1, genes=[gene_mask], out_dtype=dtype)
        (totals,) = compute(graph[:, 0])
        totals = totals.astype(dtype)
    if totals is not None and not np.all(totals > 0):
        warnings.warn("Some cells have zero counts", UserWarning, stacklevel=2)
    if target_sum is None:
        positive = totals[totals > 0]
        target_sum = float(np.median(positive)) if positive.size else 1.0
    kwargs = {"target_sum": target_sum, "out_dtype": dtype}
    if is_lazy:
        lazy = lazy_matrix(x)
        new_x = lazy.map_blocks(
            _scale_rows,
            gene_mask,
            dtype=dtype,
            meta=lazy._meta.astype(dtype),
            **kwargs,
        )
    else:
        new_x = _scale_rows(x, gene_mask, **kwargs)
    if totals is not None:
        norm_factor = _factors(totals, target_sum, dtype)
    else:
        lazy_totals = row_partials(
            lazy_matrix(x), _totals_kernel, 1, genes=[gene_mask], out_dtype=dtype
        )[:, 0]
        norm_factor = lazy_totals.astype(dtype) / np.asarray(target_sum, dtype=dtype)
    if not inplace:
        return {"X": new_x, "norm_factor": norm_factor}
    if key_added is not None:
        adata.obs[key_added] = norm_factor
    if layer is None:
        adata.X = new_x
    else:
        adata.layers[layer] = new_x
    return adata if copy else None


def _log1p_block(block, *, base: Number | None, out_dtype):
    if sp.issparse(block):
        out = np.log1p(block.data.astype(out_dtype, copy=False))
    else:
        out = np.log1p(np.asarray(block, dtype=out_dtype))
    if base is not None:
        out = (out / np.log(base)).astype(out_dtype, copy=False)
    return _with_data(block, out) if sp.issparse(block) else out


def log1p(
    adata: AnnData,
    *,
    base: Number | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """``log(1 + x)`` (natural, or to ``base``) of every value, lazily (scanpy's ``log1p``).

    Sparse blocks stay sparse (only stored values change); float32 stays float32, integer
    input becomes float64 as in scanpy. Records ``uns['log1p'] = {'base': base}``.

    Passes over X: none (lazy for Dask input; computed directly for in-memory input).

    Parameters
    ----------
    adata
        Cells x genes; ``X`` lazy (Dask) or in memory.
    base
        Logarithm base; ``None`` is the natural logarithm.
    layer
        Transform ``adata.layers[layer]`` instead of ``X``.
    use_raw
        Transform ``adata.raw.X`` and put the result in ``X`` (``raw`` is left as it is);
        ``raw`` must have ``var``'s genes.
    copy
        Work on a copy of ``adata`` and return it.

    Returns
    -------
    anndata.AnnData or None
        The copy if ``copy``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> scdask.pp.log1p(adata)
    >>> adata.uns["log1p"]
    {'base': None}
    """
    if "log1p" in adata.uns:
        warnings.warn("adata.X seems to be already log-transformed.", UserWarning, stacklevel=2)
    if copy:
        adata = adata.copy()
    x = get_matrix(adata, layer=layer, use_raw=use_raw, step="log1p")
    dtype = np.dtype(x.dtype) if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    if isinstance(x, da.Array):
        new_x = x.map_blocks(
            _log1p_block, dtype=dtype, meta=x._meta.astype(dtype), base=base, out_dtype=dtype
        )
    else:
        new_x = _log1p_block(x, base=base, out_dtype=dtype)
    if layer is None:
        adata.X = new_x
    else:
        adata.layers[layer] = new_x
    adata.uns["log1p"] = {"base": base}
    return adata if copy else None
