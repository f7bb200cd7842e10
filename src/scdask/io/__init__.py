"""Reading and writing AnnData stores out of core, and file tools (convert, subset, inspect)."""

from __future__ import annotations

from scdask.io._dispatch import read
from scdask.io._read import CSCReadWarning, read_h5ad, read_zarr
from scdask.io._store import FileFormatError
from scdask.io._tenx import read_10x_h5, read_10x_mtx, read_visium
from scdask.io._tools import StoreInfo, convert, inspect, subset, update_metadata
from scdask.io._write import write_h5ad, write_zarr

__all__ = [
    "CSCReadWarning",
    "FileFormatError",
    "StoreInfo",
    "convert",
    "inspect",
    "read",
    "read_10x_h5",
    "read_10x_mtx",
    "read_h5ad",
    "read_visium",
    "read_zarr",
    "subset",
    "update_metadata",
    "write_h5ad",
    "write_zarr",
]
