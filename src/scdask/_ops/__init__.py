"""Block-type dispatch: the only place that branches on numpy / scipy / cupy blocks."""

from __future__ import annotations

from scdask._ops._compat import register_anndata, register_scanpy
from scdask._ops._register import register_dask
from scdask._ops._sparse import (
    BLOCK_BASE,
    CSCBlock,
    CSRBlock,
    as_block,
    concatenate,
    is_sparse_block,
)
from scdask._ops._values import stored_values, value_problems

register_dask()
register_anndata()
register_scanpy()

__all__ = [
    "BLOCK_BASE",
    "CSCBlock",
    "CSRBlock",
    "as_block",
    "concatenate",
    "is_sparse_block",
    "stored_values",
    "value_problems",
]
