"""File tools on AnnData stores: convert (CSR <-> CSC), subset, inspect, update_metadata.

Each tool streams: matrices go through the lazy readers and the streaming, atomic writers,
so memory depends on a budget, never on the size of the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anndata as ad
import dask
import dask.array as da
import h5py
import numpy as np
import pandas as pd
from dask.utils import format_bytes, parse_bytes

from scdask._compat import named_layers
from scdask._errors import InputError
from scdask._files import INCOMPLETE
from scdask.io._dispatch import is_anndata_store, read
from scdask.io._read import (
    CSCReadWarning,
    MatrixSource,
    _read,
    auto_rows,
    lazy_matrix,
    matrix_source,
)
from scdask.io._store import FileFormatError, Format, check_path, guess_format, open_store
from scdask.io._write import WriteOptions, write_store

__all__ = ["StoreInfo", "convert", "inspect", "subset", "update_metadata"]

logger = logging.getLogger("scdask.io")

#: Bytes a bucket of a layout swap takes per byte of its stored non-zeros (the scan builds
#: coordinates in int64 before compressing them).
_SCAN_EXPANSION = 3


def _out_format(out: str | os.PathLike) -> Format:
    return "zarr" if str(out).rstrip("/").endswith(".zarr") else "h5ad"


def _read_lazy(path: str | os.PathLike) -> tuple[ad.AnnData, Format | None, str]:
    """Open a store lazily without the CSC warning (the tools say their own cost); a 10x
    file or folder through :func:`scdask.read` (format ``None``)."""
    if Path(path).expanduser().exists() and not is_anndata_store(path):
        return read(path), None, str(Path(path).expanduser().resolve())
    fmt = guess_format(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CSCReadWarning)
        adata = _read(path, fmt, "auto", finite=False)  # the tools copy values as they are
    return adata, fmt, str(check_path(path, fmt).resolve())


def _matrix_keys(adata: ad.AnnData) -> list[str]:
    keys = ["X", *(f"layers/{k}" for k in named_layers(adata))]
    return [*keys, "raw/X"] if adata.raw is not None else keys


def _transposed(source: MatrixSource) -> MatrixSource:
    """The same stored arrays read as the transpose: CSR of X is CSC of X.T and vice versa."""
    swap = {"csr": "csc", "csc": "csr"}[source.layout]
    return dataclasses.replace(source, shape=source.shape[::-1], layout=swap)


def _bucket(source: MatrixSource, budget: int) -> int:
    """Rows of ``source`` per bucket so that building one bucket stays within ``budget``."""
    rows = int(budget // (_SCAN_EXPANSION * source.row_bytes()))
    return max(1, min(rows, source.shape[0]))


def _swap_plan(source: MatrixSource, layout: str, budget: int) -> tuple[da.Array, str]:
    """A lazy array of ``source`` in ``layout`` (row or column buckets), and what it costs."""
    major = source if layout == "csr" else _transposed(source)
    if major.layout == "csr":  # buckets are slices of the stored arrays
        x = lazy_matrix(major)
        cost = f"{source.key}: already {layout}, copied in one pass"
    else:
        stored = source.nnz * (source.dtype.itemsize + 4)
        size = _bucket(major, budget)
        n_buckets = math.ceil(major.shape[0] / size) if major.shape[0] else 0
        x = lazy_matrix(major, size)
        what = "row" if layout == "csr" else "column"
        cost = (
            f"{source.key}: {source.layout} -> {layout} in {n_buckets} {what} buckets of "
            f"{size:,} {what}s; each bucket scans the whole matrix ({format_bytes(stored)} "
            f"stored), about {format_bytes(n_buckets * source.nnz * 4 + stored)} read in all"
        )
    return (x if layout == "csr" else x.T), cost


def convert(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: Literal["csr", "csc"] = "csr",
    memory: int | str = "1GiB",
) -> list[str]:
    """Rewrite a store with its sparse matrices in another layout, with bounded memory.

    ``X``, every sparse layer and ``raw.X`` are written in ``layout``; dense matrices,
    obs, var and the rest are copied. Swapping CSC to CSR (or CSR to CSC) builds the
    output in row (column) buckets; every bucket scans the whole input matrix, reading
    its indices, so a swap reads the input about ``n_buckets`` times. Buckets are sized
    so that building one takes about ``memory / 2`` (one bucket is computed while the
    previous one is written): a larger ``memory`` means fewer scans. The cost of each
    matrix is returned and logged (logger ``scdask.io``, level INFO) before the work
    starts. The output is written atomically (see :func:`scdask.write_h5ad`).

    Passes over X: one per bucket for a layout swap, one for a plain copy.

    Parameters
    ----------
    path
        The input ``.h5ad`` file or zarr store.
    out
        The output; a name ending in ``.zarr`` gives a zarr store, else ``.h5ad``.
        Must differ from ``path``.
    layout
        ``"csr"`` (cells are rows: what every scdask pass reads fast) or ``"csc"``.
    memory
        Memory budget for the buckets in flight (bytes or a string like ``"4GiB"``).

    Returns
    -------
    list of str
        One line per sparse matrix: buckets and bytes read.

    Examples
    --------
    >>> import os, tempfile, scdask
    >>> d = tempfile.mkdtemp()
    >>> plan = scdask.io.convert(scdask.datasets.sample_path(), os.path.join(d, "csc.h5ad"),
    ...                          layout="csc", memory="64MiB")
    >>> plan[0].startswith("X: csr -> csc")
    True
    """
    if layout not in ("csr", "csc"):
        raise InputError(f"layout must be 'csr' or 'csc', got {layout!r}.")
    budget = parse_bytes(memory) if isinstance(memory, str) else int(memory)
    adata, fmt, spath = _read_lazy(path)
    if fmt is None:  # 10x .h5, mtx or Space Ranger: read as cell rows, written as CSR
        if layout != "csr":
            raise InputError(
                f"{str(path)!r} is a 10x file: convert it to CSR first (layout='csr'), then "
                "convert that file to CSC"
            )
        write_store(adata, out, _out_format(out), WriteOptions(window=1))
        return [f"X: 10x -> csr, copied in one pass ({adata.n_obs:,} cells)"]
    with open_store(spath, fmt) as f:
        sources = {
            key: matrix_source(spath, fmt, f, key, finite=False) for key in _matrix_keys(adata)
        }
    plans = []
    arrays = {}
    for key, source in sources.items():
        if source.layout == "dense":
            arrays[key] = lazy_matrix(source)
            continue
        arrays[key], cost = _swap_plan(source, layout, budget // 2)
        plans.append(cost)
        logger.info("convert %s: %s", spath, cost)
    adata.X = arrays.pop("X")
    if adata.raw is not None:
        raw = adata.raw
        adata.raw = ad.AnnData(X=arrays.pop("raw/X"), obs=adata.obs, var=raw.var, varm=raw.varm)
    for key, x in arrays.items():
        adata.layers[key.removeprefix("layers/")] = x
    write_store(adata, out, _out_format(out), WriteOptions(window=1))
    return plans


def _indexer(selection, n: int, axis: str):
    if selection is None:
        return slice(None)
    sel = selection.to_numpy() if isinstance(selection, pd.Series | pd.Index) else selection
    sel = np.asarray(sel)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise InputError(
                f"The {axis} mask has {sel.size} entries but the file has {n} {axis}; "
                f"pass a boolean mask of length {n} or integer positions."
            )
        return np.flatnonzero(sel)
    if np.issubdtype(sel.dtype, np.integer):
        if sel.size and (sel.min() < -n or sel.max() >= n):
            raise IndexError(
                f"{axis} positions must lie in [-{n}, {n}); got {sel.min()}..{sel.max()}."
            )
        return sel
    return sel  # names: anndata resolves them and says which are missing


def subset(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    obs=None,
    var=None,
) -> None:
    """Write the cells and genes of a store that a selection keeps, streaming.

    The input is opened lazily, sliced as ``adata[obs, var]`` (obsm, obsp, layers and
    raw follow as in anndata) and written block by block, atomically.

    Passes over X: one.

    Parameters
    ----------
    path
        The input ``.h5ad`` file or zarr store.
    out
        The output; a name ending in ``.zarr`` gives a zarr store, else ``.h5ad``.
    obs, var
        Boolean masks, integer positions or names of the cells / genes to keep;
        ``None`` keeps all.

    Examples
    --------
    >>> import os, tempfile, numpy as np, scdask
    >>> out = os.path.join(tempfile.mkdtemp(), "first100.h5ad")
    >>> scdask.io.subset(scdask.datasets.sample_path(), out, obs=np.arange(100))
    >>> scdask.read_h5ad(out).n_obs
    100
    """
    adata, _, _ = _read_lazy(path)
    rows = _indexer(obs, adata.n_obs, "obs")
    cols = _indexer(var, adata.n_vars, "var")
    write_store(adata[rows, cols].copy(), out, _out_format(out), WriteOptions())


@dataclass(frozen=True)
class StoreInfo:
    """What :func:`inspect` reports about a store: printing it gives a short summary.

    Attributes
    ----------
    path, format, file_bytes
        The resolved path, ``"h5ad"`` or ``"zarr"``, and the size on disk.
    shape
        ``(n_obs, n_vars)`` of X; for a file without X, the lengths of obs and var.
    layout
        ``"csr"``, ``"csc"``, ``"dense"``, or ``"none"`` for a file without X (such as
        the ``cells.h5ad`` that ``scdask run`` writes: annotations and embeddings only).
    dtype
        The dtype of X (``"none"`` without X).
    nnz, density
        Stored values of a sparse X and their fraction of ``shape``; ``None`` otherwise.
    obs_columns, var_columns, layers, raw, obsm
        Column names, ``{layer: layout}``, the shape of ``raw.X`` (or ``None``), obsm keys.
    chunk_rows, n_blocks, block_bytes
        How :func:`scdask.read_h5ad` would block X (all 0 without X).
    activity
        The parameters in ``uns["activity"]`` of an activity result (samples x proteins,
        written from :func:`scdask.activity.infer`), else ``None``.
    sample_rows, sample_cols, sample_values
        The content checks read only the start of X: the values stored in its first
        ``sample_rows`` rows (of a CSC X: its first ``sample_cols`` columns), at most a
        few million; ``sample_values`` of them were checked (the non-zeros of a dense X).
    nonfinite, negative, fractional, max_value
        Among those values: how many are NaN or infinite, negative, or finite but not
        whole numbers, and the largest finite one (``None`` if none was read).
    looks_like_counts
        Whether the finite values of the sample are whole, non-negative numbers (NaN and
        infinite values are counted in ``nonfinite``); ``None`` when nothing was sampled.
    counts_in
        When X does not look like counts: the layer or raw that does
        (``"layers['counts']"``, ``"raw.X"``), else ``None``.
    duplicate_obs, duplicate_var, duplicate_examples
        How many obs / var names repeat an earlier one, and up to three repeated names of
        each (``{"obs": [...], "var": [...]}``).
    unfinished_run
        Whether the file's folder holds the marker that ``scdask run`` removes when it
        finishes (``scdask._files.INCOMPLETE``): the file is not a finished result.
    """

    path: str
    format: str
    file_bytes: int
    shape: tuple[int, int]
    layout: str
    dtype: str
    nnz: int | None
    density: float | None
    obs_columns: list[str]
    var_columns: list[str]
    layers: dict[str, str]
    raw: tuple[int, int] | None
    chunk_rows: int
    n_blocks: int
    block_bytes: int
    obsm: list[str] = dataclasses.field(default_factory=list)
    activity: dict | None = None
    sample_rows: int = 0
    sample_cols: int = 0
    sample_values: int = 0
    nonfinite: int = 0
    negative: int = 0
    fractional: int = 0
    max_value: float | None = None
    looks_like_counts: bool | None = None
    counts_in: str | None = None
    duplicate_obs: int = 0
    duplicate_var: int = 0
    duplicate_examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    unfinished_run: bool = False

    def __str__(self) -> str:
        n_obs, n_vars = self.shape
        rows, cols = ("samples", "proteins") if self.activity is not None else ("cells", "genes")
        lines = [f"{self.path} ({self.format}, {format_bytes(self.file_bytes)})"]
        if self.activity is not None:
            params = ", ".join(
                f"{k}={self.activity[k]}"
                for k in ("level", "signature", "n_rand")
                if k in self.activity
            )
            lines.append(f"  activity result ({params}): {n_obs:,} {rows} x {n_vars:,} {cols}")
        if self.layout == "none":
            obsm = f"; obsm: {', '.join(self.obsm)}" if self.obsm else ""
            lines.append(
                f"  X:      no X (annotations only: {n_obs:,} {rows} x {n_vars:,} {cols} "
                f"from obs/var{obsm})"
            )
        elif self.nnz is None:
            lines.append(
                f"  X:      {n_obs:,} {rows} x {n_vars:,} {cols}, {self.layout} {self.dtype}"
            )
        else:
            lines.append(
                f"  X:      {n_obs:,} {rows} x {n_vars:,} {cols}, {self.layout} {self.dtype}, "
                f"{self.nnz:,} non-zeros ({self.density:.2%} dense)"
            )
        lines += [
            f"  obs:    {_columns(self.obs_columns)}",
            f"  var:    {_columns(self.var_columns)}",
            "  layers: " + (", ".join(f"{k} ({v})" for k, v in self.layers.items()) or "none"),
            "  raw:    " + (f"{self.raw[0]:,} x {self.raw[1]:,}" if self.raw else "none"),
        ]
        if self.layout != "none":
            if self.obsm:
                lines.append("  obsm:   " + ", ".join(self.obsm))
            lines.append(
                f"  read:   {self.n_blocks:,} blocks of {self.chunk_rows:,} rows, about "
                f"{format_bytes(self.block_bytes)} each (scdask.chunk-memory = "
                f"{dask.config.get('scdask.chunk-memory')})"
            )
        lines += [f"  note:   {note}" for note in self.notes()]
        return "\n".join(lines)

    def _sampled(self) -> str:
        """Where the content checks looked, for the notes."""
        n_obs, n_vars = self.shape
        if self.sample_rows >= n_obs and self.sample_cols >= n_vars:
            return "in all of X"
        if self.layout == "csc":
            return f"in the first {self.sample_cols:,} columns of X (all rows; X is CSC)"
        return f"in the first {self.sample_rows:,} rows"

    def notes(self) -> list[str]:
        """What a newcomer should know before using the file: one sentence per finding.

        Returns
        -------
        list of str
            The ``note:`` lines of ``str(self)``, without the prefix; empty when nothing
            was found.

        Examples
        --------
        >>> import scdask
        >>> scdask.io.inspect(scdask.datasets.sample_path()).notes()
        []
        """
        notes = []
        if self.unfinished_run:
            notes.append(
                f"this folder holds an {INCOMPLETE} marker: it is from a `scdask run` that did "
                "not finish (or is still running), so this file is not a finished result; "
                "run it again."
            )
        if self.activity is None:
            notes += self._content_notes()
        for axis, n in (("obs", self.duplicate_obs), ("var", self.duplicate_var)):
            if n:
                shown = ", ".join(repr(s) for s in self.duplicate_examples.get(axis, []))
                what = "cell" if axis == "obs" else "gene"
                notes.append(
                    f"{n:,} {axis} names repeat an earlier one (e.g. {shown}): selecting "
                    f"{what}s by name is ambiguous; after scdask.read_h5ad, call "
                    f"adata.{axis}_names_make_unique()."
                )
        if self.layout == "csc":
            stem = Path(self.path)
            out = stem.with_name(f"{stem.name.removesuffix(stem.suffix)}.csr{stem.suffix}")
            notes.append(
                f"X is CSC, so each of the {self.n_blocks} blocks scans the whole matrix; "
                f"convert once: scdask convert {shlex.quote(self.path)} "
                f"{shlex.quote(str(out))} --layout csr"
            )
        return notes

    def _content_notes(self) -> list[str]:
        where = self._sampled()
        notes = []
        if self.nonfinite:
            notes.append(
                f"X has {self.nonfinite:,} NaN or infinite values {where}; scdask refuses "
                "them when it reads those rows: fix them at the source, or drop those cells "
                "with scdask.io.subset."
            )
        if self.looks_like_counts is None or self.looks_like_counts:
            return notes
        counts = []
        if self.negative:
            counts.append(
                f"X has {self.negative:,} negative values {where}: counts are never "
                "negative (scaled or batch-corrected data?)."
            )
        if self.fractional:
            checked = max(self.sample_values - self.nonfinite, 1)
            share = f"{self.fractional / checked:.0%}"
            if self.fractional / checked < 0.01:
                share = f"{self.fractional:,} of the {checked:,}"
            if self.negative:
                guess = "looks scaled or corrected"
            elif self.max_value is not None and self.max_value <= 20:
                guess = "looks log-normalised"
            else:
                guess = "looks normalised, or estimated counts"
            top = f"max {self.max_value:.3g}; " if self.max_value is not None else ""
            counts.append(
                f"X is not counts: {share} of the stored values {where} are not whole "
                f"numbers ({top}{guess})."
            )
        if self.counts_in is None:
            found = "no layer named like counts, nor raw.X, looks like counts here."
        elif self.counts_in == "raw.X":
            found = (
                "raw.X holds counts: pass use_raw=True (scdask.pp, scdask.activity.infer; "
                "scdask run and the commands find it themselves)."
            )
        else:
            name = self.counts_in.removeprefix("layers[").removesuffix("]")
            found = (
                f"{self.counts_in} holds counts: pass layer={name} (scdask.pp, "
                "scdask.activity.infer; scdask run and the commands find it themselves)."
            )
        counts[-1] += f" scdask's preprocessing and activity need counts; {found}"
        return notes + counts


def _columns(names: list[str]) -> str:
    if not names:
        return "no columns"
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    return f"{len(names)} columns: {shown}"


def _column_order(group) -> list[str]:
    order = group.attrs.get("column-order", [])
    return [o.decode() if isinstance(o, bytes) else str(o) for o in np.atleast_1d(order)]


def _store_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


#: At most this many stored values are read from the start of a matrix to check its content.
_SAMPLE_VALUES = 2_000_000


def _first_values(f, source: MatrixSource, rows: int) -> tuple[int, int, np.ndarray]:
    """The first stored values of a matrix: about ``rows`` rows, at most ``_SAMPLE_VALUES``.

    Returns the rows and columns covered and the values (the non-zeros of a dense matrix).
    A CSC matrix is sampled by its first columns, since its first rows are scattered.
    """
    elem = f[source.key]
    n_obs, n_vars = source.shape
    if source.layout == "dense":
        n = min(rows, max(1, _SAMPLE_VALUES // max(n_vars, 1)), n_obs)
        block = np.asarray(elem[:n])
        return n, n_vars, block[block != 0]
    n_major = rows if source.layout == "csr" else n_vars
    indptr = np.asarray(elem["indptr"][: n_major + 1], dtype=np.int64)
    start = int(indptr[0])
    n = int(np.searchsorted(indptr, start + _SAMPLE_VALUES, side="right")) - 1
    n = min(max(n, 1), len(indptr) - 1)  # one row (part of it) even if it is very long
    stop = min(int(indptr[n]), start + _SAMPLE_VALUES)
    values = np.asarray(elem["data"][start:stop])
    return (n, n_vars, values) if source.layout == "csr" else (n_obs, n, values)


def _value_checks(values: np.ndarray) -> dict:
    """Counts of NaN/inf, negative and non-whole values, and the largest finite value."""
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if values.dtype.kind not in "iuf":
        return {"sample_values": int(values.size)}  # complex or odd: nothing to judge
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    negative = int(np.count_nonzero(finite < 0))
    whole = finite.dtype.kind != "f" or bool(np.all(finite == np.floor(finite)))
    fractional = 0 if whole else int(np.count_nonzero(finite != np.floor(finite)))
    return {
        "sample_values": int(values.size),
        "nonfinite": int(values.size - finite.size),
        "negative": negative,
        "fractional": fractional,
        "max_value": float(finite.max()) if finite.size else None,
        "looks_like_counts": (negative == 0 and fractional == 0) if finite.size else None,
    }


def looks_like_counts(path: str | os.PathLike, key: str = "X") -> bool | None:
    """Whether matrix ``key`` of a store (``"X"``, ``"raw/X"``, ``"layers/NAME"``) looks
    like counts: its first stored values (those :func:`inspect` samples, at most a few
    million of the first rows) are all finite, non-negative and whole.

    ``None`` when it cannot tell: no such matrix, no stored values, a path that is not an
    AnnData store, or values of an odd type.

    Passes over X: none (the first block of rows at most).

    Examples
    --------
    >>> import scdask
    >>> looks_like_counts(scdask.datasets.sample_path()), looks_like_counts(
    ...     scdask.datasets.sample_path(), "raw/X")
    (True, None)
    """
    try:
        fmt = guess_format(path)
        spath = str(check_path(path, fmt).resolve())
        with open_store(spath, fmt) as f:
            if key not in f:
                return None
            source = matrix_source(spath, fmt, f, key, finite=False)
            if source.shape[0] == 0 or source.shape[1] == 0:
                return None
            values = _first_values(f, source, auto_rows(source))[2]
    except (FileFormatError, OSError):
        return None
    return _value_checks(values).get("looks_like_counts")


def _counts_elsewhere(f, spath: str, fmt: Format, layers: list[str], rows: int) -> str | None:
    """The first layer named like counts, or raw.X, whose first rows look like counts."""
    keys = [f"layers/{k}" for k in layers if "count" in k.lower()]
    if "raw" in f and "X" in f["raw"]:
        keys.append("raw/X")
    for key in keys:
        source = matrix_source(spath, fmt, f, key, finite=False)
        if _value_checks(_first_values(f, source, rows)[2]).get("looks_like_counts"):
            return "raw.X" if key == "raw/X" else f"layers[{key.removeprefix('layers/')!r}]"
    return None


def _names(f, name: str, path: str) -> pd.Index:
    """The index (obs or var names) of the stored dataframe ``name``."""
    if name not in f:
        return pd.Index([])
    group = f[name]
    key = group.attrs.get("_index", "_index")
    key = key.decode() if isinstance(key, bytes) else str(key)
    if not hasattr(group, "keys") or key not in group:
        raise FileFormatError(
            f"{name!r} in {path!r} is not an anndata dataframe with an index; the file was "
            "written by an old anndata: rewrite it with ad.read_h5ad(path).write_h5ad(new_path)."
        )
    return pd.Index(ad.io.read_elem(group[key]))


def _duplicates(names: pd.Index) -> tuple[int, list[str]]:
    repeated = names.duplicated()
    examples = [str(s) for s in dict.fromkeys(names[repeated])][:3]
    return int(repeated.sum()), examples


def inspect(path: str | os.PathLike) -> StoreInfo:
    """Describe a store cheaply: shape, layout, sizes, blocks, and what to fix first.

    Reads attributes, the column and index names of obs/var, ``uns["activity"]``, and
    the start of X: the values stored in its first block of rows (of a CSC X, its first
    columns), at most a few million. The number of non-zeros comes from the length of
    ``X/data``; the rest of X is never read.

    From those values it flags what scdask cannot use: NaN or infinite values, negative
    values, values that are not whole numbers (X is not counts; a layer named like
    ``counts`` or ``raw.X`` that looks like counts is then named). It also flags repeated
    obs or var names, a CSC X (with the ``scdask convert`` command that fixes it), and a
    file in the folder of a ``scdask run`` that did not finish. A file without X (the
    ``cells.h5ad`` of ``scdask run``) is described from obs, var and obsm; an activity
    result (samples x proteins, from :func:`scdask.activity.infer`) says so.

    Passes over X: none (the first block of rows at most).

    Parameters
    ----------
    path
        An ``.h5ad`` file or anndata zarr store.

    Returns
    -------
    StoreInfo
        ``str(info)`` is a readable summary (what ``scdask info`` prints).

    Examples
    --------
    >>> import scdask
    >>> info = scdask.io.inspect(scdask.datasets.sample_path())
    >>> info.shape, info.layout
    ((559, 32786), 'csr')
    >>> print(info)  # doctest: +ELLIPSIS
    /...celltypist_sample_counts.h5ad (h5ad, ...)
      X:      559 cells x 32,786 genes, csr float32, ...
    >>> info.sample_rows, info.looks_like_counts, info.nonfinite, info.duplicate_obs
    (559, True, 0, 0)
    """
    fmt = guess_format(path)
    p = check_path(path, fmt)
    spath = str(p.resolve())
    with open_store(spath, fmt) as f:
        if "X" not in f and not ("obs" in f and "var" in f):
            raise FileFormatError(
                f"{str(path)!r} has no X matrix and no obs/var tables; it is not an AnnData file."
            )
        layers = {}
        if "layers" in f:
            for k in f["layers"]:
                layers[k] = matrix_source(spath, fmt, f, f"layers/{k}").layout
        raw = None
        if "raw" in f and "X" in f["raw"]:
            raw = matrix_source(spath, fmt, f, "raw/X").shape
        obs_columns = _column_order(f["obs"]) if "obs" in f else []
        var_columns = _column_order(f["var"]) if "var" in f else []
        obs_names, var_names = _names(f, "obs", spath), _names(f, "var", spath)
        obsm = sorted(f["obsm"]) if "obsm" in f else []
        activity = None
        if "uns" in f and "activity" in f["uns"]:
            stored = ad.io.read_elem(f["uns"]["activity"])
            activity = {k: v.item() if isinstance(v, np.generic) else v for k, v in stored.items()}
        if "X" in f:
            x = matrix_source(spath, fmt, f, "X", finite=False)
            rows = auto_rows(x)
            sample_rows, sample_cols, values = _first_values(f, x, rows)
            checks = _value_checks(values)
            if checks.get("looks_like_counts") is False and activity is None:
                checks["counts_in"] = _counts_elsewhere(f, spath, fmt, list(layers), rows)
            shape, layout, dtype, block_bytes = (
                x.shape,
                x.layout,
                str(x.dtype),
                rows * x.row_bytes(),
            )
        else:  # annotations only, such as the cells.h5ad of `scdask run`
            x = None
            shape, layout, dtype, block_bytes = (len(obs_names), len(var_names)), "none", "none", 0
            rows = sample_rows = sample_cols = 0
            checks = {}
    n_obs_dup, obs_examples = _duplicates(obs_names)
    n_var_dup, var_examples = _duplicates(var_names)
    sparse = layout in ("csr", "csc")
    return StoreInfo(
        path=spath,
        format=fmt,
        file_bytes=_store_bytes(p),
        shape=shape,
        layout=layout,
        dtype=dtype,
        nnz=x.nnz if sparse else None,
        density=x.nnz / max(shape[0] * shape[1], 1) if sparse else None,
        obs_columns=obs_columns,
        var_columns=var_columns,
        layers=layers,
        raw=raw,
        chunk_rows=rows,
        n_blocks=math.ceil(shape[0] / rows) if rows else 0,
        block_bytes=int(block_bytes),
        obsm=obsm,
        activity=activity,
        sample_rows=sample_rows,
        sample_cols=sample_cols,
        duplicate_obs=n_obs_dup,
        duplicate_var=n_var_dup,
        duplicate_examples={"obs": obs_examples, "var": var_examples},
        unfinished_run=(p.absolute().parent / INCOMPLETE).exists(),
        **checks,
    )


def _validate_table(df, key: str, index: pd.Index, path: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{key} must be a pandas DataFrame, got {type(df).__name__}.")
    if len(df) != len(index):
        raise InputError(
            f"The new {key} table has {len(df)} rows but {path!r} has {len(index)} {key}; "
            "the table must have one row per entry, in the file's order."
        )
    if not df.index.astype(str).equals(index.astype(str)):
        raise InputError(
            f"The index of the new {key} table differs from the {key} names in {path!r}; "
            f"rows must line up with X. Align it first: "
            f"df = df.reindex(scdask.read_h5ad(path).{key}_names)."
        )


def _swap_keys(key: str) -> tuple[str, str]:
    """Names of the new table while it is written and of the old one while it is replaced."""
    return f"__scdask_new_{key}__", f"__scdask_old_{key}__"


def _swap_h5(f: h5py.File, key: str, df: pd.DataFrame) -> None:
    new, old = _swap_keys(key)
    if key not in f and old in f:  # a previous swap stopped between its two moves
        f.move(old, key)
    for stale in (new, old):
        if stale in f:
            del f[stale]
    try:
        ad.io.write_elem(f, new, df)
        f.flush()
    except BaseException:
        if new in f:
            del f[new]
        raise
    f.move(key, old)
    f.move(new, key)
    del f[old]


def _swap_zarr(root: Path, key: str, df: pd.DataFrame) -> None:
    import shutil

    import zarr

    new, old = (root / name for name in _swap_keys(key))
    if not (root / key).exists() and old.exists():
        os.replace(old, root / key)
    for stale in (new, old):
        shutil.rmtree(stale, ignore_errors=True)
    group = zarr.open_group(str(root), mode="r+", use_consolidated=False)
    try:
        ad.io.write_elem(group, new.name, df)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    os.replace(root / key, old)
    os.replace(new, root / key)
    shutil.rmtree(old)
    if (root / ".zmetadata").exists() or json.loads(
        (root / "zarr.json").read_text() if (root / "zarr.json").exists() else "{}"
    ).get("consolidated_metadata"):
        zarr.consolidate_metadata(str(root))


def update_metadata(
    path: str | os.PathLike,
    *,
    obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
) -> None:
    """Replace the obs and/or var table of a store in place, without touching X.

    The new tables are validated first (a DataFrame with one row per cell / gene and the
    same index as the file). Each is written under a temporary key, then swapped in by
    two renames, so an interruption leaves the old table (or, between the renames, both
    tables, which the next call repairs), never a file without it. HDF5 does not reclaim
    the old table's space; ``h5repack`` does.

    Passes over X: none.

    Parameters
    ----------
    path
        An ``.h5ad`` file or anndata zarr store.
    obs, var
        The new tables; ``None`` keeps the stored one.

    Examples
    --------
    >>> import os, shutil, tempfile, scdask
    >>> path = os.path.join(tempfile.mkdtemp(), "s.h5ad")
    >>> _ = shutil.copy(scdask.datasets.sample_path(), path)
    >>> obs = scdask.read_h5ad(path).obs
    >>> obs["batch"] = "b1"
    >>> scdask.io.update_metadata(path, obs=obs)
    >>> list(scdask.read_h5ad(path).obs["batch"].unique())
    ['b1']
    """
    fmt = guess_format(path)
    p = check_path(path, fmt)
    tables = {k: v for k, v in (("obs", obs), ("var", var)) if v is not None}
    with open_store(str(p), fmt) as f:
        for key, df in tables.items():
            # After a swap cut between its two renames, the table sits under its old name.
            stored = next((k for k in (key, _swap_keys(key)[1]) if k in f), None)
            if stored is None:
                raise FileFormatError(f"{str(path)!r} has no {key!r} table to replace.")
            group = f[stored]
            index = pd.Index(ad.io.read_elem(group[group.attrs["_index"]]))
            _validate_table(df, key, index, str(path))
    if fmt == "h5ad":
        with h5py.File(p, "r+") as f:
            for key, df in tables.items():
                _swap_h5(f, key, df)
    else:
        for key, df in tables.items():
            _swap_zarr(p, key, df)
