"""scdask: single-cell and spatial expression analysis on atlases larger than memory, as Dask graphs.

Examples
--------
>>> import scdask
>>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
>>> adata.X
dask.array<...>
"""

from __future__ import annotations

from scdask import _config  # noqa: F401  (registers the dask.config defaults)
from scdask import _ops  # noqa: F401  (registers the block types with dask)
from scdask import io
from scdask.io import read_h5ad, read_zarr

__all__ = [
    "datasets",
    "io",
    "read_h5ad",
    "read_zarr",
    "write_h5ad",
    "write_zarr",
]

__version__ = "0.1.0"
