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

from scdask._errors import InputError
from scdask.io._read import (
    CSCReadWarning,
    MatrixSource,
    auto_rows,
    lazy_matrix,
    matrix_source,
    read_h5ad,
    read_zarr,
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


def _read_lazy(path: str | os.PathLike) -> tuple[ad.AnnData, Format, str]:
    """Open a store lazily without the CSC warning (the tools say their own cost)."""
    fmt = guess_format(path)
    reader = read_h5ad if fmt == "h5ad" else read_zarr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CSCReadWarning)
        adata = reader(path)
    return adata, fmt, str(check_path(path, fmt).resolve())


def _matrix_keys(adata: ad.AnnData) -> list[str]:
    keys = ["X", *(f"layers/{k}" for k in adata.layers)]
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
    with open_store(spath, fmt) as f:
        sources = {key: matrix_source(spath, fmt, f, key) for key in _matrix_keys(adata)}
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
    """What :func:`inspect` reports about a store: printing it gives a short summary."""

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

    def __str__(self) -> str:
        n_obs, n_vars = self.shape
        if self.nnz is None:
            stored = f"{self.layout} {self.dtype}"
        else:
            stored = (
                f"{self.layout} {self.dtype}, {self.nnz:,} non-zeros ({self.density:.2%} dense)"
            )
        lines = [
            f"{self.path} ({self.format}, {format_bytes(self.file_bytes)})",
            f"  X:      {n_obs:,} cells x {n_vars:,} genes, {stored}",
            f"  obs:    {_columns(self.obs_columns)}",
            f"  var:    {_columns(self.var_columns)}",
            "  layers: " + (", ".join(f"{k} ({v})" for k, v in self.layers.items()) or "none"),
            "  raw:    " + (f"{self.raw[0]:,} x {self.raw[1]:,}" if self.raw else "none"),
            f"  read:   {self.n_blocks:,} blocks of {self.chunk_rows:,} rows, about "
            f"{format_bytes(self.block_bytes)} each (scdask.chunk-memory = "
            f"{dask.config.get('scdask.chunk-memory')})",
        ]
        if self.layout == "csc":
            lines.append(
                f"  note:   X is CSC, so each of the {self.n_blocks} blocks scans the whole "
                "matrix; convert once with scdask.io.convert(path, out, layout='csr')."
            )
        return "\n".join(lines)


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


def inspect(path: str | os.PathLike) -> StoreInfo:
    """Describe a store without reading its matrices: shape, layout, sizes, blocks.

    Reads attributes, the ``indptr``-free metadata and the column names of obs/var;
    the number of non-zeros comes from the length of ``X/data``.

    Parameters
    ----------
    path
        An ``.h5ad`` file or anndata zarr store.

    Returns
    -------
    StoreInfo
        ``str(info)`` is a readable summary (what ``scdask inspect`` prints).

    Examples
    --------
    >>> import scdask
    >>> info = scdask.io.inspect(scdask.datasets.sample_path())
    >>> info.shape, info.layout
    ((559, 32786), 'csr')
    >>> print(info)  # doctest: +ELLIPSIS
    /...celltypist_sample_counts.h5ad (h5ad, ...)
      X:      559 cells x 32,786 genes, csr float32, ...
    """
    fmt = guess_format(path)
    p = check_path(path, fmt)
    spath = str(p.resolve())
    with open_store(spath, fmt) as f:
        if "X" not in f:
            raise FileFormatError(f"{str(path)!r} has no X matrix; it is not an AnnData file.")
        x = matrix_source(spath, fmt, f, "X")
        layers = {}
        if "layers" in f:
            for k in f["layers"]:
                layers[k] = matrix_source(spath, fmt, f, f"layers/{k}").layout
        raw = None
        if "raw" in f and "X" in f["raw"]:
            raw = matrix_source(spath, fmt, f, "raw/X").shape
        obs_columns = _column_order(f["obs"]) if "obs" in f else []
        var_columns = _column_order(f["var"]) if "var" in f else []
    n_cells = x.shape[0] * x.shape[1]
    rows = auto_rows(x)
    return StoreInfo(
        path=spath,
        format=fmt,
        file_bytes=_store_bytes(p),
        shape=x.shape,
        layout=x.layout,
        dtype=str(x.dtype),
        nnz=None if x.layout == "dense" else x.nnz,
        density=None if x.layout == "dense" else x.nnz / max(n_cells, 1),
        obs_columns=obs_columns,
        var_columns=var_columns,
        layers=layers,
        raw=raw,
        chunk_rows=rows,
        n_blocks=math.ceil(x.shape[0] / rows) if x.shape[0] else 0,
        block_bytes=int(rows * x.row_bytes()),
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
