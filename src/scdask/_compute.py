"""``dask.compute`` that joins array blocks on the caller's side, not on a worker.

On a distributed cluster, ``dask.compute(array)`` concatenates the blocks in a task on one
worker and then sends the result: a 1,000,000 x 50 float64 PCA (400 MB) took that worker
from 138 MB to 902 MB peak RSS (measured, LocalCluster of 2 processes). Per-cell results
must not set a worker's memory, so every per-cell result here comes back block by block and
is joined in the calling process, where it lands anyway. With a Client each block is fetched
as soon as it is ready and then released: ``dask.compute`` of the blocks would keep them all
on the workers until the last one is done (at 1,000,000 cells the recipe's float32
projection is 200 MB, ~100 MB per worker).
"""

from __future__ import annotations

import weakref

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.sizeof import sizeof

from scdask import _progress
from scdask._compat import graph_literal

__all__ = [
    "SHARED_PREFIX",
    "active_client",
    "compute",
    "shared",
    "shared_keys",
    "ship_once",
]

#: Key prefix of an operand every block task takes (see :func:`shared`).
SHARED_PREFIX = "scdask-shared-"


def shared(func, *args, **kwargs):
    """``func(*args, **kwargs)`` as one key of the graph that every block task can take.

    The one way scdask shares an operand (the activity model, the permutation table): a
    plain ``dask.delayed`` call, so the graph is an ordinary graph that any scheduler computes
    at any time, and building it runs nothing. One ``compute`` runs it once. Computations
    that run a graph in several computes (the streaming writers' windows) find it by its key
    prefix (:func:`shared_keys`) and run it once for all of them.

    Examples
    --------
    >>> from scdask._compute import shared
    >>> total = shared(sum, [1, 2])
    >>> total.key.startswith("scdask-shared-sum-"), total.compute()
    (True, 3)
    """
    name = getattr(func, "__name__", "operand").strip("_")
    key = f"{SHARED_PREFIX}{name}-{tokenize(func, args, kwargs)}"
    return dask.delayed(func, pure=True)(*args, dask_key_name=key, **kwargs)


def shared_keys(graph) -> list:
    """Keys of :func:`shared` operands in a graph (a mapping of keys to tasks).

    Examples
    --------
    >>> from scdask._compute import shared, shared_keys
    >>> len(shared_keys((shared(sum, [1, 2]) + 1).__dask_graph__()))
    1
    """
    return [k for k in graph if isinstance(k, str) and k.startswith(SHARED_PREFIX)]


def active_client():
    """The distributed Client that ``dask.compute`` would use now, or ``None``.

    Examples
    --------
    >>> from scdask._compute import active_client
    >>> active_client() is None  # no Client started here
    True
    """
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = dask.base.get_scheduler()
    return client if getattr(scheduler, "__self__", None) is client else None


def compute(*collections):
    """Like :func:`dask.compute`, with dask arrays gathered as blocks and joined locally.

    Parameters
    ----------
    *collections
        Dask collections or plain objects, as for :func:`dask.compute`.

    Returns
    -------
    tuple
        The computed values, in order; arrays are numpy (or the block type joined with
        dask's ``concatenate`` dispatch, e.g. sparse).

    Examples
    --------
    >>> import dask.array as da
    >>> from scdask._compute import compute
    >>> (x,) = compute(da.arange(10, chunks=3))
    >>> x.tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    flat, plans = [], []
    for obj in collections:
        if isinstance(obj, da.Array):
            # unoptimised: optimising each array alone would fuse (and rename) the tasks
            # arrays share, so one compute of several layers would run them once per layer
            blocks = obj.to_delayed(optimize_graph=False)
            plans.append((blocks.shape, len(flat)))
            flat.extend(blocks.ravel().tolist())
        else:
            plans.append((None, len(flat)))
            flat.append(obj)
    client = active_client()
    _progress.expect(len(flat))
    if client is None:
        results = dask.compute(*flat)
        _progress.advance(len(flat))
    else:
        results = _fetch_as_completed(client, ship_once(client, flat))
    out = []
    for shape, start in plans:
        if shape is None:
            out.append(results[start])
            continue
        parts = np.empty(shape, dtype=object)
        parts.ravel()[:] = results[start : start + parts.size]
        out.append(parts[()] if parts.ndim == 0 else da.core.concatenate3(parts.tolist()))
    return tuple(out)


#: Literal data in a graph at least this large is sent to a cluster once per Client.
_SHIP_BYTES = 2**20
_shipped: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ship_once(client, objects: list) -> list:
    """``objects`` with the large data embedded in their graphs sent to ``client`` once.

    An in-memory matrix wrapped as a dask array is literal data in every graph made from it,
    so each compute would send it again (the recipe makes four). Here each literal of at
    least 1 MiB is scattered once per Client and key (the key names the data's content) and
    the compute refers to it; the user's graph is not changed, so it still computes on any
    scheduler. What was sent stays on the cluster while consecutive computes use it (the
    passes of one step), and is released by the first compute that does not. Delayed objects
    are rewritten; anything else is passed through.

    Examples
    --------
    >>> ship_once(None, [1, "a"])  # nothing to ship: the objects as they are
    [1, 'a']
    """
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    delayed = [o for o in objects if isinstance(o, Delayed)]
    if not delayed:
        return objects
    graph = dict(HighLevelGraph.merge(*(o.__dask_graph__() for o in delayed)))
    big = {}
    for key, node in graph.items():
        value = graph_literal(node)
        if value is not None and sizeof(value) >= _SHIP_BYTES:
            big[key] = value
    if not big:
        return objects
    sent = _shipped.setdefault(client, {})
    for key in [k for k in sent if k not in big]:  # held for consecutive computes only
        del sent[key]
    for key, value in big.items():
        if key not in sent:
            sent[key] = client.scatter(value, hash=False)
        graph[key] = sent[key]
    return [Delayed(o.key, graph) if isinstance(o, Delayed) else o for o in objects]


def _fetch_as_completed(client, objects: list) -> list:
    """``objects`` computed on ``client``, each result fetched as soon as it is ready and its
    future dropped then, so that the worker frees it."""
    from distributed import Future, as_completed

    results = client.compute(objects)
    where = {id(f): i for i, f in enumerate(results) if isinstance(f, Future)}
    pending = [results[i] for i in where.values()]
    for i in where.values():
        results[i] = None
    _progress.advance(len(results) - len(pending))  # plain objects: nothing to compute
    for future, value in as_completed(pending, with_results=True):
        results[where[id(future)]] = value
        future.release()
        _progress.advance()
    return results
