"""Opening .h5ad files and anndata zarr stores by path, with errors a person can act on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import h5py

from scdask._errors import InputError

Format = Literal["h5ad", "zarr"]

#: Encodings of a matrix element that scdask reads lazily.
MATRIX_ENCODINGS = ("csr_matrix", "csc_matrix", "array")


class FileFormatError(InputError):
    """The file is not a readable AnnData store (not HDF5/zarr, truncated, no X, bad encoding...)."""


def guess_format(path: str | os.PathLike) -> Format:
    """``"zarr"`` for a directory store, else ``"h5ad"``.

    Examples
    --------
    >>> guess_format("atlas.h5ad")
    'h5ad'
    """
    return "zarr" if Path(path).is_dir() else "h5ad"


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding zarr metadata at its top (format 2 or 3).

    Examples
    --------
    >>> import tempfile
    >>> is_zarr_store(tempfile.mkdtemp())
    False
    """
    p = Path(path)
    return (p / ".zattrs").exists() or (p / ".zgroup").exists() or (p / "zarr.json").exists()


def check_path(path: str | os.PathLike, fmt: Format) -> Path:
    """Resolve ``path`` and check it is a store of the given format, or raise a clear error.

    Examples
    --------
    >>> check_path("missing.h5ad", "h5ad")
    Traceback (most recent call last):
    ...
    FileNotFoundError: No such file: 'missing.h5ad'. Check the path ...
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"No such file: {str(path)!r}. Check the path (current directory: {os.getcwd()})."
        )
    if fmt == "h5ad":
        if p.is_dir():
            raise FileFormatError(
                f"{str(path)!r} is a directory, not an .h5ad file. "
                "For an anndata zarr store use scdask.read_zarr."
            )
        if not h5py.is_hdf5(p):
            raise FileFormatError(
                f"{str(path)!r} is not an HDF5 file, so it cannot be an .h5ad "
                f"({p.stat().st_size} bytes; first bytes {p.read_bytes()[:8]!r}). "
                "Pass an .h5ad written by anndata/scanpy, or a zarr store to scdask.read_zarr."
            )
    elif not is_zarr_store(p):
        raise FileFormatError(
            f"{str(path)!r} is not a zarr store (no .zattrs or zarr.json inside). "
            "For an .h5ad file use scdask.read_h5ad."
        )
    return p


@contextlib.contextmanager
def open_store(path: str | os.PathLike, fmt: Format) -> Iterator:
    """Open an AnnData store read-only: an ``h5py.File`` or a ``zarr.Group``.

    Used inside tasks too: every task opens the file by path, so no open handle is ever
    part of a graph.

    Examples
    --------
    >>> from scdask.datasets import sample_path
    >>> with open_store(sample_path(), "h5ad") as f:
    ...     "X" in f
    True
    """
    if fmt == "h5ad":
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise FileFormatError(
                f"Cannot open {str(path)!r} as HDF5: {e}. The file is probably truncated or "
                "damaged (an interrupted copy or write); copy or write it again."
            ) from e
        try:
            yield f
        finally:
            f.close()
    else:
        import zarr

        yield zarr.open_group(str(path), mode="r")


def encoding_of(elem) -> str:
    """The anndata encoding of an element: ``csr_matrix``, ``csc_matrix``, ``array``, ...

    Examples
    --------
    >>> from scdask.datasets import sample_path
    >>> with open_store(sample_path(), "h5ad") as f:
    ...     encoding_of(f["X"])
    'csr_matrix'
    """
    enc = elem.attrs.get("encoding-type")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if enc is None:
        # Old files (anndata < 0.7) have no encoding attributes: dense datasets and
        # sparse groups that carry h5sparse_format.
        fmt = elem.attrs.get("h5sparse_format")
        if fmt is not None:
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            return f"{fmt}_matrix"
        return "array" if hasattr(elem, "shape") and hasattr(elem, "dtype") else "unknown"
    return str(enc)
