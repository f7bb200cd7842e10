"""Block-type dispatch: the only place that branches on numpy / scipy / cupy blocks."""

from __future__ import annotations

from scdask._ops._register import register_dask
from scdask._ops._sparse import CSCBlock, CSRBlock, as_block, concatenate, is_sparse_block
from scdask._ops._values import stored_values, value_problems

register_dask()

__all__ = [
    "CSCBlock",
    "CSRBlock",
    "as_block",
    "concatenate",
    "is_sparse_block",
    "stored_values",
    "value_problems",
]
