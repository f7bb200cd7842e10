"""scdask: single-cell and spatial expression analysis on atlases larger than memory, as Dask graphs.

Examples
--------
>>> import scdask
>>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
>>> adata.X.sum(axis=1).compute().shape
(559,)
"""

from __future__ import annotations

from scdask import (
    _config,  # noqa: F401  (registers the dask.config defaults)
    _ops,  # noqa: F401  (registers the block types with dask)
    activity,
    datasets,
    io,
    launch,
    plotting,
)
from scdask import preprocessing as pp
from scdask._errors import InputError
from scdask.io import (
    read,
    read_10x_h5,
    read_10x_mtx,
    read_h5ad,
    read_visium,
    read_zarr,
    write_h5ad,
    write_zarr,
)

__all__ = [
    "InputError",
    "activity",
    "datasets",
    "io",
    "launch",
    "plotting",
    "pp",
    "read",
    "read_10x_h5",
    "read_10x_mtx",
    "read_h5ad",
    "read_visium",
    "read_zarr",
    "write_h5ad",
    "write_zarr",
]

__version__ = "0.1.0"
