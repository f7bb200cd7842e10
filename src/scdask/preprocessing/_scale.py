"""Scale genes to unit variance (and zero mean), lazily, from one pass of per-gene moments."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from scdask._compute import compute
from scdask._ops import as_block
from scdask.preprocessing._blocks import get_matrix, lazy_matrix, sum_blocks

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["scale"]


def _moments_block(block, cols=None):
    b = (block if cols is None else block[:, cols]).astype(np.float64)
    # keepdims: numpy's shape whatever the block type (np.sum of a csr_matrix is 2-D)
    return np.concatenate([np.sum(b, axis=0, keepdims=True), np.sum(b * b, axis=0, keepdims=True)])


def column_moments(x: da.Array, cols: np.ndarray | None = None) -> da.Array:
    """Lazy per-gene sums and sums of squares (float64), shape ``(2, n_genes)``.

    ``cols`` restricts the result to those gene indices.

    Examples
    --------
    >>> import dask.array as da
    >>> column_moments(da.ones((6, 2), chunks=(4, 2))).compute()
    array([[6., 6.],
           [6., 6.]])
    """
    n = x.shape[1] if cols is None else len(cols)
    return sum_blocks(x, _moments_block, (2, n), shared=[] if cols is None else [cols])


def mean_std(moments: np.ndarray, n_obs: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof=1, like scanpy) from :func:`column_moments`.

    A variance below the round-off of ``sum(x**2) - n * mean**2`` is zero; a zero standard
    deviation becomes 1, as in scanpy, so constant genes are left unscaled.

    Examples
    --------
    >>> import numpy as np
    >>> mean_std(np.array([[3.0, 2.0], [5.0, 2.0]]), 2)  # cells (1, 1) and (2, 1)
    (array([1.5, 1. ]), array([0.70710678, 1.        ]))
    """
    total, total_sq = moments
    mean = total / n_obs
    m2 = total_sq - n_obs * mean**2
    m2[m2 <= 64 * np.finfo(np.float64).eps * total_sq] = 0.0
    var = m2 / max(n_obs - 1, 1)
    std = np.sqrt(var)
    std[std == 0] = 1.0
    return mean, std


def scale_block(block, cols, mean, std, *, zero_center: bool, max_value, out_dtype):
    """Scale one row block (dense with ``zero_center``; sparse blocks stay sparse otherwise)."""
    b = (block if cols is None else block[:, cols]).astype(np.float64)
    if zero_center:
        b = np.asarray(b - mean)
    b = b * (1.0 / std)
    if max_value is not None:
        b = np.clip(b, -max_value, max_value) if zero_center else np.minimum(b, max_value)
    return b.astype(out_dtype)


def scale(
    adata: ad.AnnData,
    *,
    zero_center: bool = True,
    max_value: float | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    copy: bool = False,
) -> ad.AnnData | None:
    """Scale every gene to unit variance and, by default, zero mean (like ``scanpy.pp.scale``).

    The per-gene mean and standard deviation (``ddof=1``; a zero standard deviation is
    replaced by 1, as scanpy does) are computed in one pass; the scaled matrix itself is
    lazy. With ``zero_center=True`` the result has **dense** row blocks (centring fills in
    the zeros), so its memory is ``n_genes x rows x itemsize`` per block: scale after
    selecting highly variable genes. With ``zero_center=False`` the blocks stay sparse and
    only values above ``max_value`` are clipped, as in scanpy. Float inputs keep their dtype
    (scanpy returns float64 for sparse input); integers become float64.

    Passes over X: 1

    Parameters
    ----------
    adata
        AnnData whose ``X`` (or ``layer``) is a Dask array of row blocks (lazy result) or an
        in-memory matrix (in-memory result).
    zero_center
        Subtract the gene means (densifies the blocks).
    max_value
        Clip scaled values to ``[-max_value, max_value]`` (``<= max_value`` without centring).
    layer
        Scale ``adata.layers[layer]`` instead of ``X``.
    use_raw
        Scale ``adata.raw.X`` and put the result in ``X`` (``raw`` is left as it is);
        ``raw`` must have ``var``'s genes.
    copy
        Return a scaled copy instead of changing ``adata``.

    Returns
    -------
    The scaled copy if ``copy``, else ``None``; sets ``X`` (or the layer) to the lazy scaled
    matrix and ``var['mean']``, ``var['std']``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.scale(adata, max_value=10)
    >>> adata.var[["mean", "std"]].shape
    (32786, 2)
    """
    adata = adata.copy() if copy else adata
    x = get_matrix(adata, layer=layer, use_raw=use_raw, step="scale")
    lazy = lazy_matrix(x)
    (moments,) = compute(column_moments(lazy))
    mean, std = mean_std(moments, x.shape[0])
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    kwargs = {"zero_center": zero_center, "max_value": max_value, "out_dtype": dtype}
    if isinstance(x, da.Array):
        meta = np.empty((0, 0), dtype=dtype) if zero_center else lazy._meta.astype(dtype)
        scaled = lazy.map_blocks(scale_block, None, mean, std, dtype=dtype, meta=meta, **kwargs)
    else:
        scaled = scale_block(as_block(x), None, mean, std, **kwargs)
    if layer is None:
        adata.X = scaled
    else:
        adata.layers[layer] = scaled
    adata.var["mean"] = mean
    adata.var["std"] = std
    return adata if copy else None
