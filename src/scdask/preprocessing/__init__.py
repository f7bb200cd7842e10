"""Preprocessing on lazy (Dask) or in-memory AnnData, with scanpy's names and results.

Examples
--------
>>> import scdask
>>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
>>> scdask.pp.calculate_qc_metrics(adata)
>>> "total_counts" in adata.obs
True
"""

from __future__ import annotations

from scdask.preprocessing._filter import filter_cells, filter_genes
from scdask.preprocessing._graph import leiden, neighbors, umap
from scdask.preprocessing._hvg import highly_variable_genes
from scdask.preprocessing._normalize import log1p, normalize_total
from scdask.preprocessing._pca import pca
from scdask.preprocessing._qc import annotate_gene_groups, calculate_qc_metrics
from scdask.preprocessing._recipe import recipe
from scdask.preprocessing._scale import scale

__all__ = [
    "annotate_gene_groups",
    "calculate_qc_metrics",
    "filter_cells",
    "filter_genes",
    "highly_variable_genes",
    "leiden",
    "log1p",
    "neighbors",
    "normalize_total",
    "pca",
    "recipe",
    "scale",
    "umap",
]
