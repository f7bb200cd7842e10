"""Block statistics shared by every module of ``scdask.pp``.

Every statistic that ``scdask.pp`` needs from ``X`` is a per-block partial result: rows
(cells) are whole inside a row block, so per-cell numbers are computed block by block and
concatenated, and per-gene numbers are partial sums that dask adds up in a tree. These
helpers build those graphs; each public function then runs a single ``dask.compute``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from functools import partial

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from dask._task_spec import Alias, DataNode, Task, TaskRef, convert_legacy_graph
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.utils import ensure_dict, funcname

from scdask._errors import InputError
from scdask._ops import CSCBlock, CSRBlock, as_block

#: ``var`` columns that hold gene symbols, in the order they are looked for when the gene
#: names are Ensembl IDs (CELLxGENE writes ``feature_name``, scanpy's 10x reader
#: ``gene_symbols``).
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_name", "gene_symbol", "symbol")

_ENSEMBL = r"^ENS[A-Z]*G\d"  # ENSG…, ENSMUSG…, ENSDARG…: Ensembl gene IDs of any species


def get_matrix(
    adata: AnnData,
    *,
    layer: str | None = None,
    use_raw: bool | None = False,
    step: str | None = None,
):
    """The matrix a function works on: ``X``, ``adata.layers[layer]`` or ``adata.raw.X``.

    The one place where ``scdask.pp`` (and :func:`scdask.activity.infer`) resolve
    ``layer=`` and ``use_raw=``. ``use_raw=True`` reads ``adata.raw.X``, whose genes are
    ``adata.raw.var``; a function named by ``step`` writes per-gene results into ``var`` or
    replaces ``X`` with what it made of that matrix, so it needs ``raw`` to have exactly
    ``var``'s genes (true of CELLxGENE files). The matrix is returned through
    :func:`accept_matrix` (a Dask array of pydata ``sparse`` or plain scipy chunks gets a
    per-chunk conversion to scdask's blocks; nothing is computed).

    Raises
    ------
    scdask.InputError
        ``layer`` and ``use_raw=True`` together; ``use_raw=True`` without ``adata.raw``;
        ``step`` given and ``raw`` has other genes than ``var``.
    KeyError
        ``layer`` is not a layer of ``adata``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> a = ad.AnnData(np.zeros((2, 3)), layers={"counts": np.ones((2, 3))})
    >>> a.raw = ad.AnnData(np.full((2, 3), 2.0), var=a.var)
    >>> float(get_matrix(a, layer="counts")[0, 0]), float(get_matrix(a, use_raw=True)[0, 0])
    (1.0, 2.0)
    >>> get_matrix(a, layer="counts", use_raw=True)
    Traceback (most recent call last):
    ...
    scdask._errors.InputError: pass layer= or use_raw=True, not both: ...
    """
    if use_raw and layer is not None:
        raise InputError(
            f"pass layer= or use_raw=True, not both: got layer={layer!r} and use_raw=True; "
            "layer reads adata.layers[layer], use_raw adata.raw.X"
        )
    if use_raw:
        if getattr(adata, "raw", None) is None:
            raise InputError(
                "use_raw=True, but adata.raw is empty; drop use_raw (or pass layer= naming "
                f"the layer that holds the matrix; layers: {list(adata.layers)})"
            )
        raw = adata.raw
        if step is not None and not raw.var_names.equals(adata.var_names):
            raise InputError(
                f"{step}(use_raw=True) writes per-gene results or a new X, but adata.raw has "
                f"other genes ({raw.n_vars:,}) than adata ({adata.n_vars:,}); run it on "
                "adata.raw.to_adata() instead"
            )
        return accept_matrix(raw.X)
    if layer is None:
        return accept_matrix(adata.X)
    if layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers ({list(adata.layers)}).")
    return accept_matrix(adata.layers[layer])


def matrix_name(*, layer: str | None = None, use_raw: bool | None = False) -> str:
    """How messages name the matrix :func:`get_matrix` resolves.

    Examples
    --------
    >>> matrix_name(layer="counts"), matrix_name(use_raw=True), matrix_name()
    ("layers['counts']", 'raw.X', 'X')
    """
    if layer is not None:
        return f"layers[{layer!r}]"
    return "raw.X" if use_raw else "X"


def gene_names(
    adata: AnnData, *, gene_symbols: str | None = None, use_raw: bool | None = False
) -> pd.Index:
    """The names of the genes of the matrix :func:`get_matrix` resolves, as strings:
    ``var_names``, or the values of the ``var`` column ``gene_symbols`` (of ``raw.var``
    with ``use_raw``; a column only ``var`` has is taken from ``var`` by gene name, and
    genes it lacks get ``""``).

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> var = pd.DataFrame({"feature_name": ["MT-CO1", "CD3E"]}, index=["ENSG1", "ENSG2"])
    >>> a = ad.AnnData(np.ones((1, 2)), var=var)
    >>> list(gene_names(a)), list(gene_names(a, gene_symbols="feature_name"))
    (['ENSG1', 'ENSG2'], ['MT-CO1', 'CD3E'])
    """
    table = adata.raw.var if use_raw and adata.raw is not None else adata.var
    if gene_symbols is None:
        return pd.Index(table.index.astype(str))
    if gene_symbols in table.columns:
        values = as_frame(table, [gene_symbols])[gene_symbols]
    elif use_raw and gene_symbols in adata.var.columns:
        values = as_frame(adata.var, [gene_symbols])[gene_symbols].reindex(table.index)
    else:
        where = "raw.var" if use_raw else "var"
        raise InputError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.{where} (columns: "
            f"{list(table.columns)}); name the column that holds gene symbols, or leave "
            "gene_symbols out to use var_names"
        )
    values = pd.Series(values).astype(object)
    return pd.Index(values.where(values.notna(), "").astype(str).to_numpy())


def looks_ensembl(names) -> bool:
    """Whether more than half of ``names`` are Ensembl gene IDs (``ENSG…``, ``ENSMUSG…``).

    Examples
    --------
    >>> looks_ensembl(["ENSG00000141510", "ENSMUSG00000059552", "CD3E"])
    True
    """
    names = pd.Index(names).astype(str)
    return bool(len(names)) and float(names.str.contains(_ENSEMBL, regex=True).mean()) > 0.5


def symbol_column(var: pd.DataFrame, *also: pd.DataFrame) -> str | None:
    """The first of :data:`SYMBOL_COLUMNS` in ``var`` (or in a table of ``also``) when
    ``var``'s index is mostly Ensembl IDs (:func:`looks_ensembl`), else ``None``.

    Examples
    --------
    >>> import pandas as pd
    >>> var = pd.DataFrame({"feature_name": ["TP53"]}, index=["ENSG00000141510"])
    >>> symbol_column(var), symbol_column(var.set_index("feature_name"))
    ('feature_name', None)
    """
    if not looks_ensembl(var.index):
        return None
    for table in (var, *also):
        column = next((c for c in SYMBOL_COLUMNS if c in table.columns), None)
        if column is not None:
            return column
    return None


def _is_pydata_sparse(x) -> bool:
    """Whether ``x`` is a pydata ``sparse`` array (``COO``, ``GCXS``, ...), without
    importing ``sparse`` (an optional dependency)."""
    return type(x).__module__.split(".")[0] == "sparse" and hasattr(x, "to_scipy_sparse")


def _check_fill(x) -> None:
    fill = getattr(x, "fill_value", 0)
    if fill != 0:
        raise InputError(
            f"a pydata sparse matrix with fill_value={fill!r} stores the values that are not "
            f"{fill!r}, not the non-zeros; pass one with fill_value=0 (e.g. "
            "sparse.COO.from_numpy(dense)) or a dense matrix"
        )


def chunk_as_block(chunk):
    """One chunk of a matrix users pass, as a block scdask computes on (no copy where the
    chunk is one already): pydata ``sparse`` (``COO``, ``GCXS``) and scipy matrices in any
    format become :class:`scdask._ops.CSRBlock` (CSC stays a ``CSCBlock``), ``np.matrix``
    an ndarray; numpy and GPU chunks are returned as they are.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> type(chunk_as_block(sp.coo_matrix(np.eye(2)))).__name__
    'CSRBlock'
    """
    if _is_pydata_sparse(chunk):
        if chunk.ndim != 2:
            raise InputError(f"expected a 2-D matrix, got a {chunk.ndim}-D pydata sparse array")
        _check_fill(chunk)
        chunk = chunk.tocsr() if hasattr(chunk, "tocsr") else chunk.to_scipy_sparse().tocsr()
    if sp.issparse(chunk) and chunk.format not in ("csr", "csc"):
        chunk = chunk.tocsr()
    return as_block(chunk)


def _needs_conversion(meta) -> bool:
    """Whether chunks like ``meta`` must go through :func:`chunk_as_block`: pydata sparse,
    ``np.matrix``, and scipy matrices that are not our blocks (anndata's own lazy reader,
    ``read_lazy``, gives scipy ``csr_matrix`` chunks, on which numpy's ufuncs fail)."""
    if _is_pydata_sparse(meta) or isinstance(meta, np.matrix):
        return True
    return sp.issparse(meta) and not isinstance(meta, (CSRBlock, CSCBlock))


def accept_matrix(x):
    """What users pass as a matrix, as one scdask computes on, without computing anything.

    The one boundary between the matrices users bring and scdask's steps: every ``scdask.pp``
    step and :func:`scdask.activity.infer` read their matrix through it (via
    :func:`get_matrix`), and :func:`scdask.write_h5ad` / ``write_zarr`` write each matrix
    through it. numpy arrays and scipy matrices in memory are returned unchanged (in-memory
    pydata ``sparse`` arrays become a :class:`scdask._ops.CSRBlock`); a Dask array whose
    chunks are pydata ``sparse`` (``COO``, ``GCXS``: dask's documented sparse idiom, used
    with xarray), plain scipy matrices (anndata's ``read_lazy``) or ``np.matrix`` gets one
    :func:`chunk_as_block` per chunk (``map_blocks`` with an explicit ``meta``: nothing runs
    now). Dask arrays of numpy or of scdask's blocks are returned unchanged.

    Raises
    ------
    scdask.InputError
        Not 2-D, or a pydata sparse matrix whose ``fill_value`` is not 0.

    Examples
    --------
    >>> import dask.array as da, numpy as np, scipy.sparse as sp
    >>> x = da.from_array(sp.csr_matrix(np.eye(4)), chunks=(2, 4), asarray=False)
    >>> type(accept_matrix(x)._meta).__name__
    'CSRBlock'
    >>> y = da.ones((4, 3), chunks=2)
    >>> accept_matrix(y) is y
    True
    """
    if x is None:
        return x
    if not isinstance(x, da.Array):
        if _is_pydata_sparse(x):
            return chunk_as_block(x)
        return x
    if x.ndim != 2:
        raise InputError(f"expected a 2-D matrix (cells x genes), got {x.ndim}-D, shape {x.shape}")
    meta = x._meta
    if not _needs_conversion(meta):
        return x
    if isinstance(meta, np.matrix):
        like = np.empty((0, 0), dtype=x.dtype)
    elif sp.issparse(meta) and meta.format == "csc":
        like = CSCBlock((0, 0), dtype=x.dtype)
    else:  # pydata sparse; scipy CSR, COO, ...
        if _is_pydata_sparse(meta):
            _check_fill(meta)
        like = CSRBlock((0, 0), dtype=x.dtype)
    return x.map_blocks(chunk_as_block, dtype=x.dtype, meta=like)


def lazy_matrix(x, block_rows: int | None = None) -> da.Array:
    """``x`` (any matrix :func:`accept_matrix` takes) as a Dask array of row blocks that span
    all columns: in memory, blocks of ``block_rows`` rows (default: one block); a Dask array
    chunked along the genes is rechunked to whole rows.

    Sparse in-memory matrices become :class:`scdask._ops.CSRBlock` blocks.

    Examples
    --------
    >>> import numpy as np
    >>> lazy_matrix(np.ones((4, 3))).chunks
    ((4,), (3,))
    >>> lazy_matrix(np.ones((4, 3)), block_rows=3).chunks
    ((3, 1), (3,))
    """
    x = accept_matrix(x)
    if isinstance(x, da.Array):
        return x if x.numblocks[1] == 1 else x.rechunk({1: -1})
    if sp.issparse(x):
        x = as_block(x.tocsr() if x.format != "csr" else x)
    else:
        x = np.asarray(x)
    rows = x.shape[0] if block_rows is None else min(block_rows, max(x.shape[0], 1))
    bounds = [*range(0, x.shape[0], rows), x.shape[0]] if x.shape[0] else [0, 0]
    # each block is data of its own key (not a slice task on one array key, which dask's
    # optimisation fuses into every consumer): the compute boundary can then send it to a
    # cluster once for all the passes of a step (scdask._compute.ship_once)
    name = f"in-memory-{uuid.uuid4().hex}"
    pieces = itertools.pairwise(bounds)
    graph = {
        (name, i, 0): x[lo:hi] if rows < x.shape[0] else x for i, (lo, hi) in enumerate(pieces)
    }
    chunks = (tuple(np.diff(bounds).tolist()), (x.shape[1],))
    return da.Array(graph, name, chunks, meta=x[:0])


def as_frame(table, columns=None) -> pd.DataFrame:
    """``obs``/``var`` as a pandas DataFrame: as it is, or anndata's lazy ``Dataset2D``
    (``anndata.experimental.read_lazy``) read into memory. ``columns``: only those (names
    that are not columns are left out, for the caller to report); default all.

    Examples
    --------
    >>> import pandas as pd
    >>> as_frame(pd.DataFrame({"a": [1], "b": [2]}), ["b", "c"]).columns.tolist()
    ['b']
    """
    if columns is not None:
        present = set(table.columns)
        table = table[[c for c in columns if isinstance(c, str) and c in present]]
    if isinstance(table, pd.DataFrame):
        return table
    return table.to_memory()


def set_columns(table, values: pd.DataFrame) -> None:
    """Write the columns of ``values`` (indexed like ``table``) into ``obs``/``var``: a pandas
    frame, or anndata's lazy ``Dataset2D``, which takes one column at a time.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame(index=["x", "y"])
    >>> set_columns(t, pd.DataFrame({"n": [1, 2]}, index=t.index))
    >>> t["n"].tolist()
    [1, 2]
    """
    if isinstance(table, pd.DataFrame):
        table[values.columns] = values
        return
    for column in values.columns:
        table[column] = values[column].to_numpy()


def csr(block) -> sp.csr_array:
    """A block as a plain scipy CSR array without explicit zeros (dense blocks converted)."""
    out = sp.csr_array(block.to_scipy() if hasattr(block, "to_scipy") else block)
    if out.nnz and not np.all(out.data):
        out = out.copy()
        out.eliminate_zeros()
    return out


def row_of_values(m: sp.csr_array) -> np.ndarray:
    """The row of every stored value of a CSR matrix."""
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def sum_dtype(dtype) -> np.dtype:
    """The dtype numpy gives a sum over ``dtype`` (float32 stays float32, ints widen)."""
    return np.zeros(1, dtype=dtype).sum().dtype


def _gene_args(x: da.Array, arrays: Sequence[np.ndarray]) -> list:
    """Per-gene side inputs as one-block dask arrays, so every task shares one copy."""
    args: list = []
    for a in arrays:
        a = np.asarray(a)
        index = "uvwxyz"[: a.ndim - 1] + "j"
        args += [da.from_array(a, chunks=a.shape, name=False), index]
    return args


def _row_args(x: da.Array, arrays: Sequence) -> list:
    args: list = []
    for a in arrays:
        if not isinstance(a, da.Array):
            a = da.from_array(np.asarray(a), chunks=(x.chunks[0],), name=False)
        args += [a.rechunk((x.chunks[0],)), "i"]
    return args


def row_partials(
    x: da.Array,
    kernel: Callable[..., np.ndarray],
    n_out: int,
    *,
    rows: Sequence = (),
    genes: Sequence[np.ndarray] = (),
    dtype=np.float64,
    **kwargs,
) -> da.Array:
    """``kernel(block, *rows, *genes, **kwargs)`` per row block -> lazy ``(n_cells, n_out)``.

    ``rows`` are per-cell arrays (sliced like the blocks), ``genes`` per-gene arrays
    (shared whole by every block). ``x`` must span all columns in one block.

    Examples
    --------
    >>> import numpy as np
    >>> x = lazy_matrix(np.arange(6.0).reshape(3, 2))
    >>> row_partials(x, lambda b, w: b @ w[:, None], 1, genes=[np.ones(2)]).compute().ravel()
    array([1., 5., 9.])
    """
    return da.blockwise(
        kernel,
        "ik",
        x,
        "ij",
        *_row_args(x, rows),
        *_gene_args(x, genes),
        new_axes={"k": n_out},
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        concatenate=True,
        **kwargs,
    )


def _leading_axis(kernel, *args, **kwargs) -> np.ndarray:
    return kernel(*args, **kwargs)[np.newaxis]


def gene_partials(
    x: da.Array,
    kernel: Callable[..., np.ndarray],
    n_out: int,
    *,
    rows: Sequence = (),
    genes: Sequence[np.ndarray] = (),
    **kwargs,
) -> da.Array:
    """Sum over blocks of ``kernel(block, *rows, *genes, **kwargs)`` (each ``(n_out, n_genes)``).

    Lazy ``(n_out, n_genes)`` float64; dask adds the block partials in a tree.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.arange(6.0).reshape(3, 2), chunks=(1, 2))
    >>> gene_partials(x, lambda b: b.sum(axis=0, keepdims=True), 1).compute()
    array([[6., 9.]])
    """
    per_block = da.blockwise(
        partial(_leading_axis, kernel),
        "ikj",
        x,
        "ij",
        *_row_args(x, rows),
        *_gene_args(x, genes),
        new_axes={"k": n_out},
        adjust_chunks={"i": 1},
        dtype=np.float64,
        meta=np.empty((0, 0, 0)),
        concatenate=True,
        **kwargs,
    )
    return per_block.sum(axis=0)


def block_tasks(
    x: da.Array,
    func: Callable,
    *,
    rows: Sequence = (),
    shared: Sequence = (),
    name: str | None = None,
    **kwargs,
) -> tuple[dict, list]:
    """One task per row block of ``x``: ``func(block, *rows, *shared, **kwargs)``.

    Returns ``(graph, keys)``: a low-level graph and the key of each block's result, to wrap
    in a collection. The task that makes a block (its read, with anything fused into it) is
    inlined into the task that consumes it, so a block exists only inside one task: the
    scheduler cannot read blocks ahead of their consumers and keep them (measured before:
    up to 4 blocks of 64 MB held per worker at 100,000 cells, 2 at 20,000, so the peak grew
    with the number of cells). ``rows`` are per-cell arrays, sliced into each task (a few
    kB); each ``shared`` array is one graph key that every task refers to, so it is stored
    and sent once per worker, not once per task. ``x`` must span all columns in one block;
    ``name`` prefixes the keys (default: the name of ``func``).

    Examples
    --------
    >>> import dask, numpy as np, dask.array as da
    >>> graph, keys = block_tasks(da.ones((4, 3), chunks=(2, 3)), lambda b, w: b @ w,
    ...                           shared=[np.arange(3.0)])
    >>> dask.get(graph, keys)
    (array([3., 3.]), array([3., 3.]))
    """
    if x.numblocks[1] != 1:
        raise ValueError("block_tasks needs row blocks that span all columns.")
    # dask's task spec (what its own fusion builds): the task that makes a block is nested,
    # unchanged, as an argument of the consumer's task, so it runs inside that task
    graph = dict(
        convert_legacy_graph(
            ensure_dict(x.__dask_optimize__(x.__dask_graph__(), x.__dask_keys__()))
        )
    )
    name = f"{name or funcname(func)}-{tokenize(x, func, rows, shared, kwargs)}"
    shared_refs = []
    for a in shared:
        a = np.asarray(a)
        key = f"shared-{tokenize(a)}"
        graph[key] = DataNode(key, a)
        shared_refs.append(TaskRef(key))
    bounds = np.cumsum((0, *x.chunks[0]))
    rows = [np.asarray(r) for r in rows]
    keys = []
    for i in range(x.numblocks[0]):
        block = graph.pop((x.name, i, 0))
        if isinstance(block, DataNode):  # in-memory data: its own key, sent once per compute
            graph[block.key] = block
            block = TaskRef(block.key)
        key = (name, i)
        slices = [r[bounds[i] : bounds[i + 1]] for r in rows]
        graph[key] = Task(key, func, block, *slices, *shared_refs, **kwargs)
        keys.append(key)
    return graph, keys


def sum_blocks(
    x: da.Array,
    func: Callable[..., np.ndarray],
    shape: tuple[int, ...],
    *,
    rows: Sequence = (),
    shared: Sequence = (),
    **kwargs,
) -> da.Array:
    """Lazy sum over the row blocks of ``x`` of ``func(block, *rows, *shared, **kwargs)``.

    Each call returns a float64 array of ``shape``; ``rows`` are per-cell arrays (sliced like
    the blocks), ``shared`` arrays of any shape given whole to every block (see
    :func:`block_tasks`). Partial results are added by :func:`running_sum`, so only
    ``shape``-sized arrays travel between workers and a worker holds a few of them,
    whatever the number of blocks.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.ones((10, 3), chunks=(4, 3))
    >>> sum_blocks(x, lambda b, w: w @ b, (3,), rows=[np.arange(10.0)]).compute()
    array([45., 45., 45.])
    """
    graph, keys = block_tasks(
        x, partial(_as_float64, func), rows=rows, shared=shared, name=funcname(func), **kwargs
    )
    total = running_sum(_delayed(graph, keys))
    return da.from_delayed(total, shape, dtype=np.float64, meta=np.empty((0,) * len(shape)))


def _as_float64(func, *args, **kwargs) -> np.ndarray:
    return np.asarray(func(*args, **kwargs), dtype=np.float64)


def _delayed(graph: dict, keys: list, nout: int | None = None) -> list[Delayed]:
    """A :class:`~dask.delayed.Delayed` per key of ``graph`` (all sharing the graph)."""
    hlg = HighLevelGraph.from_collections(keys[0][0], graph, dependencies=())
    return [Delayed(key, hlg, length=nout, layer=keys[0][0]) for key in keys]


def map_rows(
    x: da.Array,
    func: Callable[..., np.ndarray],
    n_out: int,
    *,
    rows: Sequence = (),
    shared: Sequence = (),
    dtype=np.float64,
    **kwargs,
) -> da.Array:
    """Lazy ``(n_cells, n_out)`` array of ``func(block, *rows, *shared, **kwargs)`` per block.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.ones((4, 3), chunks=(2, 3))
    >>> map_rows(x, lambda b, v: b @ v, 1, shared=[np.ones((3, 1))]).compute().ravel()
    array([3., 3., 3., 3.])
    """
    graph, keys = block_tasks(x, func, rows=rows, shared=shared, **kwargs)
    name = keys[0][0]
    for i, key in enumerate(keys):
        graph[(name, i, 0)] = Alias((name, i, 0), key)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=())
    chunks = (x.chunks[0], (n_out,))
    return da.Array(hlg, name, chunks, dtype=dtype, meta=np.empty((0, 0), dtype=dtype))


def per_block_pass(x: da.Array, kernel, *, rows: Sequence = (), shared: Sequence = (), **kwargs):
    """One task per row block: ``kernel(block, *rows, *shared, **kwargs) -> (cells, genes)``.

    Lazily returns ``(cells of all blocks stacked, sum of genes over blocks)``. Every block
    has this one consumer, so a worker frees it as soon as the kernel ran: computing several
    statistics of a block as separate graphs makes the scheduler hold blocks until all their
    consumers ran (measured: 1.29 GB instead of 0.52 GB per worker at 100,000 cells).
    """
    graph, keys = block_tasks(x, kernel, rows=rows, shared=shared, **kwargs)
    parts = _delayed(graph, keys, nout=2)
    cells = dask.delayed(np.concatenate)([cells for cells, _ in parts])
    return cells, running_sum([genes for _, genes in parts])


#: Partial results added per reduction task (see :func:`running_sum`).
SPLIT_EVERY = 4


def running_sum(parts: Sequence) -> Delayed:
    """Lazy sum of delayed arrays: groups of :data:`SPLIT_EVERY` consecutive parts are added
    as soon as they are done, and the group sums into a running total, one after the other.

    A plain tree (dask's ``split_every``) keeps each finished node until its siblings are
    done, at every level, so the partials a worker holds grow with the number of blocks
    (measured in the Gram pass of ``recipe``, 2 workers: 5 of the 32 MB partial sums at
    once at 100,000 cells, 2 at 20,000). A plain chain (the total plus a few parts per step)
    falls behind: each step waits for a transfer and for the task running on its worker,
    while both workers make parts (measured: parts held grew to 12 per worker at 200,000
    cells). Here consecutive blocks, which finish close together, are added independently
    of the chain, and the chain takes one group sum per step, so it keeps up: a worker
    holds a few parts and sums, whatever the number of blocks.

    Examples
    --------
    >>> import dask, numpy as np
    >>> running_sum([dask.delayed(np.ones(2)) for _ in range(10)]).compute()
    array([10., 10.])
    """
    parts = list(parts)
    # ahead of the tasks that make more parts: a part waiting to be added is memory held
    with dask.annotate(priority=1):
        groups = [
            parts[i]
            if len(parts[i : i + SPLIT_EVERY]) == 1
            else dask.delayed(_add)(*parts[i : i + SPLIT_EVERY])
            for i in range(0, len(parts), SPLIT_EVERY)
        ]
        total = groups[0]
        for group in groups[1:]:
            total = dask.delayed(_add)(total, group)
    return total


def _add(first, *others):
    out = np.array(first, copy=True)
    for other in others:
        out += other
    return out
