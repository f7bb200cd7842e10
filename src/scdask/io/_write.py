"""Streaming, atomic writers: a lazy AnnData goes to .h5ad / zarr one block at a time.

Each matrix that is a Dask array is computed block by block, in order, with a bounded
window of blocks in flight, and appended to resizable ``data``/``indices``/``indptr``
arrays (sparse) or written into a preallocated array (dense). Matrices with the same blocks
(``X`` and the layers of an activity result, say) are streamed together: block ``i`` of
every one is computed in one unit, so the work they share runs once, not once per matrix.
Everything else (obs, var, uns, in-memory matrices, 1-D arrays) goes through
``anndata.io.write_elem``, so the result is an ordinary anndata store.

The store is built under a temporary name next to ``path`` and renamed onto ``path`` only
when complete; on any error (``KeyboardInterrupt`` included) the temporary is removed and
an existing file at ``path`` is left as it was.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import dask
import dask.array as da
import h5py
import numpy as np
import scipy.sparse as sp
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from scdask import _progress
from scdask._compat import named_layers
from scdask._compute import active_client, shared_keys, ship_once
from scdask._errors import InputError
from scdask._files import atomic_target, refuse_to_replace
from scdask._ops import CSCBlock, CSRBlock
from scdask.io._read import MatrixSource
from scdask.io._store import Format, is_zarr_store
from scdask.preprocessing._blocks import accept_matrix, as_frame

__all__ = ["write_h5ad", "write_zarr"]

#: Elements of 1-D sparse arrays per storage chunk: at most 1 MiB of float32, at least 16 kiB.
_CHUNK_ELEMS = 2**18
_MIN_CHUNK_ELEMS = 2**12
#: Bytes per storage chunk of a dense matrix.
_DENSE_CHUNK_BYTES = 2**22


def write_h5ad(
    adata: ad.AnnData,
    path: str | os.PathLike,
    *,
    compression: str | None = None,
) -> None:
    """Write an AnnData to ``.h5ad``, streaming lazy matrices block by block.

    ``X``, layers and ``raw.X`` may be Dask arrays (of :class:`scdask._ops.CSRBlock`,
    scipy or numpy blocks, read by :func:`scdask.read_h5ad` and possibly transformed by
    lazy operations) or in-memory matrices. A Dask matrix is never held whole: its
    blocks are computed in order, a few at a time (one window per worker thread), and
    appended to the file. Sparse blocks are written as anndata's ``csr_matrix``
    (``csc_matrix`` for an array of CSC column blocks, such as ``X.T``), dense blocks
    as ``array``. The result reads with ``anndata.read_h5ad`` and scanpy.

    Passes over X: one per lazy matrix written. Upstream results that every block
    shares (a full reduction such as per-cell totals) are recomputed per window, so
    compute such statistics first (scdask's preprocessing functions do).

    The file is written under a temporary name in the same folder and renamed onto
    ``path`` when complete. If anything fails (or is interrupted), the temporary file
    is removed and an existing file at ``path`` is left untouched.

    Parameters
    ----------
    adata
        The AnnData to write; lazy or in memory.
    path
        Destination ``.h5ad`` file. May exist (it is replaced when the new file is
        complete) unless it is one of ``adata``'s inputs (see Raises).
    compression
        HDF5 filter for the matrices and tables: ``None``, ``"gzip"`` or ``"lzf"``.

    Raises
    ------
    scdask.InputError
        ``path`` is a file ``adata`` was made from (read lazily, or recorded by an
        in-memory result), a link to one, a folder holding one or a path inside one:
        checked before anything is written. anndata's own ``adata.write_h5ad`` has no such
        guard; write through scdask to keep inputs safe.
    FileNotFoundError
        The folder of ``path`` does not exist.

    Examples
    --------
    >>> import os, tempfile, numpy as np, scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> adata.X = np.log1p(adata.X)
    >>> out = os.path.join(tempfile.mkdtemp(), "log.h5ad")
    >>> scdask.write_h5ad(adata, out, compression="gzip")
    >>> import anndata as ad
    >>> ad.read_h5ad(out).X.shape
    (559, 32786)
    """
    if compression not in (None, "gzip", "lzf"):
        raise InputError(f"compression must be None, 'gzip' or 'lzf', got {compression!r}.")
    write_store(
        adata, path, "h5ad", WriteOptions({"compression": compression} if compression else {})
    )


def write_zarr(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """Write an AnnData to an anndata zarr store, streaming lazy matrices block by block.

    Exactly as :func:`write_h5ad`, in anndata's zarr layout (zarr format
    ``anndata.settings.zarr_write_format``); the store directory is built under a
    temporary name and renamed onto ``path`` when complete.

    Passes over X: one per lazy matrix written.

    Parameters
    ----------
    adata
        The AnnData to write; lazy or in memory.
    path
        Destination store (a directory). May exist (it is replaced when the new
        store is complete) unless ``adata`` reads its matrices from it.

    Examples
    --------
    >>> import os, tempfile, scdask, anndata as ad
    >>> out = os.path.join(tempfile.mkdtemp(), "sample.zarr")
    >>> scdask.write_zarr(scdask.read_h5ad(scdask.datasets.sample_path()), out)
    >>> ad.read_zarr(out).n_obs
    559
    """
    write_store(adata, path, "zarr", WriteOptions())


# -- the file as a whole --------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    """How matrices are written: HDF5 dataset options and the window of blocks in flight."""

    dataset_kwargs: dict = field(default_factory=dict)
    window: int | None = None


def write_store(
    adata: ad.AnnData, path: str | os.PathLike, fmt: Format, opts: WriteOptions
) -> None:
    """Write ``adata`` atomically to ``path`` in format ``fmt`` (what both writers call).

    Examples
    --------
    >>> import os, tempfile, anndata as ad, numpy as np
    >>> out = os.path.join(tempfile.mkdtemp(), "a.h5ad")
    >>> write_store(ad.AnnData(np.ones((3, 2))), out, "h5ad", WriteOptions(window=1))
    >>> float(ad.read_h5ad(out).X.sum())
    6.0
    """
    target = Path(path).expanduser().absolute()
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot write {str(path)!r}: the folder {str(target.parent)!r} does not exist."
        )
    refuse_to_replace([target], sources_of(adata))
    if target.is_dir() and (fmt == "h5ad" or not is_zarr_store(target)):
        raise InputError(
            f"refusing to write {str(path)!r}: it is a folder"
            + ("" if fmt == "h5ad" else " but not a zarr store")
            + ", which would be replaced; name a new file or store inside it, or another path"
        )
    with atomic_target(target) as tmp:
        with _create_store(tmp, fmt) as root:
            _write_anndata(root, adata, opts)


def _write_anndata(root, adata: ad.AnnData, opts: WriteOptions) -> None:
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    sinks: list[_Sink] = []
    if adata.X is not None:
        _put(sinks, root, "X", adata.X, opts)
    # read_lazy's obs/var are Dataset2D, which anndata cannot write: as pandas
    ad.io.write_elem(root, "obs", as_frame(adata.obs), dataset_kwargs=opts.dataset_kwargs)
    ad.io.write_elem(root, "var", as_frame(adata.var), dataset_kwargs=opts.dataset_kwargs)
    _put_mapping(sinks, root, "layers", named_layers(adata), opts)
    for key in ("obsm", "varm", "obsp", "varp"):
        _put_mapping(sinks, root, key, getattr(adata, key), opts)
    ad.io.write_elem(root, "uns", dict(adata.uns), dataset_kwargs=opts.dataset_kwargs)
    if adata.raw is not None:
        raw = root.create_group("raw")
        raw.attrs.update({"encoding-type": "raw", "encoding-version": "0.1.0"})
        _put(sinks, raw, "X", adata.raw.X, opts)
        ad.io.write_elem(raw, "var", as_frame(adata.raw.var), dataset_kwargs=opts.dataset_kwargs)
        _put_mapping(sinks, raw, "varm", adata.raw.varm, opts)
    _stream(sinks, opts)


def _put_mapping(sinks: list, root, key: str, mapping, opts: WriteOptions) -> None:
    ad.io.write_elem(root, key, {}, dataset_kwargs=opts.dataset_kwargs)
    for name, value in mapping.items():
        _put(sinks, root[key], name, value, opts)


def _put(sinks: list, group, key: str, value, opts: WriteOptions) -> None:
    """Queue a 2-D Dask matrix for :func:`_stream`; write anything else now."""
    if not isinstance(value, da.Array) or value.ndim == 2:
        value = accept_matrix(value)  # pydata sparse (or its chunks) as scdask blocks
    if isinstance(value, da.Array) and value.ndim == 2:
        layout = _layout(value)
        sink = _DenseSink if layout == "dense" else _SparseSink
        sinks.append(sink(group, key, value, layout, opts))
    else:
        write_element(group, key, value, opts)


def write_element(group, key: str, value, opts: WriteOptions) -> None:
    """Write one element that is not streamed (in memory, or a small non-matrix Dask array)
    through anndata.

    Examples
    --------
    >>> import h5py, numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.h5")
    >>> with h5py.File(path, "w") as f:
    ...     write_element(f, "m", np.eye(2), WriteOptions())
    ...     f["m"].attrs["encoding-type"]
    'array'
    """
    if isinstance(value, da.Array):
        # Vectors and other non-matrix arrays are small: anndata writes them.
        (value,) = dask.compute(value)
    ad.io.write_elem(group, key, _host(value), dataset_kwargs=opts.dataset_kwargs)


@contextlib.contextmanager
def _create_store(path: Path, fmt: Format) -> Iterator:
    if fmt == "h5ad":
        with h5py.File(path, "w") as f:
            yield f
    else:
        import zarr

        yield zarr.open_group(str(path), mode="w", zarr_format=ad.settings.zarr_write_format)


def sources_of(adata: ad.AnnData) -> set[str]:
    """Paths of the files ``adata`` was made from: those its lazy matrices read (found in
    their graphs) and those an in-memory result records in ``uns["activity"]["sources"]``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> [p.endswith(".h5ad") for p in sources_of(adata)]
    [True]
    """
    arrays = [adata.X, *named_layers(adata).values(), *adata.obsm.values()]
    arrays += list(adata.varm.values())
    if adata.raw is not None:
        arrays.append(adata.raw.X)
    recorded = adata.uns.get("activity", {})
    paths = {str(p) for p in recorded.get("sources", ())} if isinstance(recorded, dict) else set()
    for arr in arrays:
        if not isinstance(arr, da.Array):
            continue
        for layer in arr.__dask_graph__().layers.values():
            # Readers are materialized layers; other layers are not expanded.
            for task in getattr(layer, "mapping", {}).values():
                paths.update(_paths_in(task))
            # anndata's read_lazy reads in a blockwise layer: partial(make_dask_chunk, path, ...)
            for func, _ in getattr(layer, "indices", ()):
                if isinstance(func, functools.partial):
                    paths.update(str(a) for a in func.args if isinstance(a, os.PathLike))
    return paths


def _paths_in(task) -> Iterator[str]:
    args = task if isinstance(task, tuple) else getattr(task, "args", ())
    for arg in args:
        if isinstance(arg, MatrixSource):
            yield arg.path


# -- one matrix ------------------------------------------------------------------------------


def _host(block):
    """A block as numpy / plain scipy on the host (GPU blocks copied, our subclasses unwrapped)."""
    if isinstance(block, (CSRBlock, CSCBlock)):
        return block.to_scipy()
    if not isinstance(block, np.ndarray) and hasattr(block, "get"):
        block = block.get()
    if isinstance(block, np.matrix):
        return np.asarray(block)
    return block


def _layout(x: da.Array) -> str:
    """``"csc"`` for one row of CSC column blocks, ``"csr"`` for other sparse, else ``"dense"``."""
    meta = _host(x._meta)
    if not sp.issparse(meta):
        return "dense"
    return "csc" if meta.format == "csc" and x.numblocks[0] == 1 else "csr"


def _stream(sinks: list[_Sink], opts: WriteOptions) -> None:
    """Compute and write the sinks' blocks; sinks with the same blocks go together.

    Sinks are grouped by streaming axis and block sizes; for each group, unit ``i`` is the
    list of every sink's block ``i``, from unoptimised graphs so that keys the sinks share
    stay shared and run once per unit.
    """
    groups: dict[tuple, list[_Sink]] = {}
    for sink in sinks:
        groups.setdefault((sink.axis, sink.x.chunks[sink.axis]), []).append(sink)
    _progress.expect(sum(len(chunks) for _, chunks in groups))
    for members in groups.values():
        per_sink = [m.x.to_delayed(optimize_graph=False).ravel() for m in members]
        units = [dask.delayed(list(blocks)) for blocks in zip(*per_sink, strict=True)]
        for blocks in _computed(units, opts.window):
            for sink, block in zip(members, blocks, strict=True):
                sink.append(block)
            del blocks  # not alive while the next unit is awaited
            _progress.advance()
        for sink in members:
            sink.close()


class _Sink:
    """Where one streamed matrix goes: ``append`` its blocks in order, then ``close``."""

    axis = 0
    x: da.Array

    def append(self, block) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DenseSink(_Sink):
    def __init__(self, group, key: str, x: da.Array, layout: str, opts: WriteOptions) -> None:
        self.x = x = x.rechunk({1: -1})
        n_rows, n_cols = x.shape
        row_bytes = max(n_cols * x.dtype.itemsize, 1)
        chunk = (max(1, min(n_rows, _DENSE_CHUNK_BYTES // row_bytes)), max(n_cols, 1))
        if isinstance(group, h5py.Group):
            self.dset = group.create_dataset(
                key,
                shape=x.shape,
                dtype=x.dtype,
                chunks=chunk if opts.dataset_kwargs and n_rows and n_cols else None,
                **opts.dataset_kwargs,
            )
        else:
            self.dset = group.create_array(key, shape=x.shape, dtype=x.dtype, chunks=chunk)
        self.dset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        self.start = 0

    def append(self, block) -> None:
        block = _host(block)
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        stop = self.start + block.shape[0]
        if stop > self.start:
            self.dset[self.start : stop] = block.astype(self.x.dtype, copy=False)
        self.start = stop


class _SparseSink(_Sink):
    def __init__(self, group, key: str, x: da.Array, layout: str, opts: WriteOptions) -> None:
        self.layout, self.opts = layout, opts
        self.axis = axis = 1 if layout == "csc" else 0
        self.x = x = x.rechunk({1 - axis: -1})
        n_minor = x.shape[1 - axis]
        self.index_dtype = np.int32 if n_minor < np.iinfo(np.int32).max else np.int64
        self.group = group.create_group(key)
        self.group.attrs.update(
            {
                "encoding-type": f"{layout}_matrix",
                "encoding-version": "0.1.0",
                "shape": [int(s) for s in x.shape],
            }
        )
        self.data = self.indices = None
        # indptr is kept (8 bytes per row, like obs) and written last, in the indices' dtype
        # when the non-zeros allow: scipy copies int32 indices to int64 for an int64 indptr.
        self.pointers = [np.zeros(1, dtype=np.int64)]
        self.offset = 0

    def _create(self, nnz: int) -> None:
        # Storage chunks from the first block's size: small matrices stay small on disk.
        guess = nnz * self.x.numblocks[self.axis]
        self.data = _resizable(self.group, "data", self.x.dtype, guess, self.opts)
        self.indices = _resizable(self.group, "indices", self.index_dtype, guess, self.opts)

    def append(self, block) -> None:
        block = _compressed(block, self.layout)
        if self.data is None:
            self._create(block.nnz)
        _append(self.data, block.data.astype(self.x.dtype, copy=False))
        _append(self.indices, block.indices.astype(self.index_dtype, copy=False))
        self.pointers.append(block.indptr[1:].astype(np.int64) + self.offset)
        self.offset += int(block.indptr[-1])

    def close(self) -> None:
        if self.data is None:
            self._create(0)
        ptr_dtype = self.index_dtype if self.offset <= np.iinfo(self.index_dtype).max else np.int64
        indptr = np.concatenate(self.pointers).astype(ptr_dtype)
        _append(_resizable(self.group, "indptr", ptr_dtype, indptr.shape[0], self.opts), indptr)


def _compressed(block, layout: str):
    block = _host(block)
    block = sp.csc_array(block) if layout == "csc" else sp.csr_array(block)
    if not block.has_canonical_format:
        block.sum_duplicates()
    return block


def _resizable(group, name: str, dtype, size_guess: int, opts: WriteOptions):
    chunk = int(min(max(size_guess, _MIN_CHUNK_ELEMS), _CHUNK_ELEMS))
    if isinstance(group, h5py.Group):
        return group.create_dataset(
            name,
            shape=(0,),
            maxshape=(None,),
            chunks=(chunk,),
            dtype=dtype,
            **opts.dataset_kwargs,
        )
    return group.create_array(name, shape=(0,), dtype=dtype, chunks=(chunk,))


def _append(dset, values: np.ndarray) -> None:
    if values.shape[0] == 0:
        return
    if isinstance(dset, h5py.Dataset):
        n = dset.shape[0]
        dset.resize((n + values.shape[0],))
        dset[n:] = values
    else:
        dset.append(values)


# -- computing blocks in order ---------------------------------------------------------------


def _computed(units: list, window: int | None) -> Iterator:
    """Yield the values of the Delayed ``units`` in order, with about ``window`` in flight.

    With a distributed Client the units are futures in a sliding window; otherwise a window
    of units is computed in one ``dask.compute`` on a background thread while the previous
    window is consumed. ``window`` defaults to the number of worker threads (plus one with a
    Client). Shared operands (:func:`scdask._compute.shared`) run once for all windows: held
    on the cluster as futures, or computed first and put in the graph as data.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.arange(6, chunks=2)
    >>> [b.tolist() for b in _computed(list(x.to_delayed()), window=2)]
    [[0, 1], [2, 3], [4, 5]]
    """
    if not units:
        return
    graph = dict(HighLevelGraph.merge(*(u.__dask_graph__() for u in units)))
    pinned = [Delayed(key, graph) for key in shared_keys(graph)]
    client = active_client()
    if client is not None:
        n = window or sum(client.nthreads().values()) + 1
        # held while the windows run; the units refer to them instead of carrying their
        # tasks (a shared operand's inputs can be large: the signature matrix)
        held = client.compute(pinned)
        graph.update({operand.key: future for operand, future in zip(pinned, held, strict=True)})
        units = ship_once(client, [Delayed(u.key, graph) for u in units])
        try:
            yield from _client_window(client, units, max(1, n))
        finally:
            client.cancel(held)
        return
    n = window or (dask.config.get("num_workers", None) or os.cpu_count() or 1)
    if pinned:  # computed once; every window takes them as data
        for operand, value in zip(pinned, dask.compute(*pinned), strict=True):
            graph.update(dask.delayed(value, name=operand.key, traverse=False).dask)
        units = [Delayed(u.key, graph) for u in units]
    yield from _thread_window(units, max(1, int(n)))


def _client_window(client, blocks: list, window: int) -> Iterator:
    pending: deque = deque()
    todo = iter(blocks)
    try:
        for block in todo:
            pending.append(client.compute(block))
            if len(pending) >= window:
                break
        while pending:
            head = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(client.compute(nxt))
            result = head.result()
            del head  # the worker may drop the block now
            yield result
            del result  # not alive while the next block is awaited
    finally:
        if pending:
            client.cancel(list(pending))


def _thread_window(blocks: list, window: int) -> Iterator:
    groups = [blocks[i : i + window] for i in range(0, len(blocks), window)]
    if not groups:
        return
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scdask-write")
    try:
        pending = executor.submit(dask.compute, *groups[0])
        for nxt in [*groups[1:], None]:
            done = list(pending.result())
            pending = executor.submit(dask.compute, *nxt) if nxt is not None else None
            while done:  # hand blocks over one by one, keeping none once consumed
                yield done.pop(0)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
