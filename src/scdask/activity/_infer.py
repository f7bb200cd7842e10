"""SecAct activity inference pipelines: bulk, pseudobulk, single cell and spatial spots.

Each pipeline reproduces the matching secactpy 0.3.1 entry point in float64
(``secact_activity_inference``, ``secact_activity_inference_scrnaseq`` and
``secact_activity_inference_st``), except where secactpy fails silently; those cases raise or
are documented in :func:`infer`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scdask._compute import active_client, compute, shared
from scdask._errors import InputError, counts_fix, require_counts
from scdask._ops import value_problems
from scdask.activity._results import make_result
from scdask.activity._ridge import (
    _MIN_SPARSE_ROWS,
    SparseTargets,
    _as_dense,
    _check_dtype,
    _check_rng,
    _plain,
    _tables,
    build_model,
    map_ridge,
    ridge_block,
)
from scdask.activity._signature import BUNDLED_SIGNATURES, group_signatures, load_signature
from scdask.io._write import sources_of
from scdask.preprocessing._blocks import (
    as_frame,
    gene_names,
    get_matrix,
    lazy_matrix,
    matrix_name,
    symbol_column,
)

__all__ = ["LEVELS", "infer"]

LEVELS = ("cell", "pseudobulk", "spot", "bulk")
GENE_ORDERS = ("expression", "signature", "sorted")
_BLOCK_ROWS = 5000  # rows per block when an in-memory matrix is wrapped as a dask array
#: Most cells per ridge task: at n_rand=1000 a cell costs ~0.1 s of permutations, so read
#: blocks are split for load balance and progress.
_TASK_ROWS = 512


# -- signature -------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _bundled_grouped(name: str, cor: float) -> pd.DataFrame:
    return group_signatures(load_signature(name), cor)


def _signature_matrix(
    signature, *, group, group_cor, sig_filter, genes
) -> tuple[pd.DataFrame, bool]:
    """Load, optionally filter proteins to expressed names, optionally group (secactpy order)."""
    bundled = isinstance(signature, str) and signature.lower() in BUNDLED_SIGNATURES
    if group is None:
        group = not (isinstance(signature, str) and signature.lower() == "cytosig")
    if bundled and group and not sig_filter:
        return _bundled_grouped(signature.lower(), float(group_cor)).copy(), True
    sig = load_signature(signature)
    if sig_filter:
        sig = sig.loc[:, sig.columns.isin(pd.Index(genes))]
        if sig.shape[1] == 0:
            raise InputError(
                "sig_filter=True kept no protein: no protein name is a gene of the data"
            )
    return (group_signatures(sig, group_cor) if group else sig), group


def _overlap(genes: pd.Index, sig: pd.DataFrame, gene_order: str) -> pd.Index:
    common = genes.intersection(sig.index, sort=False)
    if gene_order == "signature":
        common = sig.index[sig.index.isin(common)]
    elif gene_order == "sorted":
        common = pd.Index(sorted(common))
    if len(common) < 2:
        raise InputError(
            f"only {len(common)} of the data's {len(genes)} genes are among the signature's "
            f"{len(sig.index)} genes; at least 2 are needed (check gene symbols)"
        )
    return common


def _zscore_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``(v - mean) / sd(ddof=1)`` per column; NaN (constant columns) become 0, as in R."""
    frame = frame.astype(np.float64)
    return ((frame - frame.mean()) / frame.std(ddof=1)).fillna(0.0)


# -- in-memory core (bulk, pseudobulk) -------------------------------------------------------
def _run_dense(
    y: pd.DataFrame,
    sig: pd.DataFrame,
    grouped: bool,
    *,
    gene_order,
    lambda_,
    n_rand,
    seed,
    rng,
    dtype,
    params,
) -> ad.AnnData:
    if y.index.has_duplicates:
        dups = y.index[y.index.duplicated()].unique()
        raise InputError(
            f"{len(dups)} duplicated gene names in the expression (e.g. {list(dups[:3])}); "
            "make them unique first (secactpy's file loader keeps the first occurrence)"
        )
    common = _overlap(pd.Index(y.index), sig, gene_order)
    xs = _zscore_columns(sig.loc[common])
    ys = _zscore_columns(y.loc[common])
    model = build_model(xs.to_numpy(), lambda_, t_test=n_rand == 0)
    tables = _tables(len(common), n_rand, seed, rng) if n_rand else None
    out = ridge_block(np.ascontiguousarray(ys.to_numpy().T), model, tables, dtype=dtype)
    params = {**params, "n_genes": len(common)}
    return make_result(out, list(ys.columns), list(sig.columns), grouped=grouped, params=params)


def _differential(data: pd.DataFrame, control, *, differential, paired, single_sample):
    """secactpy's differential profile (SPEC §3.1 step 2), with unpaired columns an error."""
    if differential:
        return data.set_axis(["Change"], axis=1) if data.shape[1] == 1 else data
    if control is None:
        if data.shape[1] == 1:
            return data.set_axis(["Change"], axis=1)
        return data.sub(data.mean(axis=1), axis=0)
    if paired:
        missing = [c for c in data.columns if c not in control.columns]
        if missing:
            raise InputError(
                f"paired=True but {len(missing)} of {data.shape[1]} columns have no control "
                f"column of the same name (e.g. {missing[:3]})"
            )
        diff = data - control[data.columns]
    else:
        diff = data.sub(control.mean(axis=1), axis=0)
    if not single_sample:
        diff = diff.mean(axis=1).to_frame("Change")
    return diff


# -- AnnData inputs --------------------------------------------------------------------------
def _as_anndata(data) -> ad.AnnData:
    if isinstance(data, ad.AnnData):
        return data
    if isinstance(data, (str, os.PathLike)):
        from scdask.io import read_h5ad

        return read_h5ad(data)
    raise TypeError(f"expected an AnnData, an .h5ad path or a DataFrame, got {type(data).__name__}")


def _frame_as_anndata(frame: pd.DataFrame) -> ad.AnnData:
    """A genes x samples count frame as samples x genes AnnData."""
    counts = sp.csr_array(frame.to_numpy(dtype=np.float64).T)
    return ad.AnnData(
        X=counts,
        obs=pd.DataFrame(index=frame.columns.astype(str)),
        var=pd.DataFrame(index=frame.index.astype(str)),
    )


def _gene_labels(adata: ad.AnnData, *, use_raw: bool, gene_symbols: str | None) -> pd.Index:
    """The genes' names as written: ``var[gene_symbols]``, or by default the first symbol
    column (``feature_name``, ``gene_symbols``, ...) when most ``var_names`` are Ensembl
    IDs, else ``var_names`` (of ``raw.var`` with ``use_raw``)."""
    if gene_symbols is None:
        table = adata.raw.var if use_raw else adata.var
        gene_symbols = symbol_column(table, adata.var)
    return gene_names(adata, gene_symbols=gene_symbols, use_raw=use_raw)


def _cut(names: pd.Index) -> pd.Index:
    """Names cut at the first '.' (secactpy's rule for versioned IDs and symbols)."""
    return pd.Index(pd.Index(names.astype(str)).str.split(".").str[0])


def _fold(names: pd.Index) -> pd.Index:
    """secactpy's single-cell/spatial gene rule: upper-case, cut at the first '.'."""
    return _cut(pd.Index(names.astype(str)).str.upper())


def _read_gene_map(gene_map) -> pd.Series:
    """``gene_map`` (a two-column table, a ``{from: to}`` mapping or a TSV path) as a
    Series ``to`` indexed by ``from``; rows with an empty side are left out."""
    if isinstance(gene_map, (str, os.PathLike)):
        path = Path(gene_map)
        if not path.is_file():
            raise InputError(
                f"gene_map: no such file {str(gene_map)!r}; pass a tab-separated file with "
                "two columns (gene as in the data, gene as in the signature)"
            )
        table = pd.read_csv(
            path, sep="\t", header=None, dtype=str, comment="#", keep_default_na=False
        )
    elif isinstance(gene_map, pd.Series):
        table = gene_map.reset_index()
    elif isinstance(gene_map, Mapping):
        table = pd.DataFrame(list(gene_map.items()))
    elif isinstance(gene_map, pd.DataFrame):
        table = gene_map
    else:
        raise InputError(
            f"gene_map must be a two-column DataFrame, a mapping or a TSV path, got "
            f"{type(gene_map).__name__}"
        )
    if table.shape[1] != 2:
        raise InputError(
            f"gene_map must have 2 columns (from, to), got {table.shape[1]}; keep the "
            "column of the data's genes and the column of the signature's genes"
        )
    pairs = pd.DataFrame(
        {side: table.iloc[:, i].astype(object).to_numpy() for i, side in enumerate(("from", "to"))}
    )
    pairs = pairs[pairs.notna().all(axis=1)].astype(str)
    pairs = pairs.apply(lambda column: column.str.strip())
    pairs = pairs[(pairs["from"] != "") & (pairs["to"] != "")].drop_duplicates()
    repeated = pairs["from"][pairs["from"].duplicated()]
    if len(repeated):
        first = repeated.iloc[0]
        targets = pairs.loc[pairs["from"] == first, "to"].tolist()
        raise InputError(
            f"gene_map maps {repeated.nunique():,} genes to more than one gene (e.g. "
            f"{first!r} to {targets}); keep one target per gene, e.g. "
            "table.drop_duplicates(subset=table.columns[0])"
        )
    return pd.Series(pairs["to"].to_numpy(), index=pd.Index(pairs["from"].to_numpy()))


def _rename(labels: pd.Index, ids: pd.Index, gene_map) -> tuple[pd.Index, int]:
    """``labels`` renamed by ``gene_map`` (a gene is found by its label, else by its id);
    genes not in the map keep their label. Returns the names and how many were renamed."""
    if gene_map is None:
        return labels, 0
    mapping = _read_gene_map(gene_map)
    by_label = pd.Series(labels.astype(str), dtype=object).map(mapping)
    by_id = pd.Series(ids.astype(str), dtype=object).map(mapping)
    renamed = by_label.fillna(by_id)
    names = renamed.fillna(pd.Series(labels.astype(str), dtype=object))
    return pd.Index(names.astype(str).to_numpy()), int(renamed.notna().sum())


def _case_folded(written: pd.Index, sig_genes: pd.Index) -> tuple[int, int]:
    """How many genes match the signature (after upper-casing), and how many of them
    only after upper-casing (their name as written is not a signature gene)."""
    matched = np.asarray(_fold(written).isin(sig_genes))
    exact = np.asarray(_cut(written).isin(sig_genes))
    return int(matched.sum()), int((matched & ~exact).sum())


def _warn_case(n_matched: int, n_folded: int) -> None:
    """The warning of :func:`infer` when most matched genes matched only after
    upper-casing (likely mouse symbols read as human genes)."""
    if n_folded * 2 > n_matched:
        warnings.warn(
            f"{n_folded:,} of the {n_matched:,} genes matched to the signature matched only "
            "after upper-casing (mouse symbols, such as 'Cd74'?): they are taken as the "
            "human genes of those names; for mouse data pass gene_map= (mouse gene -> "
            "human ortholog)",
            UserWarning,
            stacklevel=3,
        )


def _group_labels(obs: pd.DataFrame, cell_type_col) -> tuple[pd.Series, list[str]]:
    """The pseudobulk group of every cell, and its column(s): one column as it is;
    several joined with '|' (``"D1|T cells"``), NaN where any of them is NaN."""
    single = isinstance(cell_type_col, str)
    columns = [cell_type_col] if single else list(cell_type_col or [])
    missing = [c for c in columns if not isinstance(c, str) or c not in obs.columns]
    if not columns or missing:
        raise InputError(
            f"level='pseudobulk' needs cell_type_col naming an obs column (or a list of "
            f"them); got {cell_type_col!r} (columns: {list(obs.columns)})"
        )
    if len(columns) == 1:
        return obs[columns[0]], columns
    parts = [obs[c] for c in columns]
    unlabelled = np.logical_or.reduce([p.isna().to_numpy() for p in parts])
    joined = parts[0].astype(str).str.cat([p.astype(str) for p in parts[1:]], sep="|")
    labels = joined.where(~unlabelled).rename("|".join(columns))
    return labels, columns


def _recorded_sources(adata: ad.AnnData) -> dict:
    """``{"sources": [...]}`` naming the files ``adata`` reads, for an in-memory result to
    remember (so :func:`scdask.write_h5ad` refuses to replace them), or ``{}``."""
    sources = sorted(sources_of(adata))
    return {"sources": sources} if sources else {}


def _row_blocks(matrix) -> da.Array:
    """The matrix as row blocks spanning all genes (``preprocessing._blocks.lazy_matrix``,
    the boundary every step reads through: pydata sparse and scipy chunks converted)."""
    return lazy_matrix(matrix, block_rows=_BLOCK_ROWS)


def _parallelism() -> int:
    """Threads that run tasks: the active cluster's, else this machine's cores."""
    client = active_client()
    if client is None:
        return len(os.sched_getaffinity(0))
    return sum(client.nthreads().values())


def _task_blocks(x: da.Array) -> da.Array:
    """Split row blocks (never merge) into tasks of at most :data:`_TASK_ROWS` cells and at
    most one task's worth per thread, but not below the kernel's :data:`_MIN_SPARSE_ROWS`."""
    target = -(-x.shape[0] // _parallelism())
    target = min(_TASK_ROWS, max(_MIN_SPARSE_ROWS, target))
    pieces = []
    for size in x.chunks[0]:
        k = -(-size // target)
        pieces += [size // k + (i < size % k) for i in range(k)] if size else [0]
    return x.rechunk({0: tuple(pieces)})


def _gene_sums(block) -> np.ndarray:
    return np.asarray(_plain(block).sum(axis=0), dtype=np.float64).reshape(1, -1)


def _keep_best(names: pd.Index, score: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Among ``candidates`` (column indices), one per name: the highest score, first on ties."""
    best: dict[str, int] = {}
    for idx in candidates:
        name = names[idx]
        if name not in best or score[idx] > score[best[name]]:
            best[name] = idx
    return np.array(sorted(best.values()), dtype=np.intp)


@dataclass(frozen=True)
class _LogNormaliser:
    """Per-block ``log2(1 + scale * x / library)`` on the regressed genes (pickles).

    ``library`` sums the ``kept`` columns of each row (all columns when ``kept`` is None).
    """

    kept: np.ndarray | None
    genes: np.ndarray
    scale: float

    def sparse_log(self, block):
        x = _plain(block)
        if not sp.issparse(x):
            x = sp.csr_array(x)
        lib = np.asarray((x if self.kept is None else x[:, self.kept]).sum(axis=1), np.float64)
        sub = sp.csr_array(x[:, self.genes], dtype=np.float64)
        rows = np.repeat(np.arange(sub.shape[0]), np.diff(sub.indptr))
        with np.errstate(divide="ignore", invalid="ignore"):
            sub.data = np.log2(sub.data / lib[rows] * self.scale + 1.0)
        return sub, lib


@dataclass(frozen=True)
class _CellTargets:
    """Regression targets of a row slice: log values, minus gene means, z-scored per row.

    Returned as :class:`SparseTargets`: the row mean and sd of ``z - r`` come from sums over
    the stored values and ``r`` (no densified row), rows without counts or with zero sd get
    all-zero targets.
    """

    norm: _LogNormaliser
    centre: np.ndarray

    def __call__(self, part) -> SparseTargets:
        sub, lib = self.norm.sparse_log(part)
        n = sub.shape[1]
        r = self.centre
        rows = np.repeat(np.arange(sub.shape[0]), np.diff(sub.indptr))
        # Σ_j (z_j - r_j)² = Σ_stored (z² - 2 z r) + Σ r²
        stored = sub.data * (sub.data - 2.0 * r[sub.indices])
        squares = np.bincount(rows, weights=stored, minlength=sub.shape[0]) + r @ r
        total = np.bincount(rows, weights=sub.data, minlength=sub.shape[0]) - r.sum()
        mean = total / n
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = np.sqrt(np.maximum(squares - n * mean**2, 0.0) / (n - 1))
            scale = np.where((lib > 0) & (sd > 0) & np.isfinite(sd), 1.0 / sd, 0.0)
        return SparseTargets(sub, scale, mean * scale, r)


def _cell_stats(block, norm: _LogNormaliser) -> np.ndarray:
    """One row: sums of log values per gene (non-empty rows), #non-empty, #empty, and the
    block's value problems (non-finite, negative, fractional; see ``value_problems``)."""
    x = _plain(block)
    problems = value_problems(x)
    with np.errstate(invalid="ignore"):
        sub, lib = norm.sparse_log(x)
    keep = lib > 0
    sums = np.asarray(sub[keep].sum(axis=0), dtype=np.float64).ravel()
    return np.concatenate([sums, [keep.sum(), (~keep).sum()], problems]).reshape(1, -1)


def _group_sums(block, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """One row: the block's counts summed per group (cells with code -1 left out), then its
    value problems (non-finite, negative, fractional)."""
    x = _plain(block)
    codes = np.asarray(codes).ravel()
    cells = np.flatnonzero(codes >= 0)
    onehot = sp.csr_array(
        (np.ones(len(cells)), (codes[cells], cells)), shape=(n_groups, len(codes))
    )
    # flat (1, groups x genes): map_blocks keeps a 2-D partial aligned with the row blocks
    sums = _as_dense(onehot @ x).astype(np.float64).ravel()
    return np.concatenate([sums, value_problems(x)]).reshape(1, -1)


def _reduce_blocks(func, x: da.Array, width, *args):
    """Sum of ``func(block, *args)`` over the row blocks of ``x`` (a lazy 1-row reduction)."""
    parts = da.map_blocks(
        func,
        x,
        *args,
        dtype=np.float64,
        chunks=((1,) * x.numblocks[0], *width),
        meta=np.empty((0,) * (1 + len(width)), dtype=np.float64),
    )
    return parts.sum(axis=0)


# -- infer -----------------------------------------------------------------------------------
def infer(
    data,
    *,
    level: str = "cell",
    signature="secact",
    cell_type_col: str | Sequence[str] | None = None,
    control: pd.DataFrame | None = None,
    paired: bool = False,
    differential: bool = False,
    single_sample: bool = False,
    lambda_: float = 5e5,
    n_rand: int = 1000,
    seed: int = 0,
    rng: str = "srand",
    group: bool | None = None,
    group_cor: float = 0.9,
    sig_filter: bool = False,
    gene_order: str = "expression",
    dtype=np.float64,
    layer: str | None = None,
    use_raw: bool | None = None,
    gene_symbols: str | None = None,
    gene_map=None,
    scale_factor: float = 1e5,
    chunk_rows: int = 1024,
) -> ad.AnnData:
    """Secreted-protein activity (SecAct) of every sample: ridge regression + permutation test.

    The pipelines of secactpy 0.3.1, with the same numbers in float64:

    * ``"bulk"``: a genes x samples DataFrame (or an AnnData's ``X``), made differential as
      ``secact_activity_inference`` does (``differential``, ``control``, ``paired``,
      ``single_sample``).
    * ``"pseudobulk"``: counts summed per ``obs[cell_type_col]`` (types sorted
      case-insensitively), CPM, ``log2(1+x)``, minus the mean over types. Input that looks
      normalised (secactpy's test on the first 1000 genes x 100 cells: max < 20 and not
      integer) is averaged per type instead, with a warning (in float64; secactpy averages
      float32 input in float32).
    * ``"cell"``: per cell ``log2(1 + 1e5 x / library)``, minus each gene's mean over cells.
    * ``"spot"``: as ``"cell"`` with ``scale_factor``, after dropping genes with no counts;
      ``.raw`` is not used (secactpy's ST convention).

    At cell and spot level the result stays lazy: one batched pass over ``X`` computes the
    gene means (plus one pass over the gene totals when symbols collide or at spot level),
    then every row block of cells becomes one task that normalises, centres and z-scores its
    cells and runs the permutation test; ``Tᵀ`` and the permutation table are one graph key
    each, shared by every task.

    Gene names (cell, spot and pseudobulk levels): each gene is named by
    ``var[gene_symbols]`` or, by default, by ``var_names``, except that when most
    ``var_names`` are Ensembl IDs the first of the columns ``feature_name``,
    ``gene_symbols``, ``gene_name``, ``gene_symbol``, ``symbol`` is used (CELLxGENE files
    keep symbols in ``feature_name``). ``gene_map`` then renames genes. Names are matched
    after upper-casing and cutting at the first ``"."`` (secactpy's rule for single-cell
    and spatial data); when several genes get the same name (duplicates, or genes
    ``gene_map`` sends to one target) the one with the highest total count is kept.
    Genes that match the signature only after upper-casing are counted
    (``uns["activity"]["n_genes_case_folded"]``), with a warning when they are
    more than half of the matched genes: mouse symbols (``Cd74``) are then being read as
    the human genes of the same letters, and a ``gene_map`` to human orthologs is the fix.

    Parameters
    ----------
    data
        AnnData (``X`` in memory or a dask array of row blocks), an ``.h5ad`` path (opened
        lazily with :func:`scdask.io.read_h5ad`), or a genes x samples DataFrame.
    level
        ``"cell"``, ``"pseudobulk"``, ``"spot"`` or ``"bulk"``.
    signature
        ``"secact"``, ``"cytosig"``, a file path or a genes x proteins DataFrame.
    cell_type_col
        ``obs`` column defining the pseudobulk samples, or a list of columns: the cells
        are then grouped by the combination, named by the values joined with ``"|"``
        (``["donor_id", "cell_type"]`` gives groups such as ``"D1|T cells"``); a cell with
        NaN in any of the columns has no label.
    control, paired, differential, single_sample
        Bulk only: a control frame (genes x samples), subtract same-named control columns
        (``paired``), take the input as already differential, keep one column per sample
        instead of their mean (``single_sample``). A ``paired`` column without a partner
        raises (secactpy silently returns zeros).
    lambda_, n_rand, seed, rng
        Ridge penalty, permutations (0: t-test), seed and generator (``"srand"``, ``"gsl"``,
        ``"numpy"``; see :func:`permutation_table`).
    group, group_cor, sig_filter
        Merge proteins whose signatures correlate at ``group_cor`` or more (default: on,
        except for ``"cytosig"``, as secactpy); keep only proteins expressed as genes.
    gene_order
        Order of the regressed genes, which is the order the permutation table applies to:
        ``"expression"`` (the data's, like secactpy's default paths), ``"signature"`` (like
        its ``sparse_mode``/streaming paths) or ``"sorted"`` (``sort_genes=True``).
        β does not depend on it; se, zscore and pvalue do.
    dtype
        ``np.float64`` (default; reproduces secactpy) or ``np.float32`` (products in single
        precision: about 2x faster; z-scores agree to about 1e-4).
    layer, use_raw
        Where the counts are: a layer, or ``.raw`` (default: ``.raw`` when present, except
        at spot level and when ``layer`` is given; ``use_raw=True`` with ``layer`` is an
        error). At bulk level, with an AnnData, the matrix to use (default ``X``).
    gene_symbols
        ``var`` column (of ``raw.var`` with ``use_raw``; a column only ``var`` has is
        taken by gene name) whose values are matched to the signature, instead of the
        automatic choice described above.
    gene_map
        Rename genes before matching: a two-column DataFrame (or ``{from: to}`` mapping,
        or the path of a tab-separated file with two columns, a header line optional)
        from the data's gene names (its symbols or its ``var_names``) to the signature's.
        Genes absent from the map keep their names; rows with an empty side are ignored;
        a gene mapped to two different targets is an error. Several genes mapped to one
        target: the highest total count wins (at bulk level: an error, as any duplicate).
    scale_factor
        Spot-level library size normalisation (cell level always uses 1e5, pseudobulk 1e6).
    chunk_rows
        Cells densified and multiplied at a time in a task (memory ~ ``chunk_rows x genes``).

    Returns
    -------
    anndata.AnnData
        ``obs`` = samples (the input's ``obs`` at cell/spot level), ``var`` = proteins
        (grouped proteins expanded and sorted by code point as secactpy does;
        ``var["group"]`` names the group), ``layers`` beta, se,
        zscore, pvalue and ``X`` = zscore. Dask arrays at cell/spot level, numpy otherwise.
        ``uns["activity"]`` records the parameters and, for an in-memory result made from
        files, their paths (``"sources"``), so that :func:`scdask.write_h5ad` refuses to
        write the result over them. :func:`to_frames` gives secactpy's dict.

        A lazy result's four layers come from the same tasks: compute them together,
        with :func:`to_frames`, :func:`scdask.write_h5ad` / :func:`scdask.write_zarr`
        or one ``dask.compute`` of the layers you need, which run each block once. anndata's
        own ``res.write_h5ad(...)`` and ``res.to_memory()`` compute the layers one by one,
        running the whole inference once per layer.

    Raises
    ------
    scdask.InputError
        (a ``ValueError``) Fewer than 2 genes shared with the signature; duplicated genes in
        a bulk frame; unpaired control columns; NaN or infinite values; negative values
        (cell, spot, pseudobulk); non-integer values at cell/spot level (normalised data:
        pass the counts with ``layer=``/``use_raw=``); no cells or no genes; fewer than 2
        pseudobulk groups (centring on the mean over groups would leave only zeros);
        bulk-only arguments at other levels; ``cell_type_col`` at spot level (per-type spot
        aggregation is not implemented); ``layer`` with ``use_raw=True``; a
        ``gene_symbols`` column that does not exist; a bad ``gene_map``. Value checks run
        in the pass that reads ``X``.

    Warns
    -----
    UserWarning
        Cells (spots) without counts: they get β = 0, se = 0, zscore = 0 and pvalue = 1 and
        are left out of the gene means, so other cells' results are those without them
        (secactpy's default path turns every result to 0 instead). Cells whose
        ``cell_type_col`` label is NaN: left out of the pseudobulk, counted in the warning.
        More than half of the genes matched to the signature matched only after
        upper-casing (likely mouse symbols; pass ``gene_map``).

    Examples
    --------
    >>> import scdask
    >>> from scdask.activity import infer, to_frames
    >>> adata = scdask.datasets.sample()
    >>> res = infer(adata, level="pseudobulk", cell_type_col="cell_type", n_rand=100)
    >>> to_frames(res)["zscore"].shape
    (1170, 5)
    """
    if level not in LEVELS:
        raise InputError(f"level must be one of {LEVELS}, got {level!r}")
    if gene_order not in GENE_ORDERS:
        raise InputError(f"gene_order must be one of {GENE_ORDERS}, got {gene_order!r}")
    _check_rng(rng, n_rand)
    dtype = _check_dtype(dtype)
    params = {
        "level": level,
        "signature": signature if isinstance(signature, str) else "custom",
        "lambda": float(lambda_),
        "n_rand": int(n_rand),
        "seed": int(seed),
        "rng": rng,
        "gene_order": gene_order,
        "dtype": dtype.name,
    }
    run = {"gene_order": gene_order, "lambda_": lambda_, "n_rand": n_rand, "seed": seed}
    run.update(rng=rng, dtype=dtype, params=params)
    sig_args = {"group": group, "group_cor": group_cor, "sig_filter": sig_filter}

    if gene_symbols is not None:
        params["gene_symbols"] = gene_symbols
    if level == "bulk":
        if isinstance(data, pd.DataFrame):
            if layer is not None or use_raw or gene_symbols is not None:
                raise InputError(
                    "layer=, use_raw= and gene_symbols= choose within an AnnData; a "
                    "DataFrame's index already names the genes: drop them"
                )
            frame = data
            names, n_renamed = _rename(pd.Index(frame.index), pd.Index(frame.index), gene_map)
        else:
            bulk = _as_anndata(data)
            matrix = get_matrix(bulk, layer=layer, use_raw=bool(use_raw))
            (values,) = compute(matrix)  # samples x genes: small at bulk level
            labels = gene_names(bulk, gene_symbols=gene_symbols, use_raw=bool(use_raw))
            frame = pd.DataFrame(_as_dense(values).T, index=labels, columns=bulk.obs_names)
            ids = bulk.raw.var_names if use_raw else bulk.var_names
            names, n_renamed = _rename(labels, pd.Index(ids), gene_map)
            run["params"] = {**params, **_recorded_sources(bulk)}
        if gene_map is not None:
            frame = frame.set_axis(names, axis=0)
            run["params"] = {**run["params"], "n_genes_renamed": n_renamed}
        y = _differential(
            frame, control, differential=differential, paired=paired, single_sample=single_sample
        )
        sig, grouped = _signature_matrix(signature, genes=y.index, **sig_args)
        return _run_dense(y, sig, grouped, **run)

    if control is not None or paired or differential or single_sample:
        raise InputError(
            "control, paired, differential and single_sample apply to level='bulk' only "
            "(cell and spot levels centre on the mean over all cells)"
        )
    if level == "spot" and cell_type_col is not None:
        raise InputError(
            "per-type aggregation of spots (secactpy's is_spot_level=False) is not "
            "supported; run level='spot' and average the result per type"
        )
    if isinstance(data, pd.DataFrame):
        adata = _frame_as_anndata(data)
    else:
        adata = _as_anndata(data)
    if use_raw is None:
        use_raw = level != "spot" and layer is None and adata.raw is not None
    matrix = get_matrix(adata, layer=layer, use_raw=use_raw)
    where = matrix_name(layer=layer, use_raw=use_raw)
    fix = counts_fix(adata, layer=layer, use_raw=use_raw)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InputError(
            f"{where} has {matrix.shape[0]} cells x {matrix.shape[1]} genes; "
            "activity needs cells and genes (check the file or the filter that made it)"
        )
    x = _row_blocks(matrix)
    labels = _gene_labels(adata, use_raw=use_raw, gene_symbols=gene_symbols)
    ids = pd.Index(adata.raw.var_names if use_raw else adata.var_names)
    written, n_renamed = _rename(labels, ids, gene_map)
    if gene_map is not None:
        params["n_genes_renamed"] = n_renamed
    names = _fold(written)
    n_all = len(names)
    candidates = np.arange(n_all)

    need_totals = level == "spot" or names.has_duplicates
    totals = (
        np.asarray(compute(_reduce_blocks(_gene_sums, x, ((n_all,),)))[0]) if need_totals else None
    )
    if level == "spot":
        candidates = candidates[totals > 0]
    kept = _keep_best(names, totals, candidates) if need_totals else candidates
    kept_names = pd.Index(names[kept])

    if level == "pseudobulk":
        wanted = [cell_type_col] if isinstance(cell_type_col, str) else cell_type_col or []
        # read_lazy's obs (a Dataset2D) as pandas: only the label columns are read
        groups, columns = _group_labels(as_frame(adata.obs, wanted), cell_type_col)
        y = _pseudobulk(x, kept, kept_names, groups, fix=fix, columns=columns)
        sig, grouped = _signature_matrix(signature, genes=y.index, **sig_args)
        n_matched, n_folded = _case_folded(written[kept], sig.index)
        _warn_case(n_matched, n_folded)
        params["n_genes_case_folded"] = n_folded
        run["params"] = {**params, **_recorded_sources(adata)}
        return _run_dense(y, sig, grouped, **run)

    sig, grouped = _signature_matrix(signature, genes=kept_names, **sig_args)
    common = _overlap(kept_names, sig, gene_order)
    n_matched, n_folded = _case_folded(written[kept], sig.index)
    _warn_case(n_matched, n_folded)
    params["n_genes_case_folded"] = n_folded
    position = pd.Series(kept, index=kept_names)
    norm = _LogNormaliser(
        kept=None if len(kept) == n_all else kept,
        genes=position[common].to_numpy(),
        scale=float(scale_factor if level == "spot" else 1e5),
    )
    stats = np.asarray(compute(_reduce_blocks(_cell_stats, x, ((len(common) + 5,),), norm))[0])
    sums, n_full, n_empty = stats[:-5], int(stats[-5]), int(stats[-4])
    require_counts(stats[-3:], step=f"level={level!r}", fix=fix, matrix=where)
    what = "spots" if level == "spot" else "cells"
    if n_full == 0:
        raise InputError(f"every one of the {n_empty} {what} has zero counts")
    if n_empty:
        warnings.warn(
            f"{n_empty} {what} have no counts: they get beta=0, se=0, zscore=0, pvalue=1 and "
            "are left out of the gene means",
            UserWarning,
            stacklevel=2,
        )
    targets = _CellTargets(norm=norm, centre=sums / n_full)
    xs = _zscore_columns(sig.loc[common])
    model = shared(build_model, xs.to_numpy(), lambda_, t_test=n_rand == 0)
    tables = shared(_tables, len(common), n_rand, seed, rng) if n_rand else None
    stacked = map_ridge(
        _task_blocks(x),
        model,
        tables,
        xs.shape[1],
        dtype=dtype,
        chunk_rows=chunk_rows,
        transform=targets,
    )
    params = {**params, "n_genes": len(common), "n_empty": n_empty}
    obs = as_frame(adata.obs)  # the input's obs, as pandas (read_lazy gives a Dataset2D)
    return make_result(stacked, obs, list(sig.columns), grouped=grouped, params=params)


def _pseudobulk(
    x: da.Array, kept, kept_names, labels: pd.Series, *, fix: str, columns=None
) -> pd.DataFrame:
    """Genes x types differential profile (secactpy's scRNA pseudobulk), one pass over X.

    Cells without a label (NaN) are left out, with a warning that counts them; fewer than
    two groups is an error (centring on the mean over groups would leave only zeros).
    ``columns``: the obs column(s) the labels come from, for messages (default
    ``[labels.name]``).
    """
    columns = list(columns or [labels.name])
    column = f"obs[{columns[0]!r}]" if len(columns) == 1 else f"obs[{columns!r}]"
    no_label = (
        f"no {columns[0]!r} label (NaN)"
        if len(columns) == 1
        else f"no label in {column} (NaN in one of them)"
    )
    missing = labels.isna().to_numpy()
    names = labels.astype(str).to_numpy()
    types = sorted(set(names[~missing]), key=str.lower)
    if len(types) < 2:
        found = f"only {types[0]!r}" if types else "no labels at all"
        raise InputError(
            f"level='pseudobulk' needs at least 2 groups in {column}, found {found}: "
            "each group is centred on the mean over groups, so one group gives all-zero "
            "results; group by a column with 2 or more values, or run level='bulk' with a "
            "control"
        )
    if missing.any():
        warnings.warn(
            f"{int(missing.sum()):,} cells have {no_label}; they are left out of the pseudobulk",
            UserWarning,
            stacklevel=3,
        )
    codes = np.where(missing, -1, pd.Index(types).get_indexer(names))
    codes_da = da.from_array(codes, chunks=(x.chunks[0],))
    n_sums = len(types) * x.shape[1]
    stats = _reduce_blocks(_group_sums, x, ((n_sums + 3,),), codes_da[:, None], len(types))
    head = x[: min(100, x.shape[0])][:, kept[:1000]]
    stats, head = compute(stats, head)
    stats = np.asarray(stats)
    nonfinite, negative, _ = stats[n_sums:]
    # non-whole values are secactpy's normalised-input path (below), not an error
    require_counts([nonfinite, negative, 0], step="level='pseudobulk'", fix=fix)
    sums = stats[:n_sums].reshape(len(types), x.shape[1])[:, kept]
    head = _as_dense(head)
    nonzero = head[head != 0]
    integer = nonzero.size > 0 and np.allclose(nonzero, np.round(nonzero))
    if head.max() < 20 and not integer:
        warnings.warn(
            "the matrix looks normalised (max < 20, not integer): averaging it per cell type "
            "without CPM/log, as secactpy does; pass counts for the standard pseudobulk",
            UserWarning,
            stacklevel=3,
        )
        counts = np.bincount(codes, minlength=len(types)).astype(np.float64)
        expr = (sums / counts[:, None]).T
    else:
        cpm = sums.T / sums.T.sum(axis=0) * 1e6
        expr = np.log2(cpm + 1)
    expr = expr - expr.mean(axis=1, keepdims=True)
    return pd.DataFrame(expr, index=kept_names, columns=types)
