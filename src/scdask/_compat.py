"""What differs between the anndata versions scdask supports (0.12 on Python 3.11, 0.13+)."""

from __future__ import annotations

__all__ = ["graph_literal", "named_layers"]


def named_layers(adata) -> dict:
    """``adata.layers`` as a plain dict of the named layers.

    anndata 0.13 lists ``X`` among the layers under the key ``None``; scdask's writers and
    checks mean the named layers only.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> a = ad.AnnData(np.ones((2, 2)), layers={"counts": np.ones((2, 2))})
    >>> list(named_layers(a))
    ['counts']
    """
    return {k: v for k, v in adata.layers.items() if k is not None}


def graph_literal(node):
    """The data a graph entry holds as it is (not a task), or ``None`` for a task.

    dask 2025+ wraps data in ``dask._task_spec.DataNode`` (private, so reached here only);
    a materialised graph may also hold the data itself (``da.from_array`` chunks). The test
    ``tests/test_compat.py`` fails loudly if dask changes either.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np
    >>> graph = dict(da.from_array(np.arange(4), chunks=2).__dask_graph__())
    >>> [graph_literal(v).tolist() for v in graph.values() if graph_literal(v) is not None]
    [[0, 1], [2, 3]]
    """
    from dask._task_spec import DataNode, GraphNode

    if isinstance(node, DataNode):
        return node.value
    if isinstance(node, GraphNode) or isinstance(node, tuple):
        return None
    return node
