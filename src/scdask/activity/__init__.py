"""SecAct-style secreted-protein activity inference (ridge regression + permutation test).

:func:`infer` runs secactpy's bulk, pseudobulk, single-cell and spatial pipelines on
in-memory or lazy AnnData (a dask task per block of cells), :func:`to_frames` gives
secactpy's dict of DataFrames; the building blocks (:func:`ridge`, :func:`permutation_table`,
the signature helpers) are public too.
"""

from __future__ import annotations

from scdask.activity._infer import LEVELS, infer
from scdask.activity._permutation import RNG_METHODS, permutation_table
from scdask.activity._results import STATS, to_frames
from scdask.activity._ridge import (
    Model,
    SparseTargets,
    build_model,
    map_ridge,
    projection_matrix,
    ridge,
    ridge_block,
)
from scdask.activity._signature import (
    BUNDLED_SIGNATURES,
    expand_rows,
    group_signatures,
    load_signature,
)

__all__ = [
    "BUNDLED_SIGNATURES",
    "LEVELS",
    "RNG_METHODS",
    "STATS",
    "Model",
    "SparseTargets",
    "build_model",
    "expand_rows",
    "group_signatures",
    "infer",
    "load_signature",
    "map_ridge",
    "permutation_table",
    "projection_matrix",
    "ridge",
    "ridge_block",
    "to_frames",
]
