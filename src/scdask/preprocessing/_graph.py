"""Neighbours, UMAP and Leiden on the small in-memory PCA embedding (X is never touched).

After :func:`scdask.pp.pca`, ``obsm['X_pca']`` is a cells x n_comps array in memory; these
steps only need it (and the graph they build), so they run scanpy's own implementations on
an AnnData that holds ``obs``/``obsm``/``obsp``/``uns`` but **no** ``X``, and copy the results
back where scanpy puts them. The lazy ``X`` is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anndata as ad
import pandas as pd

from scdask._errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["leiden", "neighbors", "umap"]


def _scanpy():
    try:
        import scanpy
    except ImportError as e:
        raise ImportError(
            "This step runs scanpy on the PCA embedding; install it with "
            "pip install 'scdask[scanpy]'."
        ) from e
    return scanpy


def _require(module: str, what: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs {module}; install it with pip install 'scdask[scanpy]'."
        ) from e


def _without_x(adata: ad.AnnData) -> ad.AnnData:
    """``obs``, ``obsm``, ``obsp`` and ``uns`` of ``adata`` (shared, not copied), no ``X``/genes."""
    return ad.AnnData(
        obs=pd.DataFrame(index=adata.obs_names),
        obsm=dict(adata.obsm),
        obsp=dict(adata.obsp),
        uns=dict(adata.uns),
    )


def _run_on_embedding(
    adata: ad.AnnData, step: Callable[[ad.AnnData], None], *, copy: bool
) -> ad.AnnData | None:
    """Run ``step`` on an X-less AnnData and copy what it adds back into ``adata``."""
    adata = adata.copy() if copy else adata
    small = _without_x(adata)
    step(small)
    for key in small.obs.columns:
        adata.obs[key] = small.obs[key].values
    for key, value in small.obsm.items():
        adata.obsm[key] = value
    for key, value in small.obsp.items():
        adata.obsp[key] = value
    adata.uns.update(small.uns)
    return adata if copy else None


def _check_rep(adata: ad.AnnData, use_rep: str) -> None:
    if use_rep not in adata.obsm:
        raise InputError(
            f"adata.obsm[{use_rep!r}] not found; run scdask.pp.pca first (the neighbour "
            "graph is built on the in-memory embedding, never on the lazy X)."
        )


def neighbors(
    adata: ad.AnnData,
    n_neighbors: int = 15,
    n_pcs: int | None = None,
    *,
    use_rep: str = "X_pca",
    knn: bool = True,
    method: str = "umap",
    metric: str = "euclidean",
    random_state: int = 0,
    key_added: str | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | None:
    """k-nearest-neighbour graph of the cells on ``obsm[use_rep]`` (``scanpy.pp.neighbors``).

    Runs scanpy's implementation (pynndescent / exact kNN, UMAP or Gaussian connectivities)
    on the in-memory embedding only.

    Passes over X: 0

    Parameters
    ----------
    adata
        AnnData with ``obsm[use_rep]`` (from :func:`scdask.pp.pca`); its ``X`` is not read.
    n_neighbors
        Size of the neighbourhood.
    n_pcs
        Use this many leading columns of ``obsm[use_rep]`` (all if ``None``).
    use_rep
        The ``obsm`` key of the embedding.
    knn, method, metric, random_state
        As in ``scanpy.pp.neighbors``.
    key_added
        Store under ``uns[key_added]`` and ``obsp[key_added + '_distances' | '_connectivities']``.
    copy
        Return a copy instead of changing ``adata``.
    **kwargs
        Passed to ``scanpy.pp.neighbors``.

    Returns
    -------
    The copy if ``copy``, else ``None``. Sets ``obsp['distances']``, ``obsp['connectivities']``
    and ``uns['neighbors']``, as scanpy does.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> scdask.pp.log1p(adata)
    >>> scdask.pp.pca(adata, n_comps=20)
    >>> scdask.pp.neighbors(adata, n_neighbors=10)
    >>> adata.obsp["connectivities"].shape
    (559, 559)
    """
    sc = _scanpy()
    _check_rep(adata, use_rep)
    return _run_on_embedding(
        adata,
        lambda small: sc.pp.neighbors(
            small,
            n_neighbors=n_neighbors,
            n_pcs=n_pcs,
            use_rep=use_rep,
            knn=knn,
            method=method,
            metric=metric,
            random_state=random_state,
            key_added=key_added,
            **kwargs,
        ),
        copy=copy,
    )


def _check_neighbors(adata: ad.AnnData, neighbors_key: str | None) -> None:
    key = "neighbors" if neighbors_key is None else neighbors_key
    if key not in adata.uns:
        raise InputError(f"adata.uns[{key!r}] not found; run scdask.pp.neighbors first.")


def umap(
    adata: ad.AnnData,
    *,
    min_dist: float = 0.5,
    spread: float = 1.0,
    n_components: int = 2,
    init_pos: str | np.ndarray = "spectral",
    random_state: int = 0,
    neighbors_key: str = "neighbors",
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | None:
    """UMAP embedding of the neighbour graph (``scanpy.tl.umap``, umap-learn inside).

    Passes over X: 0

    Parameters
    ----------
    adata
        AnnData with the graph of :func:`scdask.pp.neighbors`; its ``X`` is not read.
    min_dist, spread, n_components, init_pos, random_state
        As in ``scanpy.tl.umap``.
    neighbors_key
        ``uns`` key of the neighbour graph.
    copy
        Return a copy instead of changing ``adata``.
    **kwargs
        Passed to ``scanpy.tl.umap``.

    Returns
    -------
    The copy if ``copy``, else ``None``. Sets ``obsm['X_umap']`` and ``uns['umap']``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> scdask.pp.log1p(adata)
    >>> scdask.pp.pca(adata, n_comps=20)
    >>> scdask.pp.neighbors(adata)
    >>> scdask.pp.umap(adata)
    >>> adata.obsm["X_umap"].shape
    (559, 2)
    """
    sc = _scanpy()
    _require("umap", "UMAP")
    _check_neighbors(adata, neighbors_key)
    return _run_on_embedding(
        adata,
        lambda small: sc.tl.umap(
            small,
            min_dist=min_dist,
            spread=spread,
            n_components=n_components,
            init_pos=init_pos,
            random_state=random_state,
            neighbors_key=neighbors_key,
            **kwargs,
        ),
        copy=copy,
    )


def leiden(
    adata: ad.AnnData,
    resolution: float = 1.0,
    *,
    random_state: int = 0,
    key_added: str = "leiden",
    neighbors_key: str | None = None,
    flavor: str = "igraph",
    n_iterations: int = 2,
    directed: bool = False,
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | None:
    """Leiden clustering of the neighbour graph (``scanpy.tl.leiden``).

    Defaults to scanpy's recommended ``flavor="igraph"``, ``n_iterations=2``,
    ``directed=False`` (scanpy 1.11 still defaults to leidenalg with a FutureWarning).

    Passes over X: 0

    Parameters
    ----------
    adata
        AnnData with the graph of :func:`scdask.pp.neighbors`; its ``X`` is not read.
    resolution, random_state, flavor, n_iterations, directed
        As in ``scanpy.tl.leiden``.
    key_added
        ``obs`` column of the cluster labels.
    neighbors_key
        ``uns`` key of the neighbour graph (``"neighbors"`` if ``None``).
    copy
        Return a copy instead of changing ``adata``.
    **kwargs
        Passed to ``scanpy.tl.leiden``.

    Returns
    -------
    The copy if ``copy``, else ``None``. Sets ``obs[key_added]`` (categorical) and
    ``uns[key_added]``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> scdask.pp.log1p(adata)
    >>> scdask.pp.pca(adata, n_comps=20)
    >>> scdask.pp.neighbors(adata)
    >>> scdask.pp.leiden(adata)
    >>> adata.obs["leiden"].dtype.name
    'category'
    """
    sc = _scanpy()
    _require("igraph" if flavor == "igraph" else "leidenalg", "Leiden clustering")
    _check_neighbors(adata, neighbors_key)
    return _run_on_embedding(
        adata,
        lambda small: sc.tl.leiden(
            small,
            resolution=resolution,
            random_state=random_state,
            key_added=key_added,
            neighbors_key=neighbors_key,
            flavor=flavor,
            n_iterations=n_iterations,
            directed=directed,
            **kwargs,
        ),
        copy=copy,
    )
