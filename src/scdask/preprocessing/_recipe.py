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

Every pass runs one task per block that reads the block and returns all that the pass needs
of it (the read is inlined in that task, :func:`scdask.preprocessing._blocks.block_tasks`), so
a block is freed as soon as it is used; per-gene partials are added by
:func:`~scdask.preprocessing._blocks.running_sum`. Worker memory depends on the block size
only, not on the number of cells.

The block kernels are numba loops over the CSR arrays that fuse what numpy did in several
sweeps (``np.repeat`` of the row factors, one ``np.bincount`` per statistic, float64 copies,
the copy of the block that dropped explicit zeros): pass 1 is one sweep; pass 2 divides,
takes numpy's ``log1p``/``expm1`` (the functions scanpy calls, so values stay equal) and sums
the moments in one sweep each; passes 3 and 4 take the HVG columns first (scipy's column
index: ~10 % of the values) and scale only those. The Gram matrix is accumulated by a tiled
sparse kernel over the pairs of non-zeros of each row, except for the columns above 20 %
non-zero, which go through BLAS (:func:`~scdask.preprocessing._pca.gram_block`), in float64,
upper triangle only, packed. Measured at 100,000 cells x 20,000 genes (~10 % dense, 24
blocks), CPU seconds per pass in one process, reading (~1.1 s per pass) excluded: QC 5.6 →
1.4, normalisation/HVG 6.9 → 1.9, Gram 10.8 → 5.6 (→ 3.1 s for ``gram_block`` alone once the
dense columns go through BLAS), projection 1.05 → 0.96.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import anndata as ad
import numba
import numpy as np
import scipy.sparse as sp

from scdask._compute import compute
from scdask._errors import InputError, counts_fix, require_counts
from scdask.preprocessing._blocks import (
    csr,
    gene_names,
    get_matrix,
    lazy_matrix,
    map_rows,
    matrix_name,
    per_block_pass,
    sum_blocks,
    sum_dtype,
)
from scdask.preprocessing._hvg import _N_MOMENTS, _SUM, _SUMSQ, _dispersion_flavor
from scdask.preprocessing._normalize import _factors, log1p, normalize_total
from scdask.preprocessing._pca import (
    flip_signs,
    gram_block,
    gram_size,
    store,
    top_eigh,
    unpack_gram,
)
from scdask.preprocessing._qc import annotate_gene_groups
from scdask.preprocessing._scale import mean_std

__all__ = ["recipe"]

#: scanpy's HVG cutoffs (ignored when ``n_top_genes`` is given).
_HVG_CUTOFFS = (0.0125, 3, 0.5, np.inf)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _qc_kernel(indptr, indices, data, masks, min_genes, cells, genes):  # pragma: no cover
    """Pass 1 in one sweep over the stored values (explicit zeros skipped).

    ``cells[r]``: genes detected, total, totals per row of ``masks``, then its values that
    are non-finite, negative and not whole (the counts check); ``genes[j]``: cells
    detected, total, cells detected among the cells with at least ``min_genes`` genes (the
    three side by side, so a value touches one cache line). Sums run in float64 in the
    order of the rows and values, like scanpy's (and bincount's) arithmetic.
    """
    checks = cells.shape[1] - 3
    for r in range(indptr.shape[0] - 1):
        lo, hi = indptr[r], indptr[r + 1]
        count = 0
        nonfinite = 0
        negative = 0
        fractional = 0
        for a in range(lo, hi):
            value = np.float64(data[a])
            count += value != 0
            if not np.isfinite(value):
                nonfinite += 1
            elif value < 0:
                negative += 1
            elif value != np.floor(value):
                fractional += 1
        cells[r, checks] = nonfinite
        cells[r, checks + 1] = negative
        cells[r, checks + 2] = fractional
        kept = 1.0 if count >= min_genes else 0.0
        total = 0.0
        for a in range(lo, hi):
            value = np.float64(data[a])
            if value == 0:
                continue
            total += value
            gene = genes[indices[a]]
            gene[0] += 1.0
            gene[1] += value
            gene[2] += kept
        cells[r, 0] = count
        cells[r, 1] = total
        for g in range(masks.shape[0]):
            total = 0.0
            for a in range(lo, hi):
                if masks[g, indices[a]]:
                    total += np.float64(data[a])
            cells[r, 2 + g] = total


def _qc_pass(block, masks, *, min_genes: int):
    """Pass 1: per cell QC (as ``_qc_cells``); per gene QC (as ``_qc_genes``) and detected
    cells among the cells with at least ``min_genes`` genes."""
    m = _plain_csr(block)
    cells = np.zeros((m.shape[0], 2 + masks.shape[0] + 3))
    genes = np.zeros((m.shape[1], 3))
    _qc_kernel(m.indptr, m.indices, m.data, masks, min_genes, cells, genes)
    return cells, genes.T


def _plain_csr(block) -> sp.csr_array:
    """The block as a scipy CSR array without copying (kernels skip explicit zeros
    themselves, so :func:`csr`'s copy that drops them is not needed)."""
    if isinstance(block, np.ndarray):
        return csr(block)
    b = block.to_scipy() if hasattr(block, "to_scipy") else block
    return b if b.format == "csr" else sp.csr_array(b)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _kept_totals(indptr, indices, data, gene_keep):  # pragma: no cover (numba)
    """Per row, the float64 sum of its values in the kept genes (``m @ gene_keep``)."""
    totals = np.zeros(indptr.shape[0] - 1)
    for r in range(totals.shape[0]):
        total = 0.0
        for a in range(indptr[r], indptr[r + 1]):
            if gene_keep[indices[a]]:
                total += data[a]
        totals[r] = total
    return totals


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _scale_values(indptr, data, factor):  # pragma: no cover (numba)
    """``data / factor[row]`` for every stored value, in the dtype of ``factor`` (cast first,
    then divided: ``normalize_total``'s arithmetic, without numpy's per-value ``repeat``)."""
    values = np.empty(data.shape[0], dtype=factor.dtype)
    for r in range(indptr.shape[0] - 1):
        f = factor[r]
        for a in range(indptr[r], indptr[r + 1]):
            values[a] = data[a]
            values[a] /= f
    return values


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _add_moments(indptr, indices, values, row_keep, out):  # pragma: no cover (numba)
    """``out[j]`` += (sum, sum of squares) of column ``j``'s values in the rows of
    ``row_keep``: squared in their dtype and summed in float64 (scanpy's arithmetic), in the
    order of the values (as ``np.bincount``)."""
    for r in range(indptr.shape[0] - 1):
        if not row_keep[r]:
            continue
        for a in range(indptr[r], indptr[r + 1]):
            v = values[a]
            column = out[indices[a]]
            column[0] += np.float64(v)
            column[1] += np.float64(v * v)


def _factors_over(m: sp.csr_array, gene_keep: np.ndarray, *, target_sum: float, out_dtype):
    """Per-cell normalisation factors over the kept genes, as ``normalize_total`` uses them."""
    totals = _kept_totals(m.indptr, m.indices, m.data, gene_keep)
    factor = _factors(totals, target_sum, out_dtype)
    factor[factor == 0] = 1
    return factor


def _lognorm(
    m: sp.csr_array, factor: np.ndarray, *, out_dtype, columns=None, rows=None
) -> sp.csr_array:
    """``log1p(m / factor)`` per row, in ``out_dtype`` (normalize_total + log1p arithmetic).

    ``columns``: the columns to keep, in order (default all); ``rows``: boolean mask of the
    rows to keep (default all). Columns are selected first (scipy's C++ column index: the
    HVGs hold ~10 % of the values, so the rest works on a small matrix); the division is a
    numba sweep and the logarithm numpy's (vectorised, and the function scanpy calls, so
    values are equal).
    """
    factor = np.asarray(factor, dtype=out_dtype)
    if columns is not None:
        m = m[:, columns]
    if rows is not None:
        m, factor = m[rows], factor[rows]
    values = _scale_values(m.indptr, m.data, factor)
    np.log1p(values, out=values)
    return sp.csr_array((values, m.indices, m.indptr), shape=m.shape)


def _lognorm_pass(block, cell_keep, gene_keep, *, target_sum, out_dtype, expm1: bool):
    """Pass 2: per cell, the normalisation factor (1 for dropped cells); per gene, sum and sum
    of squares of the HVG values (``expm1`` of the logs for seurat) then of the logs (the
    scaling statistics) over the kept cells, rows laid out like scdask's HVG moments."""
    m = _plain_csr(block)
    factor = _factors_over(m, gene_keep, target_sum=target_sum, out_dtype=out_dtype)
    factor = np.where(cell_keep, factor, 1).astype(factor.dtype)
    logged = _lognorm(m, factor, out_dtype=out_dtype)
    dispersed = np.expm1(logged.data) if expm1 else logged.data
    keep = np.asarray(cell_keep, dtype=bool)
    sums = np.zeros((2, logged.shape[1], 2))
    _add_moments(m.indptr, m.indices, dispersed, keep, sums[0])
    _add_moments(m.indptr, m.indices, logged.data, keep, sums[1])
    out = np.zeros((_N_MOMENTS + 2, logged.shape[1]))
    out[[_SUM, _SUMSQ]] = sums[0].T
    out[[_N_MOMENTS, _N_MOMENTS + 1]] = sums[1].T
    return factor, out


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _shifted_scores(indices, logged, mean, std, max_value):  # pragma: no cover (numba)
    """Per stored value: ``clip((x - mean) / std) - clip(-mean / std)`` of its column, in
    float64 (the same IEEE operations as the numpy expression, without its temporaries);
    ``max_value < 0`` does not clip."""
    out = np.empty(logged.shape[0])
    for a in range(logged.shape[0]):
        j = indices[a]
        z = (np.float64(logged[a]) - mean[j]) / std[j]
        zero = -mean[j] / std[j]
        if max_value >= 0:
            z = min(max(z, -max_value), max_value)
            zero = min(max(zero, -max_value), max_value)
        out[a] = z - zero
    return out


def scaled_shifted(block, factor, hvg, mean, std, *, out_dtype, max_value, rows=None):
    """``Y`` of one block: the clipped z-scores of the HVG columns minus their zero's value.

    ``Z = Y + 1cᵀ`` with ``c = clip(-mean/std)``; ``Y`` keeps the sparsity of the block.
    ``factor`` holds the normalisation factors of the block's cells (from pass 2); ``rows``
    (boolean) keeps only those cells.
    """
    logged = _lognorm(_plain_csr(block), factor, out_dtype=out_dtype, columns=hvg, rows=rows)
    clip = -1.0 if max_value is None else float(max_value)
    data = _shifted_scores(logged.indices, logged.data, mean, std, clip)
    return sp.csr_array((data, logged.indices, logged.indptr), shape=logged.shape)


def _scaled_gram(block, cell_keep, factor, hvg, mean, std, **kwargs):
    return gram_block(scaled_shifted(block, factor, hvg, mean, std, rows=cell_keep, **kwargs))


def _scaled_project(block, factor, hvg, mean, std, components, shift, **kwargs):
    """Pass 4: the block's PCA coordinates, float32 as scanpy stores them (half the bytes
    to gather)."""
    y = scaled_shifted(block, factor, hvg, mean, std, **kwargs)
    return (np.asarray(y @ components) - shift).astype(np.float32)


def _on_raw_genes(adata: ad.AnnData, gene_symbols: str | None) -> ad.AnnData:
    """A new AnnData on ``raw``'s genes: ``X`` and ``var`` are ``raw.X``/``raw.var`` (not
    copied), obs/obsm/obsp/uns are ``adata``'s, ``raw`` is kept; a ``gene_symbols`` column
    only ``var`` has is carried over by gene name."""
    raw = adata.raw
    var = raw.var.copy()
    if gene_symbols is not None and gene_symbols not in var.columns:
        var[gene_symbols] = gene_names(adata, gene_symbols=gene_symbols, use_raw=True)
    work = ad.AnnData(
        X=raw.X,
        obs=adata.obs.copy(),
        var=var,
        obsm=dict(adata.obsm),
        obsp=dict(adata.obsp),
        uns=dict(adata.uns),
    )
    work.raw = ad.AnnData(X=raw.X, obs=work.obs[[]], var=raw.var, varm=dict(raw.varm))
    return work


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
    layer: str | None = None,
    use_raw: bool = False,
    gene_symbols: str | None = None,
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
    scaled HVG matrix; projection), one ``dask.compute`` each. The first pass also checks
    that ``X`` holds counts (finite, non-negative, whole numbers): log-normalised or scaled
    data raises :class:`scdask.InputError` naming where the counts are, instead of being
    normalised again.

    The counts may be in a layer (``layer=``) or in ``.raw`` (``use_raw=True``: a
    CELLxGENE file keeps its counts in ``raw.X`` and normalised values in ``X``); the
    result's ``X`` is then built from them. When ``raw.var`` has other genes than
    ``var``, the result is built on **raw's genes**: ``var`` becomes (the kept genes of)
    ``raw.var``, and the layers, ``varm`` and ``varp`` of ``adata``, which belong to the
    other genes, are dropped (``raw`` is kept).

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
        annotated from the gene names (or ``gene_symbols``) when missing.
    target_sum
        ``normalize_total(target_sum=...)`` (a fixed target keeps the normalisation
        blockwise; the median target would cost one more pass).
    n_top_genes, flavor, n_bins
        ``highly_variable_genes`` (``"seurat"`` or ``"cell_ranger"``).
    max_value
        ``scale(max_value=...)``; ``None`` does not clip.
    n_comps
        Number of principal components.
    layer, use_raw
        Where the counts are: ``adata.layers[layer]`` or ``adata.raw.X`` (default: ``X``).
        Not both.
    gene_symbols
        Column of ``var`` with the gene symbols the ``mt``/``ribo``/``hb`` rules match
        (e.g. ``"feature_name"`` when ``var_names`` are Ensembl IDs); ``None``:
        ``var_names``.
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
        raise InputError(
            f"recipe supports flavor='seurat' or 'cell_ranger', got {flavor!r}; run "
            "scdask.pp.highly_variable_genes step by step for the others."
        )
    options = {
        "min_genes": min_genes,
        "min_cells": min_cells,
        "qc_vars": qc_vars,
        "target_sum": target_sum,
        "n_top_genes": n_top_genes,
        "flavor": flavor,
        "n_bins": n_bins,
        "max_value": max_value,
        "n_comps": n_comps,
        "gene_symbols": gene_symbols,
        "verbose": verbose,
    }
    get_matrix(adata, layer=layer, use_raw=use_raw)  # refuses layer with use_raw, no raw
    if use_raw and not adata.raw.var_names.equals(adata.var_names):
        work = _on_raw_genes(adata, gene_symbols)
        recipe(work, **options)
        work.uns["recipe"]["params"]["matrix"] = "raw.X"
        if copy:
            return work
        adata._init_as_actual(work)
        return None
    adata = adata.copy() if copy else adata
    qc_vars = list(qc_vars)
    missing = [q for q in qc_vars if q not in adata.var.columns]
    if missing:
        annotate_gene_groups(adata, groups=missing, gene_symbols=gene_symbols)
    x = get_matrix(adata, layer=layer, use_raw=use_raw)
    where = matrix_name(layer=layer, use_raw=use_raw)
    if x.shape[0] < 2 or x.shape[1] == 0:
        raise InputError(
            f"recipe needs at least 2 cells and 1 gene; {where} has {x.shape[0]} cells x "
            f"{x.shape[1]} genes (check the file or the filter that made it)"
        )
    lazy = lazy_matrix(x)
    dtype = np.dtype(np.float32) if np.issubdtype(x.dtype, np.integer) else np.dtype(x.dtype)
    masks = np.array([np.asarray(adata.var[q], dtype=bool) for q in qc_vars]).reshape(
        len(qc_vars), x.shape[1]
    )

    # pass 1: QC metrics and both filters
    cells, gene_stats = compute(
        *per_block_pass(lazy, _qc_pass, shared=[masks], min_genes=min_genes)
    )
    require_counts(
        cells[:, -3:].sum(axis=0),
        step="recipe",
        fix=counts_fix(adata, layer=layer, use_raw=use_raw),
        matrix=where,
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
        raise InputError(
            f"Filtering leaves {n} cells and {int(gene_keep.sum())} genes; lower min_genes/min_cells."
        )

    # pass 2: normalisation, HVG moments and the scaling statistics of the log data
    norm = {"target_sum": target_sum, "out_dtype": dtype}
    factor, stats = compute(
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
        raise InputError(f"n_comps={n_comps} exceeds min(cells, HVGs) = {min(n, len(hvg))}.")

    # pass 3: Gram of the scaled, clipped HVG matrix (as Y = Z - 1cᵀ, sparse)
    scaled = {"out_dtype": dtype, "max_value": max_value}
    p = len(hvg)
    (packed,) = compute(
        sum_blocks(
            lazy,
            _scaled_gram,
            (gram_size(p),),
            rows=[cell_keep, factor],
            shared=[hvg, hvg_mean, hvg_std],
            **scaled,
        )
    )
    gram, y_sums = unpack_gram(packed, p)
    y_mean = y_sums / n
    cov = (gram - n * np.outer(y_mean, y_mean)) / (n - 1)
    variance, components = top_eigh(cov, n_comps)
    components = flip_signs(components)

    # pass 4: projection (blocks joined here, not in a task on a worker: see scdask._compute)
    (x_pca,) = compute(
        map_rows(
            lazy,
            _scaled_project,
            n_comps,
            rows=[factor],
            shared=[hvg, hvg_mean, hvg_std, components, y_mean @ components],
            dtype=np.float32,
            **scaled,
        )
    )

    adata.obs["n_genes"] = cells[:, 0].astype(np.int64)
    adata.var["n_cells"] = kept_genes.astype(np.int64)
    if layer is not None or use_raw:  # X is made from the counts wherever they were
        adata.X = x
    adata._inplace_subset_obs(cell_keep)
    adata._inplace_subset_var(gene_keep)
    normalize_total(adata, target_sum=target_sum)
    adata.uns.pop("log1p", None)  # X holds counts (pass 1 checked): not logged before
    log1p(adata)
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
            "matrix": where,
            **({"gene_symbols": gene_symbols} if gene_symbols is not None else {}),
        },
    }
    if verbose:
        print(
            f"scdask.pp.recipe: {adata.n_obs} cells, {adata.n_vars} genes, {p} HVGs, "
            f"{n_comps} PCs in 4 passes over X"
        )
    return adata if copy else None
