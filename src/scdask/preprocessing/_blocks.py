"""Block statistics shared by every module of ``scdask.pp``.

Every statistic that ``scdask.pp`` needs from ``X`` is a per-block partial result: rows
(cells) are whole inside a row block, so per-cell numbers are computed block by block and
concatenated, and per-gene numbers are partial sums that dask adds up in a tree. These
helpers build those graphs; each public function then runs a single ``dask.compute``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from scdask._ops import as_block


def get_matrix(adata: AnnData, *, layer: str | None = None):
    """The matrix a function works on: ``X`` or ``adata.layers[layer]``."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers ({list(adata.layers)}).")
    return adata.layers[layer]


def lazy_matrix(x) -> da.Array:
    """``x`` as a Dask array of row blocks that span all columns (in-memory: one block).

    Sparse in-memory matrices become one :class:`scdask._ops.CSRBlock`; a Dask array
    chunked along the genes is rechunked to whole rows.

    Examples
    --------
    >>> import numpy as np
    >>> lazy_matrix(np.ones((4, 3))).chunks
    ((4,), (3,))
    """
    if isinstance(x, da.Array):
        return x if x.numblocks[1] == 1 else x.rechunk({1: -1})
    if sp.issparse(x):
        x = as_block(x.tocsr() if x.format != "csr" else x)
    else:
        x = np.asarray(x)
    return da.from_array(x, chunks=x.shape, asarray=False, name=False)


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


#: Partial results added per reduction task (bounds the memory of the tree of partial sums).
SPLIT_EVERY = 4


def _block_args(x: da.Array, rows: Sequence, shared: Sequence) -> list:
    """Blockwise (array, index) pairs: per-cell ``rows`` sliced like ``x``, ``shared`` whole.

    Each shared array becomes one task that every block depends on, so it is stored once in
    the graph (and once per worker), not once per task.
    """
    args: list = []
    for a in rows:
        a = a if isinstance(a, da.Array) else da.from_array(np.asarray(a), chunks=(x.chunks[0],))
        args += [a.rechunk((x.chunks[0],)), ("i",)]
    for n, a in enumerate(shared):
        a = np.asarray(a)
        args += [da.from_array(a, chunks=a.shape), tuple(f"s{n}_{d}" for d in range(a.ndim))]
    return args


def _whole(arg):
    """The one block of an argument whose other axes are single chunks (blockwise passes
    those, unconcatenated, as nested one-element lists; concatenating would copy them)."""
    while isinstance(arg, list):
        (arg,) = arg
    return arg


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
    the blocks), ``shared`` arrays of any shape given whole to every block. Partial results
    are added in a tree of :data:`SPLIT_EVERY` at a time, so only ``shape``-sized arrays
    travel between workers and a worker holds a few of them, whatever the number of blocks.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.ones((10, 3), chunks=(4, 3))
    >>> sum_blocks(x, lambda b, w: w @ b, (3,), rows=[np.arange(10.0)]).compute()
    array([45., 45., 45.])
    """

    def per_block(*a, **kw):
        out = func(*(_whole(v) for v in a), **kw)
        return np.asarray(out, dtype=np.float64).reshape((1, *shape))

    out_index = ("i", *(f"o{d}" for d in range(len(shape))))
    parts = da.blockwise(
        per_block,
        out_index,
        x,
        ("i", "j"),
        *_block_args(x, rows, shared),
        new_axes={f"o{d}": s for d, s in enumerate(shape)},
        adjust_chunks={"i": 1},
        concatenate=False,
        dtype=np.float64,
        meta=np.empty((0,) * len(out_index), dtype=np.float64),
        **kwargs,
    )
    # small groups: a worker holds a few partials at a time, however many blocks there are
    return parts.sum(axis=0, split_every=SPLIT_EVERY)


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
    return da.blockwise(
        lambda *a, **kw: func(*(_whole(v) for v in a), **kw),
        ("i", "k"),
        x,
        ("i", "j"),
        *_block_args(x, rows, shared),
        new_axes={"k": n_out},
        concatenate=False,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        **kwargs,
    )


def per_block_pass(x: da.Array, kernel, *, rows: Sequence = (), shared: Sequence = (), **kwargs):
    """One task per row block: ``kernel(block, *rows, *shared, **kwargs) -> (cells, genes)``.

    Lazily returns ``(cells of all blocks stacked, sum of genes over blocks)``. Every block
    has this one consumer, so a worker frees it as soon as the kernel ran: computing several
    statistics of a block as separate graphs makes the scheduler hold blocks until all their
    consumers ran (measured: 1.29 GB instead of 0.52 GB per worker at 100,000 cells).
    """
    bounds = np.cumsum((0, *x.chunks[0]))
    shared = [dask.delayed(np.asarray(a)) for a in shared]
    parts = [
        dask.delayed(kernel, nout=2)(
            block, *(np.asarray(r)[bounds[i] : bounds[i + 1]] for r in rows), *shared, **kwargs
        )
        for i, block in enumerate(x.to_delayed().ravel())
    ]
    sums = [genes for _, genes in parts]
    while len(sums) > 1:
        sums = [
            dask.delayed(sum)(sums[i : i + SPLIT_EVERY]) for i in range(0, len(sums), SPLIT_EVERY)
        ]
    return dask.delayed(np.concatenate)([cells for cells, _ in parts]), sums[0]
