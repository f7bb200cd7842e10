"""PCA of a matrix of row blocks with implicit centring: X is never densified nor held whole.

Two solvers, both float64 inside:

* ``"covariance"`` (exact): one pass accumulates the genes x genes Gram matrix ``XᵀX`` and the
  column sums block by block; the covariance ``(XᵀX - n μμᵀ)/(n-1)`` is decomposed with
  ``eigh`` on the client. Memory ``O(n_genes²)``: for HVG-sized inputs.
* ``"randomized"`` (wide inputs): randomized subspace iteration on the covariance. Each pass
  applies ``AᵀA Z = Σ_blocks X_bᵀ(X_b Z) - n μ(μᵀZ)`` with ``A = X - 1μᵀ`` to an orthonormal
  ``n_genes x (n_comps + n_oversamples)`` basis ``Z`` (Halko, Martinsson & Tropp 2011, power
  scheme, with the centring kept implicit), followed by a Rayleigh-Ritz step. Memory
  ``O(n_genes x n_comps)``.

A last pass projects the blocks onto the components, ``X_pca = X V - 1(μᵀV)``.
Signs follow scikit-learn (and so scanpy): the largest-magnitude loading of each component is
positive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numba
import numpy as np

from scdask._compute import compute
from scdask._errors import InputError
from scdask._ops import is_sparse_block
from scdask.preprocessing._blocks import csr, get_matrix, lazy_matrix, map_rows, sum_blocks

if TYPE_CHECKING:
    import anndata as ad
    import dask.array as da

__all__ = ["pca"]

Solver = Literal["auto", "covariance", "randomized"]

#: Widest input (genes) that ``svd_solver="auto"`` decomposes exactly (Gram: 4096² float64 = 128 MiB).
MAX_COVARIANCE_GENES = 4096

#: Share of non-zeros above which a block's Gram matrix is computed dense (BLAS). The sparse
#: kernel costs ~1.8 ns per pair of non-zeros in a row, the float64 BLAS product ~0.022 ns per
#: row x column², so dense wins above ~15 % (4,264 x 2,000 block at 9.5 %, measured: 0.17 s
#: sparse kernel, 0.37 s BLAS, 0.75 s scipy's sparse x sparse product).
DENSE_GRAM_DENSITY = 0.15

#: Columns with at least this share of non-zeros in a sparse block go through BLAS: their
#: products with each other as one dense product, with the other columns as one sparse x dense
#: product; only the pairs among the other columns run in the sparse kernel. Measured on a
#: scaled 4,264 x 2,000 HVG block of the synthetic 100k data (9.5 % non-zero; 215 columns
#: above 20 % hold 44 % of the non-zeros), one BLAS thread as in a worker: 0.18-0.20 s without
#: the split, 0.10-0.13 s with it at shares 0.13-0.3, 0.15 s at 0.1 and at 0.5 (two runs).
DENSE_COLUMN_SHARE = 0.2

#: Columns per output tile of the sparse Gram kernel: a 256 x 256 float64 tile (512 KiB) stays
#: in L2 while every row adds its pairs to it (2x faster than untiled at 2,000 columns).
GRAM_TILE = 256


def _columns(block, cols):
    return (block if cols is None else block[:, cols]).astype(np.float64, copy=False)


def _optional(cols: np.ndarray | None) -> list:
    return [] if cols is None else [cols]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _sparse_gram_upper(indptr, indices, data, tile, packed, sums):  # pragma: no cover (numba)
    """Add the upper triangle of ``bᵀb`` to ``packed`` and the column sums to ``sums``.

    ``b`` is CSR with sorted column indices; ``packed`` holds the upper triangle row by row
    (:func:`unpack_gram`). Each row's non-zeros are cut at tile boundaries once; then for
    each pair of column tiles every row adds the outer product of its two segments, so the
    writes of a tile pair stay in cache.
    """
    n = indptr.shape[0] - 1
    p = sums.shape[0]
    n_tiles = (p + tile - 1) // tile
    cuts = np.empty((n, n_tiles + 1), dtype=np.int64)
    for r in range(n):
        a, hi = indptr[r], indptr[r + 1]
        for t in range(n_tiles):
            cuts[r, t] = a
            while a < hi and indices[a] < (t + 1) * tile:
                sums[indices[a]] += data[a]
                a += 1
        cuts[r, n_tiles] = hi
    for ti in range(n_tiles):
        for tj in range(ti, n_tiles):
            for r in range(n):
                b_hi = cuts[r, tj + 1]
                for a in range(cuts[r, ti], cuts[r, ti + 1]):
                    i = np.int64(indices[a])
                    base = i * p - i * (i + 1) // 2  # packed[base + j] is entry (i, j)
                    va = data[a]
                    for b in range(a if ti == tj else cuts[r, tj], b_hi):
                        packed[base + indices[b]] += va * data[b]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _add_split_gram(dense, sparse, g_dd, g_sd, pairs, packed):  # pragma: no cover (numba)
    """Add the parts of a Gram matrix split by columns (``dense``/``sparse``, sorted column
    indices) into ``packed`` (upper triangle row by row, :func:`unpack_gram`)."""
    p = dense.shape[0] + sparse.shape[0]
    for a in range(dense.shape[0]):
        i = dense[a]
        for b in range(a, dense.shape[0]):
            packed[i * p - i * (i + 1) // 2 + dense[b]] += g_dd[a, b]
    for s in range(sparse.shape[0]):
        j = sparse[s]
        for a in range(dense.shape[0]):
            i = dense[a]
            lo, hi = min(i, j), max(i, j)
            packed[lo * p - lo * (lo + 1) // 2 + hi] += g_sd[s, a]
    k = 0
    for s in range(sparse.shape[0]):
        i = sparse[s]
        base = i * p - i * (i + 1) // 2
        for t in range(s, sparse.shape[0]):
            packed[base + sparse[t]] += pairs[k]
            k += 1


def _split_gram(m, out) -> None:
    """:func:`gram_block` of sparse CSR ``m`` into ``out``: the columns above
    :data:`DENSE_COLUMN_SHARE` through BLAS, the pairs among the others in the sparse kernel."""
    p = m.shape[1]
    share = np.bincount(m.indices, minlength=p) / max(m.shape[0], 1)
    dense = np.flatnonzero(share >= DENSE_COLUMN_SHARE)
    sparse = np.flatnonzero(share < DENSE_COLUMN_SHARE)
    by_column = m.tocsc()
    d = by_column[:, dense].toarray()
    s = csr(by_column[:, sparse])
    s.sort_indices()
    pairs = np.zeros(sparse.size * (sparse.size + 1) // 2)
    sums = np.zeros(sparse.size)
    _sparse_gram_upper(s.indptr, s.indices, s.data, GRAM_TILE, pairs, sums)
    _add_split_gram(dense, sparse, d.T @ d, np.asarray(s.T @ d), pairs, out[:-p])
    out[-p:][dense] = d.sum(axis=0)
    out[-p:][sparse] = sums


def gram_size(p: int) -> int:
    """Length of :func:`gram_block`'s result for ``p`` columns."""
    return p * (p + 1) // 2 + p


def gram_block(block, cols=None):
    """``bᵀb`` and the column sums of one block (restricted to ``cols``), float64, packed.

    Returns a vector of :func:`gram_size` ``(p)``: the upper triangle of ``bᵀb`` row by row,
    then the column sums (:func:`unpack_gram` restores both). Half of the symmetric product
    is all a block needs to send, and the partial sums a worker holds while they wait to be
    added are half as large (16 MB instead of 32 MB at 2,000 genes). Sparse blocks run a
    tiled numba kernel over the pairs of non-zeros of each row, except for their densest
    columns (:data:`DENSE_COLUMN_SHARE`), which go through BLAS; blocks denser than
    :data:`DENSE_GRAM_DENSITY` are densified for BLAS whole.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> unpack_gram(gram_block(sp.csr_array(np.array([[1.0, 2.0], [0.0, 3.0]]))), 2)
    (array([[ 1.,  2.],
           [ 2., 13.]]), array([1., 5.]))
    """
    b = _columns(block, cols)
    p = b.shape[1]
    out = np.zeros(gram_size(p))
    if is_sparse_block(b) and b.nnz <= DENSE_GRAM_DENSITY * b.shape[0] * p:
        _split_gram(csr(b), out)
        return out
    # dense: BLAS on slices of rows, so the densified copy stays small (~16 MiB), and
    # syrk adds into the upper triangle of one p x p buffer (no p x p temporary per slice)
    from scipy.linalg import blas

    gram = np.zeros((p, p))
    step = max(1, (2 << 20) // max(p, 1))
    for lo in range(0, b.shape[0], step):
        rows = b[lo : lo + step]
        rows = rows.toarray() if is_sparse_block(rows) else np.asarray(rows, dtype=np.float64)
        # gram.T is gram in Fortran order: its lower triangle is gram's upper one
        blas.dsyrk(1.0, rows.T, beta=1.0, c=gram.T, trans=0, lower=1, overwrite_c=1)
        out[-p:] += np.sum(rows, axis=0)
    start = 0
    for i in range(p):  # pack row by row (np.triu_indices would take 2 x 16 B per entry)
        out[start : start + p - i] = gram[i, i:]
        start += p - i
    return out


def unpack_gram(packed: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric ``p x p`` Gram matrix and the column sums from :func:`gram_block`'s
    layout (or a sum of such results).

    Examples
    --------
    >>> unpack_gram(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
    (array([[1., 2.],
           [2., 3.]]), array([4., 5.]))
    """
    gram = np.zeros((p, p))
    gram[np.triu_indices(p)] = packed[:-p]
    gram += np.triu(gram, 1).T
    return gram, packed[-p:].copy()


def project_block(block, components, shift, cols=None, *, out_dtype):
    """Coordinates of one block: ``b V - shift`` (``shift = μᵀV`` centres implicitly)."""
    return (np.asarray(_columns(block, cols) @ components) - shift).astype(out_dtype)


def flip_signs(components: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive (scikit-learn's ``svd_flip``).

    Examples
    --------
    >>> flip_signs(np.array([[0.2, -0.9], [-0.8, 0.1]]))
    array([[-0.2,  0.9],
           [ 0.8, -0.1]])
    """
    rows = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[rows, np.arange(components.shape[1])])
    signs[signs == 0] = 1.0
    return components * signs


def top_eigh(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of a symmetric matrix, eigenvalues descending."""
    import scipy.linalg

    n = matrix.shape[0]
    values, vectors = scipy.linalg.eigh(matrix, subset_by_index=(n - k, n - 1))
    return values[::-1], vectors[:, ::-1]


def covariance_fit(
    x: da.Array, cols: np.ndarray | None, n_comps: int, *, zero_center: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Exact fit in one pass: (components p x k, eigenvalues, column means, total variance)."""
    n, p = x.shape[0], x.shape[1] if cols is None else len(cols)
    (packed,) = compute(sum_blocks(x, gram_block, (gram_size(p),), shared=_optional(cols)))
    gram, sums = unpack_gram(packed, p)
    mean = sums / n
    centred = gram - n * np.outer(mean, mean)
    total = np.trace(centred) / max(n - 1, 1)
    values, vectors = top_eigh((centred if zero_center else gram) / max(n - 1, 1), n_comps)
    return flip_signs(vectors), values, mean if zero_center else np.zeros(p), float(total)


def _orthonormal(z: np.ndarray) -> np.ndarray:
    return np.linalg.qr(z)[0]


def randomized_fit(
    x: da.Array,
    cols: np.ndarray | None,
    n_comps: int,
    *,
    zero_center: bool,
    n_iter: int,
    n_oversamples: int,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Randomized subspace iteration on the covariance, one pass per iteration.

    The first pass also yields the column sums and sums of squares (for the centring and the
    total variance) from the same task per block; its centring correction ``n μ(μᵀZ)`` is
    applied once the means are known.
    """
    n, p = x.shape[0], x.shape[1] if cols is None else len(cols)
    width = min(p, n_comps + n_oversamples)
    rng = np.random.default_rng(random_state)
    z = _orthonormal(rng.standard_normal((p, width)))
    (first,) = compute(
        sum_blocks(x, _apply_normal, (p, width + 2), shared=[z, *_optional(cols)], moments=True)
    )
    applied, sums, sumsq = first[:, :width], first[:, width], first[:, width + 1]
    mean = sums / n
    total = (sumsq - n * mean**2).sum() / max(n - 1, 1)
    if not zero_center:
        mean = np.zeros(p)
    applied -= n * np.outer(mean, mean @ z)
    for _ in range(n_iter - 1):
        z = _orthonormal(applied)
        (applied,) = compute(sum_blocks(x, _apply_normal, (p, width), shared=[z, *_optional(cols)]))
        applied -= n * np.outer(mean, mean @ z)
    ritz = z.T @ applied
    ritz_values, ritz_vectors = np.linalg.eigh((ritz + ritz.T) / 2)
    order = np.argsort(ritz_values)[::-1][:n_comps]
    vectors = z @ ritz_vectors[:, order]
    values = ritz_values[order] / max(n - 1, 1)
    return flip_signs(vectors), values, mean, float(total)


def _apply_normal(block, z, cols=None, *, moments: bool = False):
    """``bᵀ(b z)``; with ``moments`` also the column sums and sums of squares (two more
    columns), so the first pass needs one task per block."""
    b = _columns(block, cols)
    applied = np.asarray(b.T @ np.asarray(b @ z))
    if not moments:
        return applied
    sums = np.sum(b, axis=0, keepdims=True)[0]  # keepdims: 1-D whatever the block type
    return np.column_stack([applied, sums, np.sum(b * b, axis=0, keepdims=True)[0]])


def _resolve_mask(adata: ad.AnnData, mask_var, use_highly_variable: bool | None):
    auto = isinstance(mask_var, str) and mask_var == "auto"
    if use_highly_variable is not None:
        if not auto:
            raise InputError("Pass either mask_var or use_highly_variable, not both.")
        mask_var, auto = ("highly_variable" if use_highly_variable else None), False
    if auto:
        mask_var = "highly_variable" if "highly_variable" in adata.var.columns else None
    if mask_var is None:
        return None, None
    mask = np.asarray(adata.var[mask_var] if isinstance(mask_var, str) else mask_var, dtype=bool)
    if mask.shape != (adata.n_vars,):
        raise InputError(
            f"mask_var must have one entry per gene ({adata.n_vars}), got {mask.shape}."
        )
    return mask_var, mask


def pca(
    adata: ad.AnnData,
    n_comps: int = 50,
    *,
    zero_center: bool = True,
    svd_solver: Solver = "auto",
    random_state: int = 0,
    mask_var: np.ndarray | str | None = "auto",
    use_highly_variable: bool | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    n_iter: int = 8,
    n_oversamples: int = 20,
    dtype: str | np.dtype = "float32",
    key_added: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Principal component analysis of a lazy matrix, with results where scanpy puts them.

    Centring is implicit (``X V - 1 μᵀV``), so sparse blocks stay sparse. The exact
    ``"covariance"`` solver forms the genes x genes covariance from one pass of Gram matrices;
    the ``"randomized"`` solver (for wide inputs) runs a randomized subspace iteration on the
    covariance, one pass per iteration. ``"auto"`` picks ``"covariance"`` up to
    :data:`MAX_COVARIANCE_GENES` genes. Components are sign-fixed like scikit-learn's
    ``svd_flip`` (largest loading positive), so they compare with scanpy's.

    Passes over X: 2 with ``"covariance"`` (Gram + column sums, then the projection);
    ``n_iter + 1`` with ``"randomized"``. Each pass is one ``dask.compute`` (the next pass
    needs the previous result).

    Parameters
    ----------
    adata
        AnnData whose ``X`` (or ``layer``) is a Dask array of row blocks or in memory.
    n_comps
        Number of components.
    zero_center
        Centre the genes (implicitly). ``False`` gives scikit-learn's ``TruncatedSVD``
        convention: variances of the coordinates and ratios to the uncentred total.
    svd_solver
        ``"auto"``, ``"covariance"`` (exact) or ``"randomized"``.
    random_state
        Seed of the randomized solver's start basis.
    mask_var
        Boolean mask or ``var`` column of the genes to use; ``"auto"`` uses
        ``var['highly_variable']`` when present (scanpy's default), ``None`` all genes.
    use_highly_variable
        Deprecated scanpy spelling of ``mask_var="highly_variable"``.
    layer
        Use ``adata.layers[layer]`` instead of ``X``.
    use_raw
        Use ``adata.raw.X`` instead of ``X``; ``raw`` must have ``var``'s genes (the
        loadings go into ``varm``).
    n_iter
        Passes of the randomized solver's subspace iteration.
    n_oversamples
        Extra basis vectors of the randomized solver.
    dtype
        dtype of ``obsm['X_pca']`` (scanpy's default float32).
    key_added
        Store under this key in ``obsm``/``varm``/``uns`` instead of ``X_pca``/``PCs``/``pca``.
    copy
        Return a copy instead of changing ``adata``.

    Returns
    -------
    The copy if ``copy``, else ``None``. Sets ``obsm['X_pca']`` (cells x n_comps, in memory),
    ``varm['PCs']`` (genes x n_comps, zero outside the mask), and ``uns['pca']`` with
    ``variance``, ``variance_ratio`` and ``params``.

    Examples
    --------
    >>> import scdask
    >>> adata = scdask.read_h5ad(scdask.datasets.sample_path())
    >>> scdask.pp.normalize_total(adata, target_sum=1e4)
    >>> scdask.pp.log1p(adata)
    >>> scdask.pp.pca(adata, n_comps=20, mask_var=adata.var_names.str.startswith("RP"))
    >>> adata.obsm["X_pca"].shape
    (559, 20)
    """
    adata = adata.copy() if copy else adata
    x = lazy_matrix(get_matrix(adata, layer=layer, use_raw=use_raw, step="pca"))
    mask_param, mask = _resolve_mask(adata, mask_var, use_highly_variable)
    cols = None if mask is None else np.flatnonzero(mask)
    n_genes = x.shape[1] if cols is None else len(cols)
    if not 0 < n_comps <= min(x.shape[0], n_genes):
        raise InputError(
            f"n_comps must be between 1 and min(n_obs, n_genes) = {min(x.shape[0], n_genes)}, "
            f"got {n_comps}."
        )
    if n_iter < 1:
        raise InputError(f"n_iter must be at least 1, got {n_iter}.")
    if svd_solver == "auto":
        svd_solver = "covariance" if n_genes <= MAX_COVARIANCE_GENES else "randomized"
    if svd_solver == "covariance":
        components, variance, mean, total = covariance_fit(
            x, cols, n_comps, zero_center=zero_center
        )
    elif svd_solver == "randomized":
        components, variance, mean, total = randomized_fit(
            x,
            cols,
            n_comps,
            zero_center=zero_center,
            n_iter=n_iter,
            n_oversamples=n_oversamples,
            random_state=random_state,
        )
    else:
        raise InputError(
            f"svd_solver must be 'auto', 'covariance' or 'randomized', got {svd_solver!r}."
        )
    shift = mean @ components if zero_center else np.zeros(n_comps)
    coords = map_rows(
        x,
        project_block,
        n_comps,
        shared=[components, shift, *_optional(cols)],
        dtype=np.dtype(dtype),
        out_dtype=np.dtype(dtype),
    )
    (x_pca,) = compute(coords)
    if not zero_center:
        variance = x_pca.astype(np.float64).var(axis=0)
        total = total * (x.shape[0] - 1) / x.shape[0]
    store(
        adata,
        x_pca,
        components,
        mask,
        variance=variance,
        variance_ratio=variance / total,
        params={
            "zero_center": zero_center,
            "use_highly_variable": mask_param == "highly_variable",
            "mask_var": mask_param,
            "svd_solver": svd_solver,
            **({"layer": layer} if layer is not None else {}),
            **({"use_raw": True} if use_raw else {}),
        },
        key_added=key_added,
    )
    return adata if copy else None


def store(
    adata: ad.AnnData,
    x_pca: np.ndarray,
    components: np.ndarray,
    mask: np.ndarray | None,
    *,
    variance: np.ndarray,
    variance_ratio: np.ndarray,
    params: dict,
    key_added: str | None,
) -> None:
    """Write PCA results where scanpy does (``obsm``, ``varm`` zero outside the mask, ``uns``)."""
    key_obsm, key_varm, key_uns = ("X_pca", "PCs", "pca") if key_added is None else (key_added,) * 3
    adata.obsm[key_obsm] = x_pca
    if mask is None:
        adata.varm[key_varm] = components
    else:
        loadings = np.zeros((adata.n_vars, components.shape[1]))
        loadings[mask] = components
        adata.varm[key_varm] = loadings
    adata.uns[key_uns] = {
        "params": params,
        "variance": np.asarray(variance),
        "variance_ratio": np.asarray(variance_ratio),
    }
