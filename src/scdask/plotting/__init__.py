"""Plots of scdask results: QC metrics, highly variable genes, embeddings, protein activity.

Every function reads small columns of ``obs``/``var``/``obsm`` or small result tables (never
the full matrix), returns a :class:`matplotlib.figure.Figure` without showing it, and
writes a PNG when given ``save=path``. matplotlib is the ``plot`` extra:
``pip install 'scdask[plot]'``.

Examples
--------
>>> from scdask import plotting
>>> fig = plotting.qc(adata, groupby="sample", save="qc.png")  # doctest: +SKIP
>>> fig = plotting.embedding(adata, basis="umap", color="cell_type")  # doctest: +SKIP
"""

from __future__ import annotations

from scdask.plotting._activity import activity_heatmap, volcano
from scdask.plotting._embedding import embedding
from scdask.plotting._qc import hvg, qc

__all__ = ["activity_heatmap", "embedding", "hvg", "qc", "volcano"]
