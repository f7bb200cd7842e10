"""Lazy readers: an .h5ad / zarr AnnData whose matrices are Dask arrays of row blocks."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize
from dask.utils import parse_bytes

from scdask._errors import InputError
from scdask._ops import CSRBlock, stored_values
from scdask.io._store import (
    MATRIX_ENCODINGS,
    FileFormatError,
    Format,
    check_path,
    encoding_of,
    open_store,
)

__all__ = ["CSCReadWarning", "read_h5ad", "read_zarr"]


class CSCReadWarning(UserWarning):
    """A CSC matrix is read as row blocks: every block scans the whole matrix."""


@dataclass(frozen=True)
class MatrixSource:
    """Where a matrix lives and how it is stored: all a task needs to read a block (pickles)."""

    path: str
    fmt: Format
    key: str
    layout: str  # "csr" | "csc" | "dense"
    shape: tuple[int, int]
    dtype: np.dtype
    nnz: int
    #: Refuse NaN and infinite values when a block is read (off for the file tools, which copy).
    finite: bool = True
    #: Stored columns a block keeps, as ``(start, stop)`` runs in order; ``None`` keeps all
    #: (a 10x file's gene-expression features). ``dtype`` may differ from the stored dtype:
    #: blocks are cast to it when read (10x int32 counts become float32, as scanpy reads them).
    columns: tuple[tuple[int, int], ...] | None = None

    @property
    def n_columns(self) -> int:
        """Columns of a block: all stored columns, or those ``columns`` keeps."""
        if self.columns is None:
            return self.shape[1]
        return sum(stop - start for start, stop in self.columns)

    def row_bytes(self) -> float:
        """Bytes one row of this matrix takes in memory, on average."""
        if self.layout == "dense":
            return self.shape[1] * self.dtype.itemsize
        per_nnz = self.dtype.itemsize + 4  # data + int32 column index
        return max(self.nnz / max(self.shape[0], 1), 1.0) * per_nnz + 8


def matrix_source(path: str, fmt: Format, f, key: str, *, finite: bool = True) -> MatrixSource:
    """Describe the matrix element ``key`` of the open store ``f`` (reads attributes only)."""
    if key not in f:
        raise FileFormatError(f"{path!r} has no {key!r} element.")
    elem = f[key]
    enc = encoding_of(elem)
    if enc not in MATRIX_ENCODINGS:
        raise FileFormatError(
            f"{key!r} in {path!r} has encoding {enc!r}; scdask reads {', '.join(MATRIX_ENCODINGS)}. "
            "Rewrite it with anndata (ad.read_h5ad(path).write_h5ad(new_path)) or convert it "
            "to CSR with scdask.io.convert."
        )
    if enc == "array":
        if len(elem.shape) != 2:
            raise FileFormatError(f"{key!r} in {path!r} is {len(elem.shape)}-D; a matrix is 2-D.")
        return MatrixSource(
            path, fmt, key, "dense", tuple(elem.shape), np.dtype(elem.dtype), 0, finite
        )
    for part in ("data", "indices", "indptr"):
        if part not in elem:
            raise FileFormatError(
                f"{key!r} in {path!r} is encoded {enc!r} but has no {part!r} array; "
                "the file is damaged or was not written by anndata."
            )
    shape = tuple(int(s) for s in elem.attrs["shape"])
    layout = enc.split("_")[0]
    n_ptr = shape[0] if layout == "csr" else shape[1]
    if elem["indptr"].shape[0] != n_ptr + 1:
        raise FileFormatError(
            f"{key!r} in {path!r} claims shape {shape} but its indptr has "
            f"{elem['indptr'].shape[0]} entries (expected {n_ptr + 1}); the file is damaged."
        )
    return MatrixSource(
        path,
        fmt,
        key,
        layout,
        shape,
        np.dtype(elem["data"].dtype),
        int(elem["data"].shape[0]),
        finite,
    )


def auto_rows(source: MatrixSource) -> int:
    """Rows per block so that one block takes about ``scdask.chunk-memory`` bytes."""
    budget = parse_bytes(dask.config.get("scdask.chunk-memory"))
    rows = int(budget // source.row_bytes())
    rows = max(rows, int(dask.config.get("scdask.min-chunk-rows")))
    rows = min(rows, int(dask.config.get("scdask.max-chunk-rows")))
    return max(1, min(rows, source.shape[0]))


def read_block(source: MatrixSource, start: int, stop: int):
    """Read rows ``start:stop`` of a matrix (opens the file by path; runs inside tasks).

    Raises :class:`scdask.InputError` when the rows hold NaN or infinite values (unless the
    source says ``finite=False``): whoever computes the block, scdask or the user's own
    graph, learns where the bad values are instead of getting NaN or zero results.
    """
    try:
        with open_store(source.path, source.fmt) as f:
            elem = f[source.key]
            if source.layout == "dense":
                block = np.asarray(elem[start:stop])
            elif source.layout == "csr":
                block = _csr_rows(elem, source, start, stop)
            else:
                block = _csc_rows(elem, source, start, stop)
    except FileFormatError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise FileFormatError(
            f"Reading rows {start}:{stop} of {source.key!r} from {source.path!r} failed: {e}. "
            "The file may be truncated, damaged, or changed since it was opened; "
            "open it again with scdask.read_h5ad."
        ) from e
    if source.columns is not None:
        runs = [np.arange(lo, hi, dtype=np.int64) for lo, hi in source.columns]
        block = block[:, np.concatenate(runs) if runs else np.zeros(0, np.int64)]
    if block.dtype != source.dtype:
        block = block.astype(source.dtype)
    if source.finite and source.dtype.kind == "f":
        _refuse_nonfinite(block, source, start)
    return block


def _refuse_nonfinite(block, source: MatrixSource, start: int) -> None:
    values = stored_values(block)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    if sp.issparse(block):
        row = int(np.searchsorted(block.indptr, first, side="right")) - 1
        col = int(block.indices[first])
    else:
        row, col = divmod(first, block.shape[1])
    raise InputError(
        f"{source.key!r} in {source.path!r} holds {int(bad.sum()):,} NaN or infinite values "
        f"in rows {start}:{start + block.shape[0]} (the first at row {start + row}, column "
        f"{col}); scdask needs finite values: fix them at the source, or drop those cells "
        "with scdask.io.subset (which copies them as they are)"
    )


def _csr_rows(elem, source: MatrixSource, start: int, stop: int) -> CSRBlock:
    indptr = np.asarray(elem["indptr"][start : stop + 1], dtype=np.int64)
    lo, hi = int(indptr[0]), int(indptr[-1])
    data = np.asarray(elem["data"][lo:hi])
    indices = np.asarray(elem["indices"][lo:hi])
    if indices.dtype != np.int32 and source.shape[1] < np.iinfo(np.int32).max:
        indices = indices.astype(np.int32)
    indptr -= lo
    if indices.dtype == np.int32 and hi - lo < np.iinfo(np.int32).max:
        # Matching index dtypes: an int64 indptr makes scipy copy the indices to int64.
        indptr = indptr.astype(np.int32)
    if data.shape[0] != hi - lo or indices.shape[0] != hi - lo:
        raise FileFormatError(
            f"{source.key!r} in {source.path!r}: rows {start}:{stop} point past the end of "
            "data/indices; the file is truncated."
        )
    return CSRBlock((data, indices, indptr), shape=(stop - start, source.shape[1]), copy=False)


def _csc_rows(elem, source: MatrixSource, start: int, stop: int) -> CSRBlock:
    """Rows of a CSC matrix: scan the columns in bounded slices, keep entries in the rows."""
    indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
    n_cols = source.shape[1]
    step = max(1, int(parse_bytes(dask.config.get("scdask.chunk-memory")) // 8))
    rows, cols, vals = [], [], []
    lo = 0
    while lo < indptr[-1]:
        hi = min(int(indptr[-1]), lo + step)
        idx = np.asarray(elem["indices"][lo:hi])
        keep = (idx >= start) & (idx < stop)
        if keep.any():
            dat = np.asarray(elem["data"][lo:hi])
            col_of = np.searchsorted(indptr, np.arange(lo, hi), side="right") - 1
            rows.append(idx[keep] - start)
            cols.append(col_of[keep])
            vals.append(dat[keep])
        lo = hi
    if rows:
        coo = sp.coo_array(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(stop - start, n_cols),
        )
    else:
        coo = sp.coo_array((stop - start, n_cols), dtype=source.dtype)
    out = coo.tocsr()
    out.sort_indices()
    return CSRBlock(out)


def lazy_matrix(source: MatrixSource, chunk_size: int | str = "auto") -> da.Array:
    """A Dask array of row blocks of ``source``, one task per block, nothing read yet.

    Examples
    --------
    >>> from scdask.datasets import sample_path
    >>> with open_store(sample_path(), "h5ad") as f:
    ...     src = matrix_source(str(sample_path()), "h5ad", f, "X")
    >>> lazy_matrix(src, 100).chunks[0][:2]
    (100, 100)
    """
    n_rows, n_cols = source.shape[0], source.n_columns
    rows = auto_rows(source) if chunk_size == "auto" else int(chunk_size)
    if rows <= 0:
        raise InputError(f"chunk_size must be a positive number of rows or 'auto', got {rows}.")
    bounds = [*list(range(0, n_rows, rows)), n_rows] if n_rows else [0, 0]
    chunks = (tuple(np.diff(bounds).tolist()), (n_cols,))
    mtime = os.stat(source.path).st_mtime_ns
    name = f"read-{source.key.replace('/', '-')}-" + tokenize(source, rows, mtime)
    dsk = {
        (name, i, 0): (read_block, source, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)
    }
    if source.layout == "dense":
        meta = np.empty((0, 0), dtype=source.dtype)
    else:
        meta = CSRBlock((0, 0), dtype=source.dtype)
    return da.Array(dsk, name, chunks, meta=meta, dtype=source.dtype)


def _read(
    path: str | os.PathLike,
    fmt: Format,
    chunk_size: int | str,
    *,
    finite: bool = True,
) -> ad.AnnData:
    p = check_path(path, fmt)
    spath = str(p.resolve())
    with open_store(spath, fmt) as f:
        if "X" not in f:
            raise FileFormatError(
                f"{str(path)!r} has no X matrix (top-level keys: {sorted(f.keys())}). "
                "scdask needs an AnnData file with X; write one with anndata."
            )
        for needed in ("obs", "var"):
            if needed not in f:
                raise FileFormatError(
                    f"{str(path)!r} has no {needed!r} table; it is not an AnnData file."
                )
        obs = _read_frame(f, "obs", spath)
        var = _read_frame(f, "var", spath)
        x_src = matrix_source(spath, fmt, f, "X", finite=finite)
        _check_shape(x_src, obs, var, spath)
        layer_srcs = {}
        if "layers" in f:
            for k in f["layers"]:
                layer_srcs[k] = matrix_source(spath, fmt, f, f"layers/{k}", finite=finite)
                _check_shape(layer_srcs[k], obs, var, spath)
        raw = None
        if "raw" in f and "X" in f["raw"]:
            raw_var = _read_frame(f, "raw/var", spath)
            raw_src = matrix_source(spath, fmt, f, "raw/X", finite=finite)
            _check_shape(raw_src, obs, raw_var, spath)
            raw = (raw_src, raw_var)
        others = {
            k: ad.io.read_elem(f[k]) if k in f else {}
            for k in ("obsm", "varm", "obsp", "varp", "uns")
        }
    csc = [s for s in [x_src, *layer_srcs.values(), *(raw[:1] if raw else ())] if s.layout == "csc"]
    for s in csc:
        n_blocks = -(-s.shape[0] // (auto_rows(s) if chunk_size == "auto" else int(chunk_size)))
        warnings.warn(
            f"{s.key!r} in {str(path)!r} is stored CSC (column-major). scdask reads it as row "
            f"blocks with bounded memory, but each of its {n_blocks} blocks scans the whole "
            f"matrix ({s.nnz * (s.dtype.itemsize + 4) / 2**30:.2f} GiB), so one pass reads it "
            f"{n_blocks} times. Convert once: scdask.io.convert({str(path)!r}, 'out.h5ad', "
            "layout='csr').",
            CSCReadWarning,
            stacklevel=3,
        )
    adata = ad.AnnData(
        X=lazy_matrix(x_src, chunk_size),
        obs=obs,
        var=var,
        layers={k: lazy_matrix(s, chunk_size) for k, s in layer_srcs.items()},
        **others,
    )
    if raw is not None:
        raw_src, raw_var = raw
        adata.raw = ad.AnnData(X=lazy_matrix(raw_src, chunk_size), obs=obs, var=raw_var)
    return adata


def _read_frame(f, key: str, path: str) -> pd.DataFrame:
    try:
        return ad.io.read_elem(f[key])
    except Exception as e:
        raise FileFormatError(
            f"Cannot read the {key!r} table of {path!r}: {e}. The file is damaged or uses an "
            "encoding this anndata version does not know; rewrite it with a current anndata."
        ) from e


def _check_shape(src: MatrixSource, obs: pd.DataFrame, var: pd.DataFrame, path: str) -> None:
    if src.shape != (len(obs), len(var)):
        raise FileFormatError(
            f"{src.key!r} in {path!r} has shape {src.shape} but obs has {len(obs)} rows and "
            f"var has {len(var)} rows; the matrix and its annotations disagree, so the file "
            "is damaged or was edited by hand. Rewrite it from its source."
        )


def read_h5ad(path: str | os.PathLike, *, chunk_size: int | str = "auto") -> ad.AnnData:
    """Open an ``.h5ad`` file lazily: matrices become Dask arrays of row blocks.

    ``X``, every layer and ``raw.X`` are Dask arrays whose blocks are
    :class:`scdask._ops.CSRBlock` (scipy ``csr_array`` subclasses that answer the whole
    numpy/dask protocol) for sparse data and numpy arrays for dense data. ``obs``/``var``
    are pandas, ``obsm``/``varm``/``obsp``/``varp``/``uns`` are read into memory.
    Nothing of a matrix is read until it is computed; each task opens the file by path,
    so the array works unchanged on a distributed cluster with worker processes.

    Passes over X: none (only attributes and the annotation tables are read).

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    chunk_size
        Rows per block, or ``"auto"`` to size blocks from ``dask.config``'s
        ``scdask.chunk-memory`` (bytes of non-zeros a block may take).

    Returns
    -------
    anndata.AnnData
        With lazy matrices.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    scdask.io.FileFormatError
        Not HDF5, truncated, no ``X``, an unknown encoding, or a shape that disagrees
        with ``obs``/``var``.

    Warns
    -----
    CSCReadWarning
        ``X`` (or a layer) is stored CSC; the warning says what a pass costs and how to
        convert once.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path(), chunk_size=200)
    >>> adata.X.chunks[0]
    (200, 200, 159)
    >>> totals = adata.X.sum(axis=1).compute()
    >>> totals.shape
    (559,)
    """
    return _read(path, "h5ad", chunk_size)


def read_zarr(path: str | os.PathLike, *, chunk_size: int | str = "auto") -> ad.AnnData:
    """Open an anndata zarr store lazily, exactly as :func:`read_h5ad` opens an ``.h5ad``.

    Passes over X: none.

    Parameters
    ----------
    path
        The zarr store (a directory).
    chunk_size
        Rows per block, or ``"auto"`` (from ``scdask.chunk-memory``).

    Returns
    -------
    anndata.AnnData
        With lazy matrices.

    Examples
    --------
    >>> import scdask, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "sample.zarr")
    >>> scdask.write_zarr(scdask.read_h5ad(scdask.datasets.sample_path()), out)
    >>> scdask.read_zarr(out).shape
    (559, 32786)
    """
    return _read(path, "zarr", chunk_size)
