"""Highly variable genes: scanpy's four flavours from block-wise per-gene (per-batch) sums."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import norm

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
from scdask.preprocessing._normalize import _totals_kernel

__all__ = ["highly_variable_genes"]

Flavor = Literal["seurat", "cell_ranger", "seurat_v3", "seurat_v3_paper", "pearson_residuals"]

#: Rows of the per-group moment partials (each followed by the next group).
_SUM, _SUMSQ, _NPOS, _NONCOUNT = range(4)
_N_MOMENTS = 4
_MAD_SCALE = norm.ppf(0.75)


# -- block kernels -------------------------------------------------------------------------
def _group_bincount(keys: np.ndarray, weights: np.ndarray, n_groups: int, n_genes: int):
    return np.bincount(keys, weights=weights, minlength=n_groups * n_genes).reshape(
        n_groups, n_genes
    )


def _moments(block, codes: np.ndarray, *, n_groups: int, expm1_scale: float | None):
    """Per group and gene: sum, sum of squares (squared in the data dtype, as scanpy does),
    cells with a value > 0, and values that are not non-negative integers.

    ``expm1_scale``: sums are of ``expm1(x * scale)`` instead of ``x`` (the seurat flavour
    undoes the log; the count of cells > 0 is always of ``x``).
    """
    m = csr(block)
    n_genes = m.shape[1]
    keys = codes[row_of_values(m)] * n_genes + m.indices
    values = m.data
    positive = (values > 0).astype(np.float64)
    noncount = ((values < 0) | (np.mod(values, 1) != 0)).astype(np.float64)
    if expm1_scale is not None:
        if expm1_scale != 1.0:
            values = (values * expm1_scale).astype(values.dtype)
        values = np.expm1(values)
    out = np.empty((n_groups, _N_MOMENTS, n_genes))
    out[:, _SUM] = _group_bincount(keys, values.astype(np.float64), n_groups, n_genes)
    out[:, _SUMSQ] = _group_bincount(keys, (values * values).astype(np.float64), n_groups, n_genes)
    out[:, _NPOS] = _group_bincount(keys, positive, n_groups, n_genes)
    out[:, _NONCOUNT] = _group_bincount(keys, noncount, n_groups, n_genes)
    return out.reshape(n_groups * _N_MOMENTS, n_genes)


def _clipped_moments(block, codes: np.ndarray, clip_values: np.ndarray, *, n_groups: int):
    """Per group and gene: sum and sum of squares of ``min(x, clip_values[group, gene])``."""
    m = csr(block)
    n_genes = m.shape[1]
    keys = codes[row_of_values(m)] * n_genes + m.indices
    values = np.minimum(m.data.astype(np.float64), clip_values.ravel()[keys])
    return np.vstack(
        [
            _group_bincount(keys, values, n_groups, n_genes),
            _group_bincount(keys, values * values, n_groups, n_genes),
        ]
    )


def _residual_moments(
    block,
    codes: np.ndarray,
    totals: np.ndarray,
    gene_sums: np.ndarray,
    *,
    grand_totals: tuple[float, ...],
    n_groups: int,
    theta: float,
    clip: float,
    max_values: int = 2**22,
):
    """Per group and gene: sum and sum of squares of the clipped Pearson residuals.

    Genes without counts in a group give 0 (they are left out, as in scanpy). Rows are
    densified a few at a time (about ``max_values`` values), so memory stays bounded.
    """
    m = csr(block)
    grand = np.asarray(grand_totals)
    out = np.zeros((2 * n_groups, m.shape[1]))
    step = max(1, max_values // max(m.shape[1], 1))
    for lo in range(0, m.shape[0], step):
        sub = m[lo : lo + step].toarray().astype(np.float64)
        group = codes[lo : lo + step]
        genes = gene_sums[group]
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = genes * totals[lo : lo + step, np.newaxis] / grand[group, np.newaxis]
            res = (sub - mu) / np.sqrt(mu + mu * mu / theta)
        res = np.clip(res, -clip, clip)
        res[genes == 0] = 0
        for g in np.unique(group):
            r = res[group == g]
            out[g] += r.sum(axis=0)
            out[n_groups + g] += (r * r).sum(axis=0)
    return out


# -- client-side statistics ----------------------------------------------------------------
def _mean_var(sums: np.ndarray, sumsq: np.ndarray, n: np.ndarray):
    """Mean and unbiased variance from sums (scanpy's ``_get_mean_var`` arithmetic)."""
    n = np.asarray(n, dtype=np.float64)[..., np.newaxis] if np.ndim(n) else float(n)
    mean = sums / n
    var = sumsq / n - mean**2
    correction = np.where(n != 1, n / np.maximum(n - 1, 1), 1.0)
    return mean, var * correction


def _batches(adata: AnnData, batch_key: str | None) -> tuple[int, np.ndarray]:
    if batch_key is None:
        return 1, np.zeros(adata.n_obs, dtype=np.int64)
    cats = pd.Categorical(adata.obs[batch_key]).remove_unused_categories()
    return len(cats.categories), cats.codes.astype(np.int64)


def _mad(a) -> float:
    return float(np.median(np.abs(a - np.median(a)) / _MAD_SCALE)) if len(a) else np.nan


def _dispersion_table(
    mean: np.ndarray,
    var: np.ndarray,
    *,
    flavor: str,
    n_bins: int,
    n_top_genes: int | None,
    cutoffs: tuple[float, float, float, float],
) -> pd.DataFrame:
    """Means, dispersions, normalised dispersions and the selection for one batch."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    if flavor == "seurat":
        dispersion[dispersion == 0] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            dispersion = np.log(dispersion)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    if flavor == "seurat":
        bins = n_bins
    else:
        bins = np.r_[-np.inf, np.percentile(mean, np.arange(10, 105, 5)), np.inf]
    df["mean_bin"] = pd.cut(df["means"], bins=bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        stats = grouped.agg(avg="mean", dev="std")
        lone = stats["dev"].isna()
        stats.loc[lone, "dev"] = stats.loc[lone, "avg"]
        stats.loc[lone, "avg"] = 0
    else:
        stats = grouped.agg(avg="median", dev=_mad)
    per_gene = stats.loc[df["mean_bin"]]
    norm_disp = (dispersion - per_gene["avg"].to_numpy()) / per_gene["dev"].to_numpy()
    df["dispersions_norm"] = norm_disp
    if n_top_genes is None:
        min_mean, max_mean, min_disp, max_disp = cutoffs
        d = np.nan_to_num(norm_disp)
        df["highly_variable"] = (
            (mean > min_mean) & (mean < max_mean) & (d > min_disp) & (d < max_disp)
        )
        return df
    finite = np.sort(norm_disp[~np.isnan(norm_disp)])[::-1]
    n = min(n_top_genes, len(mean))
    if n > finite.size:
        warnings.warn(
            "`n_top_genes` > number of normalized dispersions, returning all genes with "
            "normalized dispersions.",
            UserWarning,
            stacklevel=4,
        )
        n = finite.size
    threshold = finite[n - 1] if n else np.inf
    df["highly_variable"] = np.nan_to_num(norm_disp, nan=-np.inf) >= threshold
    return df


def _dispersion_flavor(
    moments: np.ndarray,
    counts: np.ndarray,
    var_names: pd.Index,
    *,
    flavor: str,
    n_bins: int,
    n_top_genes: int | None,
    cutoffs: tuple[float, float, float, float],
    batched: bool,
) -> pd.DataFrame:
    """seurat / cell_ranger from per-batch moments; scanpy's batch aggregation."""
    kwargs = {"flavor": flavor, "n_bins": n_bins, "n_top_genes": n_top_genes, "cutoffs": cutoffs}
    if not batched:
        mean, var = _mean_var(moments[0, _SUM], moments[0, _SUMSQ], counts[0])
        df = _dispersion_table(mean, var, **kwargs)
        df.index = var_names
        return df
    columns = ["means", "dispersions", "dispersions_norm", "highly_variable"]
    tables = np.zeros((len(counts), len(columns), len(var_names)))
    for b, n in enumerate(counts):
        expressed = moments[b, _NPOS] > 0
        mean, var = _mean_var(moments[b, _SUM, expressed], moments[b, _SUMSQ, expressed], n)
        df = _dispersion_table(mean, var, **kwargs)
        tables[b][:, expressed] = df[columns].to_numpy(dtype=np.float64).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        agg = np.nanmean(tables[:, :3], axis=0)
    df = pd.DataFrame(agg.T, index=var_names, columns=columns[:3])
    nbatches = tables[:, 3].sum(axis=0).astype(np.int64)
    df["highly_variable_nbatches"] = nbatches
    df["highly_variable_intersection"] = nbatches == len(counts)
    if n_top_genes is None:
        min_mean, max_mean, min_disp, max_disp = cutoffs
        df["dispersions_norm"] = df["dispersions_norm"].fillna(0)
        d, m = df["dispersions_norm"], df["means"]
        df["highly_variable"] = (m > min_mean) & (m < max_mean) & (d > min_disp) & (d < max_disp)
    else:
        # ties are broken in gene-name order, the order scanpy's groupby leaves them in
        by_name = np.argsort(np.asarray(var_names, dtype=str), kind="stable")
        columns_desc = ["highly_variable_nbatches", "dispersions_norm"]
        chosen = by_name[_top(df.iloc[by_name], columns_desc, [False, False], n_top_genes)]
        df["highly_variable"] = np.isin(np.arange(len(df)), chosen)
    return df[[*columns, "highly_variable_nbatches", "highly_variable_intersection"]]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each gene within each row, 0 = largest value."""
    order = np.argsort(-values, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(values.shape[1])[np.newaxis], axis=1)
    return ranks


def _rank_summary(per_batch: np.ndarray, n_top_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: median within-batch rank among the top genes (NaN if never) and #batches."""
    ranks = _ranks(per_batch).astype(np.float32)
    nbatches = (ranks < n_top_genes).sum(axis=0).astype(np.int64)
    ranks[ranks >= n_top_genes] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(ranks, axis=0)
    return median, nbatches


def _top(df: pd.DataFrame, columns: list[str], ascending: list[bool], n: int) -> np.ndarray:
    """Positions of the first ``n`` rows of ``df`` sorted by ``columns`` (NaN last, stable)."""
    ranked = df.reset_index(drop=True).sort_values(columns, ascending=ascending, na_position="last")
    return ranked.index.to_numpy()[:n]


def _regularized_std(mean: np.ndarray, var: np.ndarray, span: float) -> np.ndarray:
    """Per gene: the standard deviation that a loess fit of log10 variance on log10 mean
    expects (1 for genes without variance), as Seurat's ``vst``."""
    try:
        from skmisc.loess import loess
    except ImportError as e:
        raise ImportError(
            "flavor='seurat_v3' needs scikit-misc: pip install scikit-misc (or scdask[scanpy])."
        ) from e
    fitted = np.zeros_like(mean)
    varying = var > 0
    model = loess(np.log10(mean[varying]), np.log10(var[varying]), span=span, degree=2)
    model.fit()
    fitted[varying] = model.outputs.fitted_values
    return np.sqrt(10**fitted)


def highly_variable_genes(
    adata: AnnData,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    n_top_genes: int | None = None,
    min_disp: float = 0.5,
    max_disp: float = np.inf,
    min_mean: float = 0.0125,
    max_mean: float = 3,
    span: float = 0.3,
    n_bins: int = 20,
    flavor: Flavor = "seurat",
    subset: bool = False,
    inplace: bool = True,
    batch_key: str | None = None,
    check_values: bool = True,
    theta: float = 100,
    clip: float | None = None,
) -> pd.DataFrame | None:
    """Annotate highly variable genes exactly as scanpy 1.11 does, from block-wise sums.

    Flavours: ``"seurat"`` (expects log1p data: dispersions of ``expm1(x)``, mean bins),
    ``"cell_ranger"`` (expects log1p data: percentile bins, median/MAD normalisation),
    ``"seurat_v3"``/``"seurat_v3_paper"`` (expects counts: loess-standardised clipped
    variance; ties ordered as scanpy) and ``"pearson_residuals"`` (expects counts: variance
    of the clipped analytic Pearson residuals, as ``scanpy.experimental.pp``). Results go
    to ``var`` under scanpy's names (``highly_variable``, ``means``, ``dispersions``,
    ``dispersions_norm``, ``variances``, ``variances_norm``, ``residual_variances``,
    ``highly_variable_rank``, ``highly_variable_nbatches``,
    ``highly_variable_intersection``) and ``uns['hvg']``. With ``batch_key`` genes are
    ranked per batch and combined as scanpy combines them.

    Passes over X: 1 for ``seurat`` and ``cell_ranger`` (per-gene, per-batch sums and
    sums of squares); 2 for ``seurat_v3`` (the clip values need the loess fit of the
    first pass's means and variances) and for ``pearson_residuals`` (the residuals need the
    cell and gene totals of the first pass).

    Parameters
    ----------
    adata
        Cells x genes; ``X`` lazy (Dask) or in memory.
    layer
        Use ``adata.layers[layer]`` instead of ``X``.
    use_raw
        Use ``adata.raw.X`` instead of ``X`` (e.g. the counts of a CELLxGENE file for
        ``seurat_v3``); ``raw`` must have ``var``'s genes (the results go into ``var``).
    n_top_genes
        Number of genes to select (required for ``pearson_residuals``; 2000 by default
        for ``seurat_v3``); for ``seurat``/``cell_ranger`` it replaces the cutoffs.
    min_disp, max_disp, min_mean, max_mean
        Cutoffs on the normalised dispersion and the mean (``seurat``/``cell_ranger``).
    span
        Loess span (``seurat_v3``).
    n_bins
        Number of mean bins (``seurat``).
    flavor
        The method, see above.
    subset
        Keep only the highly variable genes (a lazy column selection).
    inplace
        Write into ``adata`` (default) or return the table.
    batch_key
        Column of ``obs`` with the batches.
    check_values
        Warn when a counts flavour sees values that are not non-negative integers.
    theta, clip
        Overdispersion and residual clip (``pearson_residuals``); ``clip=None`` uses
        ``sqrt(n_cells)`` of the first batch for every batch, as scanpy 1.11 does.

    Returns
    -------
    pandas.DataFrame or None
        The table if ``inplace=False`` (only the selected genes if ``subset``).

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> scdask.pp.log1p(adata)
    >>> scdask.pp.highly_variable_genes(adata, n_top_genes=500)
    >>> int(adata.var["highly_variable"].sum())
    500
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"highly_variable_genes needs an AnnData, got {type(adata).__name__}.")
    if flavor not in Flavor.__args__:
        raise InputError(f"Unknown flavor {flavor!r}; choose from {list(Flavor.__args__)}.")
    x = get_matrix(adata, layer=layer, use_raw=use_raw, step="highly_variable_genes")
    lazy = lazy_matrix(x)
    n_groups, codes = _batches(adata, batch_key)
    counts = np.bincount(codes, minlength=n_groups)
    if flavor in ("seurat", "cell_ranger"):
        defaults = (0.0125, 3, 0.5, np.inf)
        cutoffs = (min_mean, max_mean, min_disp, max_disp)
        if n_top_genes is not None and cutoffs != defaults:
            warnings.warn(
                "If you pass `n_top_genes`, all cutoffs are ignored.", UserWarning, stacklevel=2
            )
        scale = None
        if flavor == "seurat":
            base = adata.uns.get("log1p", {}).get("base")
            scale = 1.0 if base is None else float(np.log(base))
        (moments,) = compute(
            gene_partials(
                lazy,
                _moments,
                n_groups * _N_MOMENTS,
                rows=[codes],
                n_groups=n_groups,
                expm1_scale=scale,
            )
        )
        moments = moments.reshape(n_groups, _N_MOMENTS, -1)
        df = _dispersion_flavor(
            moments,
            counts,
            adata.var_names,
            flavor=flavor,
            n_bins=n_bins,
            n_top_genes=n_top_genes,
            cutoffs=cutoffs,
            batched=batch_key is not None,
        )
        written = ["highly_variable", "means", "dispersions", "dispersions_norm"]
        if batch_key is not None:
            written += ["highly_variable_nbatches", "highly_variable_intersection"]
        uns = {"flavor": flavor}
    else:
        if flavor == "pearson_residuals":
            if n_top_genes is None:
                raise InputError("flavor='pearson_residuals' needs `n_top_genes`.")
            if theta <= 0:
                raise InputError("Pearson residuals require theta > 0")
            if clip is not None and clip < 0:
                raise InputError("Pearson residuals require `clip>=0` or `clip=None`.")
        n_top_genes = 2000 if n_top_genes is None else n_top_genes
        graphs = [
            gene_partials(
                lazy,
                _moments,
                n_groups * _N_MOMENTS,
                rows=[codes],
                n_groups=n_groups,
                expm1_scale=None,
            )
        ]
        if flavor == "pearson_residuals":
            ones = np.ones(x.shape[1], dtype=bool)
            graphs.append(
                row_partials(lazy, _totals_kernel, 1, genes=[ones], out_dtype=np.float64)[:, 0]
            )
        first = compute(*graphs)
        moments = first[0].reshape(n_groups, _N_MOMENTS, -1)
        if check_values and moments[:, _NONCOUNT].sum() > 0:
            warnings.warn(
                f"`flavor={flavor!r}` expects raw count data, but non-integers were found.",
                UserWarning,
                stacklevel=2,
            )
        total = moments.sum(axis=0)
        means, variances = _mean_var(total[_SUM], total[_SUMSQ], x.shape[0])
        df = pd.DataFrame({"means": means, "variances": variances}, index=adata.var_names)
        if flavor == "pearson_residuals":
            per_batch = _pearson_variances(
                lazy, codes, first[1], moments, counts, theta=theta, clip=clip
            )
            df["residual_variances"] = per_batch.mean(axis=0)
            df["highly_variable_rank"], nbatches = _rank_summary(per_batch, n_top_genes)
            df["highly_variable_nbatches"] = nbatches
            df["highly_variable_intersection"] = nbatches == n_groups
            chosen = _top(
                df, ["highly_variable_nbatches", "highly_variable_rank"], [False, True], n_top_genes
            )
            df["highly_variable"] = np.isin(np.arange(len(df)), chosen)
            written = ["means", "variances", "residual_variances", "highly_variable_rank"]
            extra = ["highly_variable_nbatches", "highly_variable_intersection"]
            written += (extra if batch_key is not None else []) + ["highly_variable"]
            if batch_key is None:
                df = df.drop(columns=extra)
            uns = {
                "flavor": flavor,
                "computed_on": layer or ("adata.raw.X" if use_raw else "adata.X"),
            }
        else:
            per_batch = _seurat_v3_variances(lazy, codes, moments, counts, span=span)
            df["gene_name"] = df.index
            rank, df["highly_variable_nbatches"] = _rank_summary(per_batch, n_top_genes)
            df["highly_variable_rank"] = rank
            df["variances_norm"] = per_batch.mean(axis=0)
            order = ["highly_variable_rank", "highly_variable_nbatches"]
            ascending = [True, False]
            if flavor == "seurat_v3_paper":
                order, ascending = order[::-1], ascending[::-1]
            chosen = _top(df, order, ascending, n_top_genes)
            df["highly_variable"] = np.isin(np.arange(len(df)), chosen)
            written = [
                "highly_variable",
                "highly_variable_rank",
                "means",
                "variances",
                "variances_norm",
            ]
            if batch_key is not None:
                written.append("highly_variable_nbatches")
            else:
                df = df.drop(columns=["highly_variable_nbatches"])
            uns = {"flavor": flavor}
    if not inplace:
        return df[df["highly_variable"].to_numpy()] if subset else df
    adata.uns["hvg"] = uns
    for column in written:
        # scanpy stores the normalised dispersions as float32 (but returns float64)
        dtype = np.float32 if column == "dispersions_norm" else None
        adata.var[column] = df[column].to_numpy(dtype=dtype)
    if subset:
        adata._inplace_subset_var(df["highly_variable"].to_numpy())
    return None


def _seurat_v3_variances(lazy, codes, moments, counts, *, span: float) -> np.ndarray:
    """Second pass of seurat_v3: per batch, the standardised variance of clipped counts."""
    mean, var = _mean_var(moments[:, _SUM], moments[:, _SUMSQ], counts)
    reg_std = np.vstack([_regularized_std(m, v, span) for m, v in zip(mean, var, strict=True)])
    clip_values = reg_std * np.sqrt(counts.astype(np.float64))[:, np.newaxis] + mean
    n_groups = len(counts)
    (clipped,) = compute(
        gene_partials(
            lazy,
            _clipped_moments,
            2 * n_groups,
            rows=[codes],
            genes=[clip_values],
            n_groups=n_groups,
        )
    )
    sums, sumsq = clipped[:n_groups], clipped[n_groups:]
    n = counts.astype(np.float64)[:, np.newaxis]
    return (1 / ((n - 1) * np.square(reg_std))) * (n * np.square(mean) + sumsq - 2 * sums * mean)


def _pearson_variances(lazy, codes, totals, moments, counts, *, theta, clip) -> np.ndarray:
    """Second pass of pearson_residuals: per batch, the variance of clipped residuals."""
    n_groups = len(counts)
    gene_sums = moments[:, _SUM]
    if clip is None:
        clip = float(np.sqrt(counts[0]))
    (res,) = compute(
        gene_partials(
            lazy,
            _residual_moments,
            2 * n_groups,
            rows=[codes, totals],
            genes=[gene_sums],
            grand_totals=tuple(float(s) for s in gene_sums.sum(axis=1)),
            n_groups=n_groups,
            theta=float(theta),
            clip=float(clip),
        )
    )
    n = counts.astype(np.float64)[:, np.newaxis]
    mean = res[:n_groups] / n
    return res[n_groups:] / n - mean**2
