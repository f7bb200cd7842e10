"""Reading and writing AnnData stores out of core, and file tools (convert, subset, inspect)."""

from __future__ import annotations

from scdask.io._read import CSCReadWarning, read_h5ad, read_zarr
from scdask.io._store import FileFormatError

__all__ = [
    "CSCReadWarning",
    "FileFormatError",
    "read_h5ad",
    "read_zarr",
]
