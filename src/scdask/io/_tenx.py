"""Lazy readers for 10x Genomics outputs: Cell Ranger .h5 and mtx folders, Space Ranger folders.

The matrix of a Cell Ranger ``.h5`` is stored CSC over barcodes, which is CSR of cells x
genes: row blocks are read by slicing ``indptr``, with the same :class:`MatrixSource` /
:func:`read_block` machinery as :func:`scdask.read_h5ad`. A gzip'd ``matrix.mtx.gz`` cannot
be read in pieces, so it is converted once, streaming, into a CSR ``.h5ad`` cache under
dask config ``scdask.cache-dir``, which is then read lazily.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Literal

import anndata as ad
import dask
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.utils import parse_bytes

from scdask._config import cache_dir
from scdask._errors import InputError
from scdask._files import atomic_target
from scdask._progress import advance, expect, step
from scdask.io._read import MatrixSource, lazy_matrix, matrix_source
from scdask.io._store import FileFormatError, open_store

__all__ = ["read_10x_h5", "read_10x_mtx", "read_visium"]

#: Bumped when the layout of the mtx cache changes, so that old caches are not reused.
_CACHE_VERSION = 1
_GEX = "Gene Expression"
#: Fewest mtx lines parsed at a time (pandas parses ~100 bytes of memory per line).
_MIN_LINES = 100_000


# -- shared helpers ----------------------------------------------------------------------------


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"No such {what}: {str(path)!r}. Check the path (current directory: {os.getcwd()})."
        )
    return p


def _runs(keep: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """The kept columns of a boolean mask as ``(start, stop)`` runs; ``None`` if all are kept.

    Examples
    --------
    >>> import numpy as np
    >>> _runs(np.array([True, True, False, True]))
    ((0, 2), (3, 4))
    >>> _runs(np.array([True, True])) is None
    True
    """
    keep = np.asarray(keep, bool)
    if keep.all():
        return None
    edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return tuple((int(a), int(b)) for a, b in zip(starts, stops, strict=True))


def _lazy_adata(
    source: MatrixSource, obs: pd.DataFrame, var: pd.DataFrame, keep, chunk_size
) -> ad.AnnData:
    """An AnnData whose X reads ``source`` lazily, keeping the ``keep`` columns of ``var``."""
    if keep is not None:
        source = dataclasses.replace(source, columns=_runs(keep))
        var = var.loc[np.asarray(keep, bool)].copy()
    return ad.AnnData(X=lazy_matrix(source, chunk_size), obs=obs, var=var)


# -- Cell Ranger .h5 ---------------------------------------------------------------------------


def _strings(ds: h5py.Dataset) -> np.ndarray:
    """A string dataset as a numpy array of ``str`` (fixed-length or variable-length)."""
    if ds.dtype.kind in "SOU":
        return np.asarray(ds.asstr()[()], dtype=object).astype(str)
    return np.asarray(ds[()]).astype(str)


def _tenx_group(f: h5py.File, path: str, genome: str | None) -> tuple[str, bool]:
    """The group holding the matrix and whether the file is v3+ (``matrix``) or legacy (v2)."""
    if "matrix" in f:
        return "matrix", True
    genomes = [k for k in f if isinstance(f[k], h5py.Group) and "gene_names" in f[k]]
    if not genomes:
        raise FileFormatError(
            f"{path!r} is HDF5 but not a 10x matrix (top-level keys {sorted(f)}; Cell Ranger "
            "v3+ writes a 'matrix' group); for an AnnData file use scdask.read_h5ad."
        )
    if genome is None:
        if len(genomes) > 1:
            raise InputError(
                f"{path!r} is a Cell Ranger v2 file with {len(genomes)} genomes {genomes}; "
                "choose one: scdask.read_10x_h5(path, genome=...)"
            )
        return genomes[0], False
    if genome not in genomes:
        raise InputError(
            f"{path!r} has no genome {genome!r}; it has {genomes}: pass one of them as genome="
        )
    return genome, False


def _tenx_source(f: h5py.File, path: str, key: str) -> MatrixSource:
    g = f[key]
    for part in ("data", "indices", "indptr", "shape", "barcodes"):
        if part not in g:
            raise FileFormatError(
                f"{key!r} in {path!r} has no {part!r} dataset; the file is damaged or not "
                "written by Cell Ranger: take the .h5 from the Cell Ranger outs/ folder again."
            )
    n_features, n_barcodes = (int(s) for s in g["shape"][()])
    if g["indptr"].shape[0] != n_barcodes + 1 or g["barcodes"].shape[0] != n_barcodes:
        raise FileFormatError(
            f"{key!r} in {path!r} claims {n_barcodes} barcodes but has "
            f"{g['barcodes'].shape[0]} barcodes and {g['indptr'].shape[0]} indptr entries; "
            "the file is damaged: take it from the Cell Ranger outs/ folder again."
        )
    stored = np.dtype(g["data"].dtype)
    # scanpy reads int32 counts as float32; other types as they are
    dtype = np.dtype(np.float32) if stored == np.int32 else stored
    return MatrixSource(
        path, "h5ad", key, "csr", (n_barcodes, n_features), dtype, int(g["data"].shape[0])
    )


def _tenx_tables(f: h5py.File, key: str, v3: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """obs and var as scanpy 1.11 builds them (same names, columns and order)."""
    g = f[key]
    obs = pd.DataFrame(index=pd.Index(_strings(g["barcodes"])))
    if not v3:
        var = pd.DataFrame(
            {"gene_ids": _strings(g["genes"])}, index=pd.Index(_strings(g["gene_names"]))
        )
        return obs, var
    if "features" not in g:
        raise FileFormatError(
            f"{key!r} in the 10x file has no 'features' group (Cell Ranger v3+ writes one); "
            "the file is damaged: take it from the Cell Ranger outs/ folder again."
        )
    feats = g["features"]
    cols: dict[str, np.ndarray] = {}
    if "gene_id" in feats:  # a probe-barcode matrix (Flex)
        cols["gene_ids"] = _strings(feats["gene_id"])
        cols["probe_ids"] = _strings(feats["id"])
    else:
        cols["gene_ids"] = _strings(feats["id"])
    cols["feature_types"] = _strings(feats["feature_type"])
    for name, item in feats.items():
        if not isinstance(item, h5py.Dataset):
            continue
        if name in ("name", "feature_type", "id", "gene_id", "_all_tag_keys"):
            continue
        cols[name] = np.asarray(item[()], bool) if item.dtype.kind == "b" else _strings(item)
    var = pd.DataFrame(cols, index=pd.Index(_strings(feats["name"])))
    if "filtered_barcodes" in g:
        obs["filtered_barcodes"] = np.asarray(g["filtered_barcodes"][()], bool)
    return obs, var


def read_10x_h5(
    path: str | os.PathLike,
    *,
    genome: str | None = None,
    gex_only: bool = True,
    chunk_size: int | str = "auto",
) -> ad.AnnData:
    """Open a Cell Ranger ``.h5`` matrix lazily: X becomes a Dask array of row blocks.

    Reads ``filtered_feature_bc_matrix.h5`` / ``raw_feature_bc_matrix.h5`` of Cell Ranger
    v3+ (and the per-genome groups of v2). The stored matrix is CSC over barcodes, i.e. CSR
    of cells x genes, so each block is a slice of ``indptr`` read inside its task, exactly
    as :func:`scdask.read_h5ad` reads CSR: nothing of the matrix is read here, and blocks
    are sized by ``scdask.chunk-memory``. Feature subsets (``gex_only``, ``genome``) are
    applied inside the tasks that read the blocks.

    The result equals scanpy 1.11's ``sc.read_10x_h5`` on the same file: ``obs_names`` are
    the barcodes (plus ``obs["filtered_barcodes"]`` when stored), ``var_names`` the gene
    symbols *as stored*, which may repeat (scanpy does not make them unique either; call
    ``adata.var_names_make_unique()``), ``var`` has ``gene_ids``, ``feature_types`` and
    every other feature dataset (``genome``, ...); int32 counts are read as float32.

    Passes over X: none (only ``shape``, barcodes and features are read).

    Parameters
    ----------
    path
        The ``.h5`` file.
    genome
        Keep the features of this genome only (v3+); for v2 files, the genome group to
        read (needed when the file holds several).
    gex_only
        Keep only ``"Gene Expression"`` features (drop antibody, CRISPR guide, custom...).
    chunk_size
        Rows (cells) per block, or ``"auto"`` (from ``scdask.chunk-memory``).

    Returns
    -------
    anndata.AnnData
        Cells x genes, X lazy (blocks are :class:`scdask._ops.CSRBlock`).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    scdask.io.FileFormatError
        Not HDF5, not a 10x matrix, or damaged.
    scdask.InputError
        ``genome`` is not in the file.

    Examples
    --------
    >>> import tempfile, scdask
    >>> from scdask.datasets._tenx import tiny_counts, write_10x_h5
    >>> path = write_10x_h5(tiny_counts(6, 5), tempfile.mkdtemp() + "/filtered.h5")
    >>> adata = scdask.read_10x_h5(path, chunk_size=4)
    >>> adata.shape, adata.X.chunks[0]  # the antibody feature is dropped
    ((6, 4), (4, 2))
    >>> list(adata.var.columns)
    ['gene_ids', 'feature_types', 'genome']
    >>> int(adata.X.sum().compute()) == int(tiny_counts(6, 5).X[:, :4].sum())
    True
    """
    p = _existing(path, "file")
    spath = str(p.resolve())
    if p.is_dir() or not h5py.is_hdf5(p):
        raise FileFormatError(
            f"{str(path)!r} is not an HDF5 file, so not a 10x .h5 matrix; for a Cell Ranger "
            "mtx folder use scdask.read_10x_mtx, for any file scdask.read."
        )
    with open_store(spath, "h5ad") as f:
        key, v3 = _tenx_group(f, spath, genome)
        source = _tenx_source(f, spath, key)
        obs, var = _tenx_tables(f, key, v3)
    if len(var) != source.shape[1]:
        raise FileFormatError(
            f"{spath!r} has {len(var)} features but its matrix has {source.shape[1]} rows; "
            "the file is damaged: take it from the Cell Ranger outs/ folder again."
        )
    keep = np.ones(len(var), bool)
    if v3 and genome is not None:
        if "genome" not in var or genome not in set(var["genome"]):
            found = sorted(set(var["genome"])) if "genome" in var else []
            raise InputError(
                f"{spath!r} has no features of genome {genome!r} (genomes: {found}); "
                "pass one of them as genome=, or genome=None for all"
            )
        keep &= (var["genome"] == genome).to_numpy()
    if v3 and gex_only:
        keep &= (var["feature_types"] == _GEX).to_numpy()
    return _lazy_adata(source, obs, var, None if keep.all() else keep, chunk_size)


# -- mtx folders -------------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _one_of(folder: Path, *names: str) -> Path | None:
    for name in names:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def _mtx_files(folder: Path) -> tuple[Path, Path, Path, bool]:
    """``matrix.mtx``, ``features.tsv`` (or v2 ``genes.tsv``), ``barcodes.tsv``, and is_v2."""
    matrix = _one_of(folder, "matrix.mtx")
    features = _one_of(folder, "features.tsv")
    legacy = features is None and _one_of(folder, "genes.tsv") is not None
    if legacy:
        features = _one_of(folder, "genes.tsv")
    barcodes = _one_of(folder, "barcodes.tsv")
    named = {"matrix.mtx.gz": matrix, "features.tsv.gz": features, "barcodes.tsv.gz": barcodes}
    missing = [name for name, p in named.items() if p is None]
    if missing:
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise FileFormatError(
            f"{str(folder)!r} is not a 10x mtx folder: no {', '.join(missing)} (plain or "
            f"gzip'd) among {found}; point at Cell Ranger's filtered_feature_bc_matrix/ folder."
        )
    return matrix, features, barcodes, legacy


def _mtx_header(path: Path) -> tuple[int, int, int, str, int]:
    """``(n_rows, n_cols, n_entries, field, lines before the entries)`` of a MatrixMarket file."""
    try:
        return _parse_mtx_header(path)
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as e:
        raise FileFormatError(
            f"Cannot read the header of {str(path)!r}: {e}; the file is truncated or damaged: "
            "copy or write it again."
        ) from e


def _parse_mtx_header(path: Path) -> tuple[int, int, int, str, int]:
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rt") as f:
        first = f.readline()
        words = first.lower().split()
        if len(words) != 5 or words[0] != "%%matrixmarket" or words[1] != "matrix":
            raise FileFormatError(
                f"{str(path)!r} is not a MatrixMarket file (first line {first[:60]!r}); "
                "a 10x matrix.mtx starts with '%%MatrixMarket matrix coordinate'."
            )
        layout, field, symmetry = words[2:]
        if layout != "coordinate" or field not in ("integer", "real", "pattern"):
            raise FileFormatError(
                f"{str(path)!r} is a MatrixMarket {layout} {field} matrix; scdask reads sparse "
                "'coordinate' matrices of integer, real or pattern values (as Cell Ranger "
                "writes); convert it with scipy.io.mmread / mmwrite."
            )
        if symmetry != "general":
            raise FileFormatError(
                f"{str(path)!r} is a {symmetry} MatrixMarket matrix; a counts matrix is "
                "'general': write it with scipy.io.mmwrite(..., symmetry='general')."
            )
        lines = 1
        for line in f:
            lines += 1
            if line.startswith("%") or not line.strip():
                continue
            try:
                n_rows, n_cols, n_entries = (int(w) for w in line.split())
            except ValueError:
                raise FileFormatError(
                    f"{str(path)!r} has a bad size line {line.strip()[:60]!r} (expected "
                    "'genes cells entries'); the file is damaged: write it again."
                ) from None
            return n_rows, n_cols, n_entries, field, lines
    raise FileFormatError(
        f"{str(path)!r} ends before its size line; the file is truncated: copy it again."
    )


class _Unsorted(Exception):
    """The entries are not ordered by cell: convert through buckets instead."""


class _CSRWriter:
    """Appends rows of a cells x genes CSR matrix to the ``X`` group of an .h5ad, in order."""

    def __init__(self, group: h5py.Group, n_rows: int, n_cols: int, n_entries: int) -> None:
        self.n_rows, self.n_cols = n_rows, n_cols
        chunk = (max(1, min(n_entries, 1 << 20)),)
        self.data = group.create_dataset(
            "data", shape=(n_entries,), maxshape=(None,), dtype=np.float32, chunks=chunk
        )
        self.indices = group.create_dataset(
            "indices", shape=(n_entries,), maxshape=(None,), dtype=np.int32, chunks=chunk
        )
        self.indptr = group.create_dataset("indptr", shape=(n_rows + 1,), dtype=np.int64)
        self.indptr[0] = 0
        self.row = 0  # rows before this one are written
        self.offset = 0  # entries written

    def add(self, stop: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Write rows ``self.row:stop`` from these entries (all of those rows', any order)."""
        if stop <= self.row:
            return
        m = sp.coo_array(
            (vals, (rows - self.row, cols)), shape=(stop - self.row, self.n_cols)
        ).tocsr()
        m.sum_duplicates()  # duplicates summed, indices sorted, as scipy's mmread + tocsr
        end = self.offset + m.nnz
        if end > self.data.shape[0]:  # more entries than announced: refused before this
            self.data.resize((end,))
            self.indices.resize((end,))
        self.data[self.offset : end] = m.data
        self.indices[self.offset : end] = m.indices
        self.indptr[self.row + 1 : stop + 1] = self.offset + m.indptr[1:]
        self.offset, self.row = end, stop

    def close(self) -> None:
        self.add(self.n_rows, *(np.zeros(0, np.int64),) * 2, np.zeros(0, np.float32))
        self.data.resize((self.offset,))
        self.indices.resize((self.offset,))


def _entry_chunks(path: Path, header: tuple[int, int, int, str, int]):
    """``(cell, gene, value)`` arrays of the entries, a bounded chunk at a time, 0-based."""
    n_genes, n_cells, n_entries, field, skip = header
    per_chunk = max(_MIN_LINES, parse_bytes(dask.config.get("scdask.chunk-memory")) // 64)
    n_fields = 2 if field == "pattern" else 3
    expect(-(-n_entries // per_chunk))
    names = ["gene", "cell", "value"][:n_fields]
    seen = 0
    if n_entries == 0:
        return
    try:
        reader = pd.read_csv(
            path,
            sep=r"\s+",
            header=None,
            skiprows=skip,
            usecols=range(n_fields),
            names=names,
            dtype=dict(zip(names, (np.int64, np.int64, np.float64), strict=False)),
            chunksize=per_chunk,
            compression="gzip" if _is_gzip(path) else None,
            engine="c",
        )
        for chunk in reader:
            gene = chunk["gene"].to_numpy() - 1
            cell = chunk["cell"].to_numpy() - 1
            if n_fields == 3:
                value = chunk["value"].to_numpy().astype(np.float32)  # as scanpy: float32
            else:
                value = np.ones(len(gene), np.float32)
            bad = (gene < 0) | (gene >= n_genes) | (cell < 0) | (cell >= n_cells)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise FileFormatError(
                    f"{str(path)!r}: entry {seen + k + 1} is at ({gene[k] + 1}, {cell[k] + 1}), "
                    f"outside the {n_genes} x {n_cells} matrix its size line declares; the "
                    "file is damaged: write it again."
                )
            seen += len(gene)
            if seen > n_entries:
                break
            yield cell, gene, value
            advance()
    except FileFormatError:
        raise
    except (ValueError, EOFError, OSError, zlib.error) as e:
        raise FileFormatError(
            f"Cannot parse {str(path)!r} after {seen:,} entries: {e}; the file is truncated "
            "or damaged: copy or write it again."
        ) from e
    if seen != n_entries:
        held = "more" if seen > n_entries else f"{seen:,}"
        raise FileFormatError(
            f"{str(path)!r} declares {n_entries:,} entries but holds {held}; "
            "the file is truncated or damaged: copy or write it again."
        )


def _write_sorted(path, header, writer: _CSRWriter) -> None:
    """One pass, entries ordered by cell (as Cell Ranger writes): complete cells are written."""
    carry = None
    for cell, gene, value in _entry_chunks(path, header):
        if carry is not None:
            cell, gene, value = (
                np.concatenate(p) for p in zip(carry, (cell, gene, value), strict=True)
            )
        if len(cell) == 0:
            continue
        if cell[0] < writer.row or np.any(cell[1:] < cell[:-1]):
            raise _Unsorted
        last = int(cell[-1])
        cut = int(np.searchsorted(cell, last, side="left"))
        writer.add(last, cell[:cut], gene[:cut], value[:cut])
        carry = (cell[cut:], gene[cut:], value[cut:])
    if carry is not None:
        writer.add(writer.n_rows, *carry)


_ENTRY = np.dtype([("cell", "<i4"), ("gene", "<i4"), ("value", "<f4")])


def _write_bucketed(path, header, writer: _CSRWriter, scratch: Path) -> None:
    """Entries in any order: a pass that spills them into per-cell-range files, then one
    file at a time sorted into rows. Sorting one file takes about ``scdask.chunk-memory``
    on average (~48 bytes per entry: the entries, their COO and CSR forms; cells with many
    entries make their file larger)."""
    n_entries, n_cells = header[2], header[1]
    budget = parse_bytes(dask.config.get("scdask.chunk-memory")) // 48
    per_bucket = max(1, int(budget * n_cells // max(n_entries, 1)))
    n_buckets = -(-n_cells // per_bucket)
    for cell, gene, value in _entry_chunks(path, header):
        bucket = cell // per_bucket
        order = np.argsort(bucket, kind="stable")
        entries = np.empty(len(cell), _ENTRY)
        entries["cell"], entries["gene"], entries["value"] = cell[order], gene[order], value[order]
        sorted_buckets = bucket[order]
        bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
        for part in np.split(entries, bounds):
            if len(part):
                with (scratch / f"{int(part['cell'][0]) // per_bucket}.bin").open("ab") as f:
                    part.tofile(f)
    for b in range(n_buckets):
        file = scratch / f"{b}.bin"
        part = np.fromfile(file, _ENTRY) if file.exists() else np.zeros(0, _ENTRY)
        stop = min((b + 1) * per_bucket, n_cells)
        writer.add(stop, part["cell"].astype(np.int64), part["gene"], part["value"])
        file.unlink(missing_ok=True)


def _read_tsv(path: Path, n_columns: int) -> pd.DataFrame:
    """A header-less tsv as strings, kept as written (no NA guessing, no numbers)."""
    try:
        table = pd.read_csv(
            path,
            sep="\t",
            header=None,
            dtype=str,
            na_filter=False,
            compression="gzip" if _is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame({i: pd.Series(dtype=object) for i in range(n_columns)})
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as e:
        raise FileFormatError(
            f"Cannot read {str(path)!r}: {e}; the file is truncated or damaged: copy it again."
        ) from e
    if table.shape[1] < n_columns:
        raise FileFormatError(
            f"{str(path)!r} has {table.shape[1]} columns; a 10x features file has "
            f"{n_columns} (id, name{', type' if n_columns > 2 else ''}): take it from the "
            "same Cell Ranger folder as the matrix."
        )
    return table


def _mtx_to_h5ad(files: tuple[Path, Path, Path, bool], target: Path, scratch_root: Path) -> None:
    """Convert the folder into an .h5ad at ``target``: X cells x genes CSR float32, obs
    indexed by barcode, var by feature id with ``gene_symbols`` (and ``feature_types``)."""
    matrix, features, barcodes, legacy = files
    header = _mtx_header(matrix)
    n_genes, n_cells = header[0], header[1]
    feats = _read_tsv(features, 2 if legacy else 3)
    cells = _read_tsv(barcodes, 1)
    if len(feats) != n_genes or len(cells) != n_cells:
        raise FileFormatError(
            f"{str(matrix)!r} is {n_genes} genes x {n_cells} cells, but {features.name} has "
            f"{len(feats)} rows and {barcodes.name} {len(cells)}; the files come from "
            "different runs: take all three from one Cell Ranger folder."
        )
    if max(n_genes, n_cells) >= np.iinfo(np.int32).max:
        raise FileFormatError(f"{str(matrix)!r} is too large ({n_genes} x {n_cells}) for int32.")
    var = pd.DataFrame({"gene_symbols": feats[1].to_numpy()}, index=pd.Index(feats[0].to_numpy()))
    if not legacy:
        var["feature_types"] = feats[2].to_numpy()
    obs = pd.DataFrame(index=pd.Index(cells[0].to_numpy()))

    def write(tmp: Path, fill) -> None:
        with h5py.File(tmp, "w") as f:  # "w": a second try starts from an empty file
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            group = f.create_group("X")
            group.attrs["encoding-type"] = "csr_matrix"
            group.attrs["encoding-version"] = "0.1.0"
            group.attrs["shape"] = np.array([n_cells, n_genes], np.int64)
            writer = _CSRWriter(group, n_cells, n_genes, header[2])
            fill(writer)
            writer.close()
            ad.io.write_elem(f, "obs", obs)
            ad.io.write_elem(f, "var", var)

    with atomic_target(target) as tmp, step(f"convert {matrix.name} into a CSR cache"):
        try:
            write(tmp, lambda writer: _write_sorted(matrix, header, writer))
        except _Unsorted:
            with tempfile.TemporaryDirectory(dir=scratch_root, prefix=".mtx-") as scratch:
                write(tmp, lambda w: _write_bucketed(matrix, header, w, Path(scratch)))


def _cache_path(files: tuple[Path, Path, Path, bool]) -> tuple[Path, str]:
    """Where the cache of these files lives, and the prefix every cache of this folder has."""
    folder = str(files[0].parent.resolve())
    stamp = [_CACHE_VERSION]
    for p in files[:3]:
        st = p.stat()
        stamp.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    prefix = hashlib.sha256(folder.encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    return cache_dir() / "10x-mtx" / f"{prefix}-{key}.h5ad", prefix


def mtx_cache(folder: str | os.PathLike) -> Path:
    """The CSR ``.h5ad`` cache of a 10x mtx folder, converted now if it is missing or stale.

    Examples
    --------
    >>> import tempfile
    >>> from scdask.datasets._tenx import tiny_counts, write_10x_mtx
    >>> folder = write_10x_mtx(tiny_counts(), tempfile.mkdtemp() + "/mtx")
    >>> mtx_cache(folder).suffix
    '.h5ad'
    """
    folder = _existing(folder, "folder")
    files = _mtx_files(folder)
    target, prefix = _cache_path(files)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _mtx_to_h5ad(files, target, target.parent)
    for old in target.parent.glob(f"{prefix}-*.h5ad"):  # caches of earlier versions of the input
        if old != target:
            old.unlink(missing_ok=True)
    return target


def read_10x_mtx(
    folder: str | os.PathLike,
    *,
    var_names: Literal["gene_symbols", "gene_ids"] = "gene_symbols",
    make_unique: bool = True,
    gex_only: bool = True,
    chunk_size: int | str = "auto",
) -> ad.AnnData:
    """Open a Cell Ranger mtx folder lazily, through a CSR cache made on the first read.

    The folder holds ``matrix.mtx.gz`` (genes x cells), ``features.tsv.gz`` and
    ``barcodes.tsv.gz`` (Cell Ranger v3+; plain uncompressed names and v2's ``genes.tsv``
    work too). A gzip'd mtx cannot be read in pieces, so the first read converts it,
    streaming, into a CSR ``.h5ad`` under dask config ``scdask.cache-dir`` (folder
    ``10x-mtx/``, named from the folder's absolute path and the files' sizes and mtimes),
    written atomically; later reads open that cache, and a changed input makes a new one
    (the stale one is removed, so arrays read from it before can no longer be computed:
    read the folder again). The input folder is never written to.

    Cost of the first read: one pass over the mtx (entries read in chunks of about
    ``scdask.chunk-memory``), disk = the CSR size (float32 values + int32 indices, about
    8 bytes per entry). Entries ordered by cell, as Cell Ranger writes them, are written
    as they come; any other order costs a second pass and as much scratch disk again
    (entries are spilled into files of a range of cells each, then sorted one file at a
    time). Later reads: no pass, nothing of X is read until computed.

    The result equals scanpy 1.11's ``sc.read_10x_mtx`` on the same folder: X float32
    counts, ``obs_names`` the barcodes, ``var_names`` the symbols made unique with
    ``anndata.utils.make_index_unique`` (``-1``, ``-2``, ...), and ``var`` columns
    ``gene_ids`` (or ``gene_symbols`` with ``var_names="gene_ids"``) and ``feature_types``.
    One difference: names are kept as written (scanpy's pandas read turns a gene called
    ``NA`` into NaN).

    Parameters
    ----------
    folder
        The mtx folder (e.g. ``outs/filtered_feature_bc_matrix``).
    var_names
        ``"gene_symbols"`` or ``"gene_ids"``: which features column indexes ``var``.
    make_unique
        Make repeated gene symbols unique (``var_names="gene_symbols"`` only).
    gex_only
        Keep only ``"Gene Expression"`` features (v3 folders).
    chunk_size
        Rows (cells) per block, or ``"auto"`` (from ``scdask.chunk-memory``).

    Returns
    -------
    anndata.AnnData
        Cells x genes, X lazy (blocks are :class:`scdask._ops.CSRBlock`).

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    scdask.io.FileFormatError
        A file is missing, not MatrixMarket, truncated, or disagrees with the others.

    Examples
    --------
    >>> import gzip, os, tempfile, scdask
    >>> folder = tempfile.mkdtemp()
    >>> with gzip.open(os.path.join(folder, "matrix.mtx.gz"), "wt") as f:  # 3 genes x 2 cells
    ...     _ = f.write("%%MatrixMarket matrix coordinate integer general\\n3 2 3\\n"
    ...                 "1 1 5\\n3 1 1\\n2 2 7\\n")
    >>> with gzip.open(os.path.join(folder, "features.tsv.gz"), "wt") as f:
    ...     _ = f.write("G1\\tCD3E\\tGene Expression\\nG2\\tMS4A1\\tGene Expression\\n"
    ...                 "G3\\tCD3E\\tGene Expression\\n")
    >>> with gzip.open(os.path.join(folder, "barcodes.tsv.gz"), "wt") as f:
    ...     _ = f.write("AAAC-1\\nTTTG-1\\n")
    >>> adata = scdask.read_10x_mtx(folder)
    >>> list(adata.var_names), list(adata.obs_names)
    (['CD3E', 'MS4A1', 'CD3E-1'], ['AAAC-1', 'TTTG-1'])
    >>> adata.X.compute().toarray()
    array([[5., 0., 1.],
           [0., 7., 0.]], dtype=float32)
    """
    if var_names not in ("gene_symbols", "gene_ids"):
        raise InputError(f"var_names must be 'gene_symbols' or 'gene_ids', got {var_names!r}")
    folder_p = _existing(folder, "folder")
    if not folder_p.is_dir():
        raise FileFormatError(
            f"{str(folder)!r} is a file; read_10x_mtx takes the folder that holds "
            "matrix.mtx.gz, features.tsv.gz and barcodes.tsv.gz (or use scdask.read)."
        )
    legacy = _mtx_files(folder_p)[3]
    cache = str(mtx_cache(folder_p))
    with open_store(cache, "h5ad") as f:
        source = matrix_source(cache, "h5ad", f, "X")
        obs = ad.io.read_elem(f["obs"])
        stored = ad.io.read_elem(f["var"])
    ids = stored.index.to_numpy()
    symbols = stored["gene_symbols"].to_numpy()
    if var_names == "gene_symbols":
        index = pd.Index(symbols)
        if make_unique:
            index = ad.utils.make_index_unique(index)
        var = pd.DataFrame({"gene_ids": ids}, index=index)
    else:
        var = pd.DataFrame({"gene_symbols": symbols}, index=pd.Index(ids))
    keep = None
    if not legacy:
        var["feature_types"] = stored["feature_types"].to_numpy()
        if gex_only:
            keep = (var["feature_types"] == _GEX).to_numpy()
            keep = None if keep.all() else keep
    obs.index.name = None
    return _lazy_adata(source, obs, var, keep, chunk_size)


# -- Space Ranger folders ----------------------------------------------------------------------

_POSITION_COLUMNS = [
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def _positions(spatial: Path) -> pd.DataFrame:
    """The spot table, from ``tissue_positions.csv`` (header) or ``tissue_positions_list.csv``."""
    with_header = spatial / "tissue_positions.csv"
    legacy = spatial / "tissue_positions_list.csv"
    if with_header.is_file():
        table = pd.read_csv(with_header, header=0, index_col=0)
        path = with_header
    elif legacy.is_file():
        table = pd.read_csv(legacy, header=None, index_col=0)
        path = legacy
    else:
        raise FileFormatError(
            f"{str(spatial)!r} has neither tissue_positions.csv nor tissue_positions_list.csv; "
            "copy the whole spatial/ folder of the Space Ranger outs/."
        )
    if table.shape[1] != len(_POSITION_COLUMNS):
        raise FileFormatError(
            f"{str(path)!r} has {table.shape[1] + 1} columns; Space Ranger writes 6 (barcode, "
            "in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres)."
        )
    table.columns = _POSITION_COLUMNS
    table.index = table.index.astype(str)
    return table


def read_visium(
    folder: str | os.PathLike,
    *,
    count_file: str = "filtered_feature_bc_matrix.h5",
    library_id: str | None = None,
    chunk_size: int | str = "auto",
) -> ad.AnnData:
    """Open a Space Ranger output folder lazily: spots x genes, with positions and images.

    Reads the counts (``count_file``, or the ``filtered_feature_bc_matrix/`` mtx folder
    when that ``.h5`` is absent) with :func:`read_10x_h5` / :func:`read_10x_mtx`, every
    barcode of the matrix, and adds what scanpy 1.11's ``sc.read_visium`` adds:

    - ``obs["in_tissue"]``, ``obs["array_row"]``, ``obs["array_col"]`` from
      ``spatial/tissue_positions.csv`` (with a header, Space Ranger >= 2.0) or the
      header-less ``spatial/tissue_positions_list.csv``;
    - ``obsm["spatial"]``: the full-resolution pixel coordinates as (x, y) =
      (``pxl_col_in_fullres``, ``pxl_row_in_fullres``), in the file's dtype;
    - ``uns["spatial"][library_id]``: ``images`` (``hires``/``lowres`` PNGs that exist,
      read with matplotlib as float arrays), ``scalefactors`` (``scalefactors_json.json``)
      and ``metadata`` (``chemistry_description``, ``software_version`` of the ``.h5``).

    ``library_id`` defaults to the ``.h5``'s ``library_ids`` attribute (the folder's name
    for an mtx folder). Unlike scanpy, a missing image is skipped (scanpy 1.11 raises), and
    matrix barcodes missing from the positions file are an error (scanpy leaves NaN).

    Passes over X: none (the mtx fallback converts once, see :func:`read_10x_mtx`).

    Parameters
    ----------
    folder
        The Space Ranger ``outs/`` folder.
    count_file
        The counts inside ``folder``: an ``.h5`` file or an mtx folder.
    library_id
        The key in ``uns["spatial"]``.
    chunk_size
        Rows (spots) per block, or ``"auto"`` (from ``scdask.chunk-memory``).

    Returns
    -------
    anndata.AnnData
        Spots x genes, X lazy.

    Raises
    ------
    scdask.io.FileFormatError
        No counts, no ``spatial/`` folder, no positions or scale factors, or positions
        that do not cover the matrix's barcodes.

    Examples
    --------
    >>> import tempfile, scdask
    >>> from scdask.datasets._tenx import tiny_counts, write_visium
    >>> folder = write_visium(tiny_counts(6, 5), tempfile.mkdtemp() + "/outs")
    >>> adata = scdask.read_visium(folder)
    >>> adata.shape, list(adata.obs.columns), adata.obsm["spatial"].shape
    ((6, 4), ['in_tissue', 'array_row', 'array_col'], (6, 2))
    >>> sorted(adata.uns["spatial"]["sample"])
    ['images', 'metadata', 'scalefactors']
    >>> adata.uns["spatial"]["sample"]["images"]["lowres"].shape
    (8, 8, 4)
    """
    root = _existing(folder, "folder")
    if not root.is_dir():
        raise FileFormatError(
            f"{str(folder)!r} is a file; read_visium takes the Space Ranger outs/ folder."
        )
    counts = root / count_file
    mtx = counts if counts.is_dir() else counts.with_name(counts.name.removesuffix(".h5"))
    attrs: dict = {}
    if counts.is_file():
        adata = read_10x_h5(counts, chunk_size=chunk_size)
        with h5py.File(counts, "r") as f:
            attrs = dict(f.attrs)
    elif mtx.is_dir():
        adata = read_10x_mtx(mtx, chunk_size=chunk_size)
    else:
        raise FileFormatError(
            f"{str(root)!r} has no {count_file} (nor the {mtx.name}/ mtx folder); pass the "
            "Space Ranger outs/ folder, or name the counts with count_file="
        )
    spatial = root / "spatial"
    if not spatial.is_dir():
        raise FileFormatError(
            f"{str(root)!r} has no spatial/ folder; copy it from the Space Ranger outs/, or "
            "read the counts alone with scdask.read_10x_h5."
        )
    if library_id is None:
        ids = attrs.get("library_ids")
        if ids is not None and len(np.atleast_1d(ids)):
            first = np.atleast_1d(ids)[0]
            library_id = first.decode() if isinstance(first, bytes) else str(first)
        else:
            library_id = root.name
    positions = _positions(spatial)
    missing = adata.obs_names.difference(positions.index)
    if len(missing):
        raise FileFormatError(
            f"{len(missing)} barcodes of the matrix (first {missing[0]!r}) are not in the "
            f"positions file of {str(spatial)!r}; the spatial/ folder comes from another run."
        )
    spots = positions.loc[adata.obs_names]
    obs = adata.obs.copy()
    for col in _POSITION_COLUMNS[:3]:
        obs[col] = spots[col].to_numpy()
    adata.obs = obs
    adata.obsm["spatial"] = spots[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    scalefactors_file = spatial / "scalefactors_json.json"
    if not scalefactors_file.is_file():
        raise FileFormatError(
            f"{str(spatial)!r} has no scalefactors_json.json; copy the whole spatial/ folder "
            "of the Space Ranger outs/."
        )
    images = {}
    for res in ("hires", "lowres"):
        image = spatial / f"tissue_{res}_image.png"
        if image.is_file():
            import matplotlib.image

            images[res] = matplotlib.image.imread(image)
    metadata = {
        k: attrs[k].decode() if isinstance(attrs[k], bytes) else attrs[k]
        for k in ("chemistry_description", "software_version")
        if k in attrs
    }
    adata.uns["spatial"] = {
        library_id: {
            "images": images,
            "scalefactors": json.loads(scalefactors_file.read_bytes()),
            "metadata": metadata,
        }
    }
    return adata
