"""``scdask.read``: open any supported file or folder lazily, choosing the reader from its contents."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import h5py

from scdask.io._read import read_h5ad, read_zarr
from scdask.io._store import FileFormatError, is_zarr_store, open_store
from scdask.io._tenx import read_10x_h5, read_10x_mtx, read_visium

__all__ = ["is_anndata_store", "read"]

_ACCEPTED = (
    "scdask.read accepts an .h5ad file, an anndata zarr store, a 10x .h5 matrix, a folder "
    "with matrix.mtx(.gz), or a Space Ranger outs/ folder (spatial/ and a filtered matrix)"
)


def _hdf5_kind(path: Path) -> str:
    """``"h5ad"``, ``"10x"`` or a description of what the HDF5 file holds instead."""
    with open_store(path, "h5ad") as f:  # a damaged file: FileFormatError saying so
        keys = sorted(f.keys())
        if "matrix" in f and isinstance(f["matrix"], h5py.Group):
            return "10x"
        if "X" in f or f.attrs.get("encoding-type") in ("anndata", b"anndata"):
            return "h5ad"
        if keys and all(isinstance(f[k], h5py.Group) and "gene_names" in f[k] for k in keys):
            return "10x"  # Cell Ranger v2: one group per genome
    return f"an HDF5 file with top-level keys {keys[:8]}"


def _visium_counts(folder: Path) -> bool:
    return (folder / "filtered_feature_bc_matrix.h5").is_file() or (
        folder / "filtered_feature_bc_matrix"
    ).is_dir()


def _has_mtx(folder: Path) -> bool:
    return (folder / "matrix.mtx.gz").is_file() or (folder / "matrix.mtx").is_file()


def is_anndata_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an AnnData store (an .h5ad file or a zarr store), not a 10x file.

    Examples
    --------
    >>> import scdask
    >>> is_anndata_store(scdask.datasets.sample_path())
    True
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return is_zarr_store(p)
    return p.is_file() and h5py.is_hdf5(p) and _hdf5_kind(p) == "h5ad"


def read(path: str | os.PathLike, *, chunk_size: int | str = "auto", **kwargs) -> ad.AnnData:
    """Open a file or folder lazily with the reader its contents call for.

    ============================================================  ============================
    what ``path`` is                                              reader
    ============================================================  ============================
    an HDF5 file with an AnnData ``X`` (``.h5ad``)                :func:`scdask.read_h5ad`
    a zarr store (``.zattrs``/``.zgroup``/``zarr.json`` inside)    :func:`scdask.read_zarr`
    an HDF5 file with a 10x ``matrix`` group (Cell Ranger .h5)    :func:`scdask.read_10x_h5`
    a folder with ``matrix.mtx(.gz)``, or that file itself        :func:`scdask.read_10x_mtx`
    a folder with ``spatial/`` and a filtered matrix               :func:`scdask.read_visium`
    ============================================================  ============================

    The kind is decided from the contents (HDF5 keys, files in the folder), not from the
    name alone. Passes over X: those of the reader (none, or one to cache a gzip'd mtx).

    Parameters
    ----------
    path
        The file or folder.
    chunk_size
        Rows per block, or ``"auto"`` (from ``scdask.chunk-memory``).
    **kwargs
        Passed on to the reader (e.g. ``gex_only=False``, ``library_id="A1"``).

    Returns
    -------
    anndata.AnnData
        With lazy matrices.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    scdask.io.FileFormatError
        None of the above: one line says what was found and what is accepted.

    Examples
    --------
    >>> import tempfile, scdask
    >>> from scdask.datasets._tenx import tiny_counts, write_10x_h5
    >>> scdask.read(scdask.datasets.sample_path()).shape
    (559, 32786)
    >>> scdask.read(write_10x_h5(tiny_counts(), tempfile.mkdtemp() + "/f.h5")).shape
    (6, 4)
    >>> scdask.read(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scdask.io._store.FileFormatError: '...' is an empty folder; scdask.read accepts ...
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"No such file or folder: {str(path)!r}. Check the path "
            f"(current directory: {os.getcwd()})."
        )
    if p.is_dir():
        if is_zarr_store(p):
            return read_zarr(p, chunk_size=chunk_size, **kwargs)
        if (p / "spatial").is_dir() and (_visium_counts(p) or "count_file" in kwargs):
            return read_visium(p, chunk_size=chunk_size, **kwargs)
        if _has_mtx(p):
            return read_10x_mtx(p, chunk_size=chunk_size, **kwargs)
        names = sorted(q.name + ("/" if q.is_dir() else "") for q in p.iterdir())
        found = f"a folder holding {names[:8]}" if names else "an empty folder"
        if len(names) > 8:
            found = found[:-1] + f", ... ({len(names)} entries)]"
        hint = (
            "; for Cell Ranger outs/ pass outs/filtered_feature_bc_matrix.h5"
            if _visium_counts(p)
            else ""
        )
        raise FileFormatError(f"{str(path)!r} is {found}; {_ACCEPTED}{hint}.")
    if p.name in ("matrix.mtx.gz", "matrix.mtx"):
        return read_10x_mtx(p.parent, chunk_size=chunk_size, **kwargs)
    if h5py.is_hdf5(p):
        kind = _hdf5_kind(p)
        if kind == "h5ad":
            return read_h5ad(p, chunk_size=chunk_size, **kwargs)
        if kind == "10x":
            return read_10x_h5(p, chunk_size=chunk_size, **kwargs)
        raise FileFormatError(f"{str(path)!r} is {kind}; {_ACCEPTED}.")
    with p.open("rb") as f:
        head = f.read(8)
    raise FileFormatError(
        f"{str(path)!r} is not HDF5 ({p.stat().st_size} bytes, first bytes {head!r}); {_ACCEPTED}."
    )
