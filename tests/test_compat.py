"""The private corners of other libraries scdask reaches into, fenced in ``scdask._compat``:
these tests fail loudly when an upstream release changes them."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import scipy.sparse as sp

from scdask._compat import graph_literal, named_layers


def test_graph_literal_sees_data_and_not_tasks():
    from dask._task_spec import DataNode, Task  # the private names graph_literal relies on

    x = np.arange(6.0).reshape(3, 2)
    assert graph_literal(DataNode("k", x)) is x
    assert graph_literal(Task("t", np.sum, x)) is None
    assert graph_literal(x) is x  # a materialised graph may hold the data itself
    graph = dict(da.from_array(sp.csr_array(x), chunks=(3, 2), asarray=False).__dask_graph__())
    assert any(sp.issparse(graph_literal(v)) for v in graph.values())


def test_named_layers_leave_out_x():
    a = ad.AnnData(np.ones((2, 2)), layers={"counts": np.zeros((2, 2))})
    assert list(named_layers(a)) == ["counts"]  # anndata 0.13 also lists X, as None
