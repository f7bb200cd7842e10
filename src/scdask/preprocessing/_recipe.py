"""The standard chain QC → filter → normalize → log1p → HVG → scale → PCA in four passes.

Step by step (scanpy on a Dask ``X``) the chain reads the file about ten times. Here every
statistic a step needs is gathered in the pass where it first becomes computable:

1. **QC + filters.** Per cell: detected genes, totals, totals per gene group; per gene:
   detected cells and totals over all cells, *and* detected cells over the cells that pass
   ``min_genes`` (a cell's gene count is known inside its own block, so ``filter_genes``
   after ``filter_cells`` needs no extra pass).
2. **Normalisation + HVG + scale statistics.** With a fixed ``target_sum`` normalisation is
   blockwise (each cell's total over the kept genes is in its block), so one pass gives the
   per-gene moments of ``expm1(log1p(x / total · target_sum))`` (seurat dispersions) and of
   ``log1p(...)`` itself (the scaling means and standard deviations, for every gene), and
   each cell's normalisation factor, which passes 3 and 4 reuse.
3. **Gram of the scaled HVG matrix.** The clipped, scaled matrix
   ``Z = clip((L - 1μᵀ) D⁻¹, ±max_value)`` is never formed: a zero of ``L`` in gene ``j``
   always scales to ``c_j = clip(-μ_j/σ_j)``, so ``Z = Y + 1cᵀ`` with ``Y`` as sparse as
   ``L`` (``Y = Z - c`` on the stored entries). The covariance of ``Z`` equals that of
   ``Y``: ``(YᵀY - n m mᵀ)/(n - 1)`` with ``m`` the column means of ``Y``. Without clipping
   this is ``D⁻¹(LᵀL - n μμᵀ)D⁻¹/(n - 1)``; the ``Y`` form keeps scanpy's clip exact.
4. **Projection.** ``X_pca = (Y - 1mᵀ)V = YV - 1(mᵀV)``, block by block.

Passes 1 and 2 run one task per block that returns every statistic of the block, so a block
is freed as soon as it is used (worker memory depends on the block size only).

A pass needs the previous pass's result (filters → normalisation totals → HVG set → the
eigenvectors), so four is the minimum for this chain with the exact solver.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Literal

import dask
import numpy as np
import scipy.sparse as sp

from scdask.preprocessing._blocks import (
    csr,
    get_matrix,
    lazy_matrix,
    map_rows,
    per_block_pass,
    sum_blocks,
    sum_dtype,
)
from scdask.preprocessing._hvg import _N_MOMENTS, _SUM, _SUMSQ, _dispersion_flavor
from scdask.preprocessing._normalize import _factors, _log1p_block, log1p, normalize_total
from scdask.preprocessing._pca import flip_signs, gram_block, store, top_eigh
from scdask.preprocessing._qc import _qc_cells, _qc_genes, annotate_gene_groups
from scdask.preprocessing._scale import mean_std

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["recipe"]

#: scanpy's HVG cutoffs (ignored when ``n_top_genes`` is given).
_HVG_CUTOFFS = (0.0125, 3, 0.5, np.inf)


def _qc_pass(block, masks, *, min_genes: int):
    """Pass 1: per cell QC (``_qc_cells``); per gene QC (``_qc_genes``) and detected cells
    among the cells with at least ``min_genes`` genes."""
    m = csr(block)
    kept = np.repeat(np.diff(m.indptr) >= min_genes, np.diff(m.indptr))
    in_kept = np.bincount(m.indices[kept], minlength=m.shape[1])
    return _qc_cells(m, masks, ns=()), np.vstack([_qc_genes(m), in_kept])


def _factors_over(m: sp.csr_array, gene_keep: np.ndarray, *, target_sum: float, out_dtype):
    """Per-cell normalisation factors over the kept genes, as ``normalize_total`` uses them."""
    totals = m @ gene_keep.astype(np.float64)
    factor = _factors(totals, target_sum, out_dtype)
    factor[factor == 0] = 1
    return factor


def _lognorm(m: sp.csr_array, factor: np.ndarray, *, out_dtype) -> sp.csr_array:
    """``log1p(m / factor)`` per row, in ``out_dtype`` (normalize_total + log1p arithmetic)."""
    data = m.data.astype(out_dtype) / np.repeat(factor, np.diff(m.indptr))
    normed = sp.csr_array((data, m.indices, m.indptr), shape=m.shape)
    return _log1p_block(normed, base=None, out_dtype=out_dtype)


def _lognorm_pass(block, cell_keep, gene_keep, *, target_sum, out_dtype, expm1: bool):
    """Pass 2: per cell, the normalisation factor (1 for dropped cells); per gene, sum and sum
    of squares of the HVG values (``expm1`` of the logs for seurat) then of the logs (the
    scaling statistics), rows laid out like scdask's HVG moments."""
    m = csr(block)
    factor = _factors_over(m, gene_keep, target_sum=target_sum, out_dtype=out_dtype)
    m, factor = m[cell_keep], np.where(cell_keep, factor, 1)
    logged = _lognorm(m, factor[cell_keep], out_dtype=out_dtype)
    dispersed = np.expm1(logged.data) if expm1 else logged.data
    out = np.zeros((_N_MOMENTS + 2, logged.shape[1]))
    rows = ((_SUM, _SUMSQ, dispersed), (_N_MOMENTS, _N_MOMENTS + 1, logged.data))
    for row, row_sq, values in rows:
        # squares in the data dtype, summed in float64: scanpy's arithmetic
        squares = (values * values).astype(np.float64)
        weights = values.astype(np.float64)
        out[row] = np.bincount(logged.indices, weights=weights, minlength=m.shape[1])
        out[row_sq] = np.bincount(logged.indices, weights=squares, minlength=m.shape[1])
    return factor, out


def scaled_shifted(block, factor, hvg, mean, std, *, out_dtype, max_value):
    """``Y`` of one block: the clipped z-scores of the HVG columns minus their zero's value.

    ``Z = Y + 1cᵀ`` with ``c = clip(-mean/std)``; ``Y`` keeps the sparsity of the block.
    ``factor`` holds the normalisation factors of the block's cells (from pass 2).
    """
    m = csr(block)[:, hvg]
    logged = _lognorm(m, factor.astype(out_dtype), out_dtype=out_dtype)
    zero = -mean / std
    z = (logged.data - mean[logged.indices]) / std[logged.indices]
    if max_value is not None:
        zero = np.clip(zero, -max_value, max_value)
        z = np.clip(z, -max_value, max_value)
    data = z - zero[logged.indices]
    return sp.csr_array((data, logged.indices, logged.indptr), shape=logged.shape)


def _scaled_gram(block, cell_keep, factor, hvg, mean, std, **kwargs):
    y = scaled_shifted(block, factor, hvg, mean, std, **kwargs)
    return gram_block(y[cell_keep])


def _scaled_project(block, factor, hvg, mean, std, components, shift, **kwargs):
    y = scaled_shifted(block, factor, hvg, mean, std, **kwargs)
    return np.asarray(y @ components) - shift


def recipe(
    adata: ad.AnnData,
    *,
    min_genes: int = 200,
    min_cells: int = 3,
    qc_vars: Collection[str] = ("mt",),
    target_sum: float = 1e4,
    n_top_genes: int = 2000,
    flavor: Literal["seurat", "cell_ranger"] = "seurat",
    n_bins: int = 20,
    max_value: float | None = 10,
    n_comps: int = 50,
    copy: bool = False,
    verbose: bool = True,
) -> ad.AnnData | None:
    """QC, filtering, normalisation, log1p, HVG, scaling and exact PCA in four passes over X.

    Equivalent to the scanpy chain ``calculate_qc_metrics(qc_vars, percent_top=None,
    log1p=False)`` → ``filter_cells(min_genes)`` → ``filter_genes(min_cells)`` →
    ``normalize_total(target_sum)`` → ``log1p`` → ``highly_variable_genes(flavor,
    n_top_genes)`` → ``adata[:, highly_variable]`` → ``scale(max_value)`` →
    ``pca(n_comps, svd_solver="covariance_eigh")``, with the statistics of consecutive steps
    fused into the same pass and the scaled matrix never formed (see the module notes).

    Passes over X: 4 (QC + filters; normalisation + HVG + scale statistics; Gram of the
    scaled HVG matrix; projection), one ``dask.compute`` each.

    Parameters
    ----------
    adata
        Raw counts, cells x genes (``X`` lazy or in memory).
    min_genes
        ``filter_cells(min_genes=...)``.
    min_cells
        ``filter_genes(min_cells=...)``, counted over the cells that pass ``min_genes``.
    qc_vars
        Boolean ``var`` columns for the QC totals; ``"mt"``, ``"ribo"``, ``"hb"`` are
        annotated from the gene names when missing.
    target_sum
        ``normalize_total(target_sum=...)`` (a fixed target keeps the normalisation
        blockwise; the median target would cost one more pass).
    n_top_genes, flavor, n_bins
        ``highly_variable_genes`` (``"seurat"`` or ``"cell_ranger"``).
    max_value
        ``scale(max_value=...)``; ``None`` does not clip.
    n_comps
        Number of principal components.
    copy
        Return a new AnnData instead of changing ``adata``.
    verbose
        Print the number of passes over X.

    Returns
    -------
    The copy if ``copy``, else ``None``. ``adata`` is filtered (cells and genes); ``X`` is the
    lazy ``log1p`` of the normalised counts (all kept genes, not scaled); ``obs``/``var``
    get scanpy's QC and filter columns (``n_genes_by_counts``, ``total_counts``,
    ``total_counts_{qc}``, ``pct_counts_{qc}``, ``n_genes``; ``n_cells_by_counts``,
    ``mean_counts``, ``pct_dropout_by_counts``, ``total_counts``, ``n_cells``), the HVG
    columns and ``uns['hvg']``, ``var['mean']``/``var['std']`` of the log data (what
    :func:`scdask.pp.scale` would use), ``uns['log1p']``; ``obsm['X_pca']``, ``varm['PCs']``
    (zero outside the HVGs), ``uns['pca']``; and ``uns['recipe']`` with ``passes``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.recipe(adata, n_top_genes=500, n_comps=20, verbose=False)
    >>> adata.uns["recipe"]["passes"], adata.obsm["X_pca"].shape[1]
    (4, 20)
    """
    if flavor not in ("seurat", "cell_ranger"):
        raise ValueError(
            f"recipe supports flavor='seurat' or 'cell_ranger', got {flavor!r}; run "
            "scdask.pp.highly_variable_genes step by step for the others."
        )
    adata = adata.copy() if copy else adata
    qc_vars = list(qc_vars)
    missing = [q for q in qc_vars if q not in adata.var.columns]
    if missing:
        annotate_gene_groups(adata, groups=missing)
    x = get_matrix(adata)
    lazy = lazy_matrix(x)
    dtype = np.dtype(np.float32) if np.issubdtype(x.dtype, np.integer) else np.dtype(x.dtype)
    masks = np.array([np.asarray(adata.var[q], dtype=bool) for q in qc_vars]).reshape(
        len(qc_vars), x.shape[1]
    )

    # pass 1: QC metrics and both filters
    cells, gene_stats = dask.compute(
        *per_block_pass(lazy, _qc_pass, shared=[masks], min_genes=min_genes)
    )
    genes, kept_genes = gene_stats[:2], gene_stats[2]
    total_dtype = sum_dtype(x.dtype)
    adata.obs["n_genes_by_counts"] = cells[:, 0].astype(np.int64)
    adata.obs["total_counts"] = cells[:, 1].astype(total_dtype)
    for j, q in enumerate(qc_vars):
        adata.obs[f"total_counts_{q}"] = cells[:, 2 + j].astype(total_dtype)
        adata.obs[f"pct_counts_{q}"] = (
            adata.obs[f"total_counts_{q}"] / adata.obs["total_counts"] * 100
        )
    adata.var["n_cells_by_counts"] = genes[0].astype(np.int64)
    adata.var["mean_counts"] = genes[1] / x.shape[0]
    adata.var["pct_dropout_by_counts"] = (1 - genes[0] / x.shape[0]) * 100
    adata.var["total_counts"] = genes[1].astype(total_dtype)
    cell_keep = cells[:, 0] >= min_genes
    gene_keep = kept_genes >= min_cells
    n = int(cell_keep.sum())
    if n < 2 or not gene_keep.any():
        raise ValueError(
            f"Filtering leaves {n} cells and {int(gene_keep.sum())} genes; lower min_genes/min_cells."
        )

    # pass 2: normalisation, HVG moments and the scaling statistics of the log data
    norm = {"target_sum": target_sum, "out_dtype": dtype}
    factor, stats = dask.compute(
        *per_block_pass(
            lazy,
            _lognorm_pass,
            rows=[cell_keep],
            shared=[gene_keep],
            expm1=flavor == "seurat",
            **norm,
        )
    )
    stats = stats[:, gene_keep]
    table = _dispersion_flavor(
        stats[None, :_N_MOMENTS],
        np.array([n]),
        adata.var_names[gene_keep],
        flavor=flavor,
        n_bins=n_bins,
        n_top_genes=n_top_genes,
        cutoffs=_HVG_CUTOFFS,
        batched=False,
    )
    highly_variable = table["highly_variable"].to_numpy()
    mean, std = mean_std(stats[_N_MOMENTS:], n)
    kept_index = np.flatnonzero(gene_keep)
    hvg = kept_index[highly_variable]
    hvg_mean, hvg_std = mean[highly_variable], std[highly_variable]
    if n_comps > min(n, len(hvg)):
        raise ValueError(f"n_comps={n_comps} exceeds min(cells, HVGs) = {min(n, len(hvg))}.")

    # pass 3: Gram of the scaled, clipped HVG matrix (as Y = Z - 1cᵀ, sparse)
    scaled = {"out_dtype": dtype, "max_value": max_value}
    p = len(hvg)
    (stacked,) = dask.compute(
        sum_blocks(
            lazy,
            _scaled_gram,
            (p + 1, p),
            rows=[cell_keep, factor],
            shared=[hvg, hvg_mean, hvg_std],
            **scaled,
        )
    )
    gram, y_mean = stacked[:p], stacked[p] / n
    cov = (gram - n * np.outer(y_mean, y_mean)) / (n - 1)
    variance, components = top_eigh(cov, n_comps)
    components = flip_signs(components)

    # pass 4: projection
    (x_pca,) = dask.compute(
        map_rows(
            lazy,
            _scaled_project,
            n_comps,
            rows=[factor],
            shared=[hvg, hvg_mean, hvg_std, components, y_mean @ components],
            **scaled,
        )
    )

    adata.obs["n_genes"] = cells[:, 0].astype(np.int64)
    adata.var["n_cells"] = kept_genes.astype(np.int64)
    adata._inplace_subset_obs(cell_keep)
    adata._inplace_subset_var(gene_keep)
    normalize_total(adata, target_sum=target_sum)
    log1p(adata)
    adata.uns["log1p"] = {"base": None}
    for column in ("highly_variable", "means", "dispersions", "dispersions_norm"):
        adata.var[column] = table[column].to_numpy()
    adata.var["dispersions_norm"] = adata.var["dispersions_norm"].astype(np.float32)
    adata.uns["hvg"] = {"flavor": flavor}
    adata.var["mean"] = mean
    adata.var["std"] = std
    store(
        adata,
        x_pca[cell_keep].astype(np.float32),
        components,
        highly_variable,
        variance=variance,
        variance_ratio=variance / np.trace(cov),
        params={
            "zero_center": True,
            "use_highly_variable": True,
            "mask_var": "highly_variable",
            "svd_solver": "covariance",
        },
        key_added=None,
    )
    adata.uns["recipe"] = {
        "passes": 4,
        "params": {
            "min_genes": min_genes,
            "min_cells": min_cells,
            "qc_vars": qc_vars,
            "target_sum": target_sum,
            "n_top_genes": n_top_genes,
            "flavor": flavor,
            "max_value": max_value,
            "n_comps": n_comps,
        },
    }
    if verbose:
        print(
            f"scdask.pp.recipe: {adata.n_obs} cells, {adata.n_vars} genes, {p} HVGs, "
            f"{n_comps} PCs in 4 passes over X"
        )
    return adata if copy else None
