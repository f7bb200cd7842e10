"""Quality-control metrics in one pass over the matrix.

The per-block machinery lives in :mod:`scdask.preprocessing._blocks`.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scdask._compute import compute
from scdask._errors import InputError
from scdask.preprocessing._blocks import (
    csr,
    gene_names,
    gene_partials,
    get_matrix,
    lazy_matrix,
    row_of_values,
    row_partials,
    set_columns,
    sum_dtype,
)

__all__ = ["annotate_gene_groups", "calculate_qc_metrics"]

#: Gene-name patterns of the groups :func:`annotate_gene_groups` marks (human, mouse).
GENE_GROUPS: dict[str, str] = {
    "mt": r"^(?:MT-|mt-)",
    "ribo": r"^(?:RP[SL]|Rp[sl])",
    "hb": r"^(?:HB[^P]|Hb[^p])",
}


# -- QC kernels ----------------------------------------------------------------------------
def _top_cumsums(m: sp.csr_array, ns: np.ndarray, max_values: int = 2**22) -> np.ndarray:
    """Per row, the sum of its ``n`` largest values for each ``n`` in ``ns`` (sorted).

    Rows are laid out densely (as wide as the fullest row) a few at a time, about
    ``max_values`` values, then partially sorted.
    """
    n_max = int(ns[-1])
    width = max(int(np.diff(m.indptr).max(initial=0)), n_max)
    step = max(1, max_values // width)
    out = np.zeros((m.shape[0], len(ns)))
    for lo in range(0, m.shape[0], step):
        sub = m[lo : lo + step]
        dense = np.zeros((sub.shape[0], width))
        rows = row_of_values(sub)
        dense[rows, np.arange(sub.nnz) - sub.indptr[rows]] = sub.data
        if width > n_max:
            dense = -np.partition(-dense, n_max - 1, axis=1)[:, :n_max]
        dense = -np.sort(-dense, axis=1)
        out[lo : lo + sub.shape[0]] = np.cumsum(dense, axis=1)[:, ns - 1]
    return out


def _qc_cells(block, qc_masks: np.ndarray, *, ns: tuple[int, ...]) -> np.ndarray:
    """Per cell: [n_genes, total, top-n sums..., total per gene group...]."""
    m = csr(block)
    parts = [np.diff(m.indptr)[:, None], np.asarray(m.sum(axis=1, dtype=np.float64))[:, None]]
    if ns:
        parts.append(_top_cumsums(m, np.asarray(ns)))
    if qc_masks.shape[0]:
        parts.append(m @ qc_masks.T.astype(np.float64))
    return np.hstack(parts).astype(np.float64)


def _qc_genes(block) -> np.ndarray:
    """Per gene: [n_cells, total]."""
    m = csr(block)
    n_cells = np.bincount(m.indices, minlength=m.shape[1])
    totals = np.bincount(m.indices, weights=m.data.astype(np.float64), minlength=m.shape[1])
    return np.vstack([n_cells, totals])


def annotate_gene_groups(
    adata: AnnData,
    *,
    groups: Collection[str] = ("mt", "ribo", "hb"),
    gene_symbols: str | None = None,
) -> list[str]:
    """Mark mitochondrial, ribosomal and haemoglobin genes as boolean columns of ``var``.

    ``var['mt']``: names starting ``MT-`` (human) or ``mt-`` (mouse); ``var['ribo']``:
    ``RPS``/``RPL`` (``Rps``/``Rpl``); ``var['hb']``: ``HB`` not followed by ``P``
    (``Hb`` not followed by ``p``), which leaves out the haptoglobin-like ``HBP1``.

    Passes over X: none (only the gene names are read).

    Parameters
    ----------
    adata
        The annotated data; ``var`` gets one boolean column per group.
    groups
        Which of ``"mt"``, ``"ribo"``, ``"hb"`` to mark.
    gene_symbols
        Column of ``var`` holding the gene symbols (e.g. ``"feature_name"`` when
        ``var_names`` are Ensembl IDs, as in CELLxGENE files); ``None`` uses ``var_names``.

    Returns
    -------
    list of str
        The names of the columns written (ready for ``calculate_qc_metrics(qc_vars=...)``).

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> from scdask.preprocessing import annotate_gene_groups
    >>> adata = ad.AnnData(np.ones((2, 4)))
    >>> adata.var_names = ["MT-CO1", "RPL3", "HBB", "CD3E"]
    >>> annotate_gene_groups(adata)
    ['mt', 'ribo', 'hb']
    >>> adata.var["mt"].tolist()
    [True, False, False, False]
    """
    unknown = set(groups) - set(GENE_GROUPS)
    if unknown:
        raise InputError(f"Unknown gene groups {sorted(unknown)}; choose from {list(GENE_GROUPS)}.")
    names = gene_names(adata, gene_symbols=gene_symbols)
    for group in groups:
        adata.var[group] = np.asarray(names.str.contains(GENE_GROUPS[group], regex=True))
    return list(groups)


def calculate_qc_metrics(
    adata: AnnData,
    *,
    expr_type: str = "counts",
    var_type: str = "genes",
    qc_vars: Collection[str] | str = (),
    percent_top: Collection[int] | None = (50, 100, 200, 500),
    layer: str | None = None,
    use_raw: bool = False,
    gene_symbols: str | None = None,
    log1p: bool = True,
    inplace: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per-cell and per-gene quality-control metrics, as scanpy computes them.

    Columns (with scanpy's names, for ``expr_type="counts"``, ``var_type="genes"``):
    ``obs``: ``n_genes_by_counts``, ``total_counts``, ``pct_counts_in_top_{n}_genes``,
    ``total_counts_{qc_var}``, ``pct_counts_{qc_var}`` and the ``log1p_`` versions of the
    totals and counts; ``var``: ``n_cells_by_counts``, ``mean_counts``,
    ``pct_dropout_by_counts``, ``total_counts`` and ``log1p_mean_counts``,
    ``log1p_total_counts``. Totals keep scanpy's dtypes (float32 for float32 counts).

    Passes over X: 1 (all cell and gene statistics, including the per-cell partial sorts
    for the top-``n`` percentages, are block partials of one ``dask.compute``).

    Parameters
    ----------
    adata
        Cells x genes; ``X`` lazy (Dask) or in memory.
    expr_type, var_type
        Words used in the column names.
    qc_vars
        Boolean columns of ``var`` marking gene groups (e.g. ``"mt"``); ``"auto"`` first
        marks ``mt``, ``ribo`` and ``hb`` with :func:`annotate_gene_groups` and uses them.
    percent_top
        Ranks ``n`` for ``pct_counts_in_top_{n}_genes``; ``None`` or empty skips them.
    layer
        Work on ``adata.layers[layer]`` instead of ``X``.
    use_raw
        Work on ``adata.raw.X`` (the counts of a CELLxGENE file) instead of ``X``; ``raw``
        must have ``var``'s genes (the per-gene columns go into ``var``).
    gene_symbols
        Column of ``var`` with the gene symbols that ``qc_vars="auto"`` matches (e.g.
        ``"feature_name"`` when ``var_names`` are Ensembl IDs); ``None``: ``var_names``.
    log1p
        Also write the ``log1p_`` columns.
    inplace
        Write into ``adata.obs``/``adata.var`` (default) or return the two tables.
        (scanpy's default is ``inplace=False``.)

    Returns
    -------
    tuple of pandas.DataFrame or None
        ``(obs_metrics, var_metrics)`` if ``inplace=False``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.calculate_qc_metrics(adata, qc_vars="auto")
    >>> adata.obs[["total_counts", "pct_counts_mt"]].shape
    (559, 2)
    """
    x = get_matrix(adata, layer=layer, use_raw=use_raw, step="calculate_qc_metrics")
    if isinstance(qc_vars, str):
        auto = qc_vars == "auto"
        qc_vars = annotate_gene_groups(adata, gene_symbols=gene_symbols) if auto else [qc_vars]
    qc_vars = list(qc_vars)
    ns = tuple(sorted(int(n) for n in percent_top)) if percent_top else ()
    if ns and (ns[0] <= 0 or ns[-1] > x.shape[1]):
        raise IndexError(
            f"percent_top {list(ns)} reaches outside the {x.shape[1]} genes (each n in 1..{x.shape[1]})."
        )
    masks = np.zeros((len(qc_vars), x.shape[1]), dtype=bool)
    for i, name in enumerate(qc_vars):
        masks[i] = np.asarray(adata.var[name], dtype=bool)
    lazy = lazy_matrix(x)
    n_cols = 2 + len(ns) + len(qc_vars)
    cells, genes = compute(
        row_partials(lazy, _qc_cells, n_cols, genes=[masks], ns=ns),
        gene_partials(lazy, _qc_genes, 2),
    )
    total_dtype = sum_dtype(x.dtype)
    obs = pd.DataFrame(index=adata.obs_names)
    obs[f"n_{var_type}_by_{expr_type}"] = cells[:, 0].astype(np.int64)
    if log1p:
        obs[f"log1p_n_{var_type}_by_{expr_type}"] = np.log1p(obs[f"n_{var_type}_by_{expr_type}"])
    total = f"total_{expr_type}"
    obs[total] = cells[:, 1].astype(total_dtype)
    if log1p:
        obs[f"log1p_{total}"] = np.log1p(obs[total])
    for j, n in enumerate(ns):
        with np.errstate(invalid="ignore", divide="ignore"):
            share = cells[:, 2 + j] / obs[total].to_numpy()
        obs[f"pct_{expr_type}_in_top_{n}_{var_type}"] = share * 100
    for j, name in enumerate(qc_vars):
        obs[f"{total}_{name}"] = cells[:, 2 + len(ns) + j].astype(total_dtype)
        if log1p:
            obs[f"log1p_{total}_{name}"] = np.log1p(obs[f"{total}_{name}"])
        obs[f"pct_{expr_type}_{name}"] = obs[f"{total}_{name}"] / obs[total] * 100

    var = pd.DataFrame(index=adata.var_names)
    var[f"n_cells_by_{expr_type}"] = genes[0].astype(np.int64)
    var[f"mean_{expr_type}"] = genes[1] / x.shape[0]
    if log1p:
        var[f"log1p_mean_{expr_type}"] = np.log1p(var[f"mean_{expr_type}"])
    var[f"pct_dropout_by_{expr_type}"] = (1 - var[f"n_cells_by_{expr_type}"] / x.shape[0]) * 100
    var[total] = genes[1].astype(total_dtype)
    if log1p:
        var[f"log1p_{total}"] = np.log1p(var[total])
    if not inplace:
        return obs, var
    set_columns(adata.obs, obs)  # pandas, or read_lazy's Dataset2D
    set_columns(adata.var, var)
    return None
