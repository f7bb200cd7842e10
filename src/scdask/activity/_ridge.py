"""Ridge regression with a permutation test (SecAct), as a block kernel and on dask arrays.

Orientation: the kernel takes samples as rows (``m`` samples x ``n`` genes, the AnnData
orientation of a block of cells) and returns ``m x p`` arrays (samples x proteins). secactpy
works with genes x samples and returns proteins x samples: every matrix here is the
transpose of the matching secactpy one, with the same numbers.

Cost is one ``m x n x p`` product per permutation, evaluated two ways:

* **Dense targets** (bulk, pseudobulk, dense blocks) run as BLAS GEMMs. Permutations are
  applied to whichever side is smaller: the rows of ``Tᵀ`` (one gather of ``n x p`` per
  permutation) when there are at least ``p`` samples, otherwise the gene columns of the
  samples, stacking many permutations into one tall GEMM so that small inputs still run at
  BLAS speed.
* **Sparse targets** (cells and spots: :class:`SparseTargets`, ``y = a·(z - r) - b`` per row
  with ``z`` sparse) never form ``y``. The product runs on ``z`` and the centring/scaling is
  a correction on the small output (SPEC §4.1): ``β⁽ᵏ⁾ = a·(z P_k Tᵀ - r P_k Tᵀ) - b·1ᵀTᵀ``.
  ``z P_k Tᵀ`` runs in a numba gather kernel (:func:`_gather_tiles`) whose flops scale
  with the non-zeros (16% of entries on real cells over the SecAct genes). The entries are
  sorted once per chunk into buckets of 128 genes (:func:`_bucket`). Per permutation and
  64-protein tile, the rows of ``Tᵀ`` that one bucket's genes meet are copied into a 64 KiB
  buffer that stays in cache while every sample adds its entries of that bucket from it,
  each sample's 64 sums held in vector registers (:func:`_gather_add`); the next bucket's
  rows are prefetched meanwhile (:func:`_prefetch_row`: without it the copy waited on
  memory for every row). Against sorting the entries by permuted row for every permutation
  (the previous kernel), 512 real cells: 45–48 → 33–36 ms per permutation in float64,
  23–29 → 20–21 ms in float32. Sending the densest genes through BLAS instead was measured with
  the earlier, slower scatter kernel and dropped: at most 5% faster, in noise.
  The observed β runs through the same kernel as the permutations, so ``|β⁽ᵏ⁾| >= |β|``
  compares numbers summed the same way.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import llvmlite.ir as ir
import numba
import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.stats
from numba.core import cgutils, types
from numba.extending import intrinsic

from scdask._compute import shared
from scdask._errors import InputError
from scdask.activity._permutation import RNG_METHODS, _inverse, permutation_table

__all__ = [
    "Model",
    "SparseTargets",
    "build_model",
    "map_ridge",
    "projection_matrix",
    "ridge",
    "ridge_block",
]

EPS = 1e-12  # secactpy's zero-se guard
_STATS = ("beta", "se", "zscore", "pvalue")
_GATHER_BUDGET = 2**23  # elements of the stacked permuted operand per GEMM (64 MiB in float64)
#: Proteins per tile of the sparse kernel: a sample's sums over one tile stay in registers.
_TILE = 64
#: Genes per bucket of the sparse kernel (2^7 = 128): the 128 x 64 rows of Tᵀ they meet
#: (64 KiB in float64) stay in cache while every sample adds its entries from them. Measured
#: on 1,024 real cells against 64 and 256: float64 64 ≈ 128 < 256, float32 128 best.
_BUCKET_SHIFT = 7
#: Fewer samples than this per chunk: the sparse kernel's per-permutation pass over all of Tᵀ
#: costs more than it saves, so the targets are densified.
_MIN_SPARSE_ROWS = 64


@dataclass(frozen=True)
class Model:
    """What every block needs from the signature: ``Tᵀ`` and, for the t-test, ``X``.

    Attributes
    ----------
    tt
        ``Tᵀ = X (XᵀX + λI)⁻¹``, ``n x p`` float64, C-contiguous.
    ainv_diag
        Diagonal of ``(XᵀX + λI)⁻¹`` (t-test only).
    x
        The signature ``X`` (``n x p``), kept only for the t-test residuals, else ``None``.
    """

    tt: np.ndarray
    ainv_diag: np.ndarray
    x: np.ndarray | None


def _ridge_inverse(x: np.ndarray, lambda_: float) -> np.ndarray:
    a = x.T @ x + lambda_ * np.eye(x.shape[1], dtype=np.float64)
    try:
        chol = scipy.linalg.cholesky(a, lower=True)
        return scipy.linalg.cho_solve((chol, True), np.eye(x.shape[1], dtype=np.float64))
    except scipy.linalg.LinAlgError:
        warnings.warn(
            "Cholesky factorisation of XᵀX + λI failed; using the pseudo-inverse",
            RuntimeWarning,
            stacklevel=2,
        )
        return scipy.linalg.pinv(a)


def projection_matrix(x: np.ndarray, lambda_: float = 5e5) -> np.ndarray:
    """The ridge projection ``T = (XᵀX + λI)⁻¹Xᵀ`` (``p x n``), as secactpy computes it.

    ``XᵀX + λI`` is inverted through its Cholesky factor (pseudo-inverse with a warning if
    that fails), in float64.

    Parameters
    ----------
    x
        Signature matrix, genes x proteins (``n x p``).
    lambda_
        Ridge penalty λ.

    Returns
    -------
    numpy.ndarray
        ``T``, C-contiguous float64 of shape ``(p, n)``; ``β = T @ y`` for a gene vector ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> from scdask.activity import projection_matrix
    >>> x = np.random.default_rng(0).standard_normal((50, 3))
    >>> projection_matrix(x, lambda_=1.0).shape
    (3, 50)
    """
    x = np.asarray(x, dtype=np.float64)
    return np.ascontiguousarray(_ridge_inverse(x, float(lambda_)) @ x.T)


def build_model(x: np.ndarray, lambda_: float = 5e5, *, t_test: bool = False) -> Model:
    """Everything the block kernel needs from the signature, built once per call.

    Parameters
    ----------
    x
        Signature matrix on the genes used, in the order of the data (``n x p``).
    lambda_
        Ridge penalty λ.
    t_test
        Keep ``X`` for the residuals of the analytical test (``n_rand=0``).

    Returns
    -------
    Model

    Examples
    --------
    >>> import numpy as np
    >>> from scdask.activity import build_model
    >>> m = build_model(np.random.default_rng(0).standard_normal((40, 2)), 10.0)
    >>> m.tt.shape
    (40, 2)
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    ainv = _ridge_inverse(x, float(lambda_))
    tt = np.ascontiguousarray((ainv @ x.T).T)
    return Model(tt=tt, ainv_diag=np.diag(ainv).copy(), x=x if t_test else None)


def _tables(n_genes: int, n_rand: int, seed: int, rng: str) -> tuple[np.ndarray, np.ndarray]:
    """Forward and inverse tables (both int32): what the kernel gathers with."""
    forward = permutation_table(n_genes, n_rand, seed, rng, inverse=False)
    return forward, _inverse(forward).astype(np.int32)


def _permutation_stats(
    y: np.ndarray, tt: np.ndarray, tables: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """beta/se/zscore/pvalue (``m x 4 x p``) of dense ``y`` (``m x n``) against ``tt``."""
    forward, inverse = tables
    n_rand = forward.shape[0]
    m, n = y.shape
    p = tt.shape[1]
    beta = y @ tt
    s1 = np.zeros((m, p), dtype=np.float64)
    s2 = np.zeros((m, p), dtype=np.float64)
    count = np.zeros((m, p), dtype=np.int64)

    # np.take(..., mode="clip") writes straight into ``out`` (mode="raise" buffers a copy);
    # the indices are permutations, so clipping never applies.
    if m >= p:
        # T-column form: β⁽ᵏ⁾ = y @ Tᵀ[inv_k]; one n x p row gather per permutation.
        t_perm = np.empty_like(tt)
        b = np.empty((m, p), dtype=tt.dtype)
        for k in range(n_rand):
            np.take(tt, inverse[k], axis=0, out=t_perm, mode="clip")
            _accumulate(np.matmul(y, t_perm, out=b), beta, s1, s2, count)
    else:
        # Y-row form: β⁽ᵏ⁾ᵀ = T @ yᵀ[perm_k] (an n x m row gather); permutations side by side
        # in one wide GEMM.
        y_t = np.ascontiguousarray(y.T)
        t = np.ascontiguousarray(tt.T)
        step = max(1, min(n_rand, _GATHER_BUDGET // max(1, m * n)))
        y_perm = np.empty((n, step, m), dtype=y.dtype)
        b = np.empty((p, step * m), dtype=tt.dtype)
        for k0 in range(0, n_rand, step):
            width = min(step, n_rand - k0)
            for j in range(width):
                np.take(y_t, forward[k0 + j], axis=0, out=y_perm[:, j, :], mode="clip")
            np.matmul(t, y_perm[:, :width].reshape(n, width * m), out=b[:, : width * m])
            for j in range(width):
                _accumulate(b[:, j * m : (j + 1) * m].T, beta, s1, s2, count)
    return _finish(beta, s1, s2, count, n_rand)


@numba.njit(nogil=True, cache=True)
def _accumulate(b, beta, s1, s2, count):  # pragma: no cover (numba)
    """Add one permutation's ``b`` to the running sums and exceedance counts in one
    branch-free sweep that LLVM vectorises (numpy took six passes over ``m x p``, 5% of the
    dense path at SecAct's size; this takes 1%)."""
    for i in range(b.shape[0]):
        b_i, beta_i, s1_i, s2_i, count_i = b[i], beta[i], s1[i], s2[i], count[i]
        for j in range(b_i.shape[0]):
            x = np.float64(b_i[j])
            s1_i[j] += x
            s2_i[j] += x * x
            count_i[j] += np.int64(abs(x) >= abs(beta_i[j]))


@numba.njit(nogil=True, cache=True)
def _finish(beta, s1, s2, count, n_rand):  # pragma: no cover (numba)
    """``(m, 4, p)`` beta/se/zscore/pvalue from β and the sums over the permutations, in one
    sweep (numpy's eight temporaries of ``m x p`` took 10% of a 20-permutation dense run)."""
    m, p = beta.shape
    out = np.empty((m, 4, p), dtype=np.float64)
    for i in range(m):
        for j in range(p):
            b = np.float64(beta[i, j])
            mean = s1[i, j] / n_rand
            se = np.sqrt(max(s2[i, j] / n_rand - mean * mean, 0.0))
            out[i, 0, j] = b
            out[i, 1, j] = se
            out[i, 2, j] = (b - mean) / se if se > EPS else 0.0
            out[i, 3, j] = (count[i, j] + 1.0) / (n_rand + 1.0)
    return out


@dataclass(frozen=True)
class SparseTargets:
    """Regression targets ``y = a·(z - r) - b`` (per row) kept as sparse ``z`` plus corrections.

    Attributes
    ----------
    z
        Samples x genes, scipy CSR (the log-normalised values).
    scale
        ``a`` per sample (``m``); 0 gives an all-zero row of targets.
    offset
        ``b`` per sample (``m``).
    centre
        ``r`` per gene (``n``), or ``None`` for no centring.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from scdask.activity import SparseTargets
    >>> t = SparseTargets(sp.csr_array(np.eye(2)), np.ones(2), np.zeros(2), None)
    >>> t.dense()
    array([[1., 0.],
           [0., 1.]])
    """

    z: sp.csr_array
    scale: np.ndarray
    offset: np.ndarray
    centre: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.z.shape

    def dense(self) -> np.ndarray:
        """``y`` itself (``m x n`` float64)."""
        y = self.z.toarray().astype(np.float64, copy=False)
        if self.centre is not None:
            y -= self.centre
        y *= self.scale[:, None]
        y -= self.offset[:, None]
        return y


@intrinsic
def _gather_add(typingctx, lo, hi, rows, vals, tile, out, at):
    """``out[at : at + _TILE] += Σ_e vals[e] · tile[rows[e], :]`` for ``e`` in ``[lo, hi)``.

    Written as LLVM vector IR because numba's loop vectoriser keeps such an accumulator in
    memory (one load and one store per multiply-add): here the ``_TILE`` sums stay in vector
    registers (8 x 8 float64 or 4 x 16 float32, one fused multiply-add each per entry) from
    the first entry to the last. LLVM lowers the 512-bit vectors to what the CPU has.
    """
    lanes = 512 // tile.dtype.bitwidth
    n_vec = _TILE // lanes
    sig = types.void(lo, hi, rows, vals, tile, out, at)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        lo, hi, at = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in (0, 1, 6)
        )
        rows_p, vals_p, tile_p, out_p = (
            context.make_array(signature.args[i])(context, builder, args[i]).data
            for i in (2, 3, 4, 5)
        )
        scalar = tile_p.type.pointee
        vec = ir.VectorType(scalar, lanes)
        align = tile.dtype.bitwidth // 8
        fma = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vec, [vec] * 3),
            f"llvm.fma.v{lanes}f{tile.dtype.bitwidth}",
        )

        def vectors(base_p, offset):
            return [
                builder.bitcast(
                    builder.gep(base_p, [builder.add(offset, ir.Constant(i64, k * lanes))]),
                    vec.as_pointer(),
                )
                for k in range(n_vec)
            ]

        targets = vectors(out_p, at)
        sums = [cgutils.alloca_once_value(builder, builder.load(t, align=align)) for t in targets]
        undef = ir.Constant(vec, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        with cgutils.for_range(builder, builder.sub(hi, lo)) as loop:
            e = builder.add(lo, loop.index)
            row = builder.sext(builder.load(builder.gep(rows_p, [e])), i64)
            value = builder.insert_element(
                undef, builder.load(builder.gep(vals_p, [e])), ir.Constant(ir.IntType(32), 0)
            )
            value = builder.shuffle_vector(value, undef, splat)
            sources = vectors(tile_p, builder.mul(row, ir.Constant(i64, _TILE)))
            for acc, src in zip(sums, sources, strict=True):
                product = builder.call(
                    fma, [value, builder.load(src, align=align), builder.load(acc)]
                )
                builder.store(product, acc)
        for acc, t in zip(sums, targets, strict=True):
            builder.store(builder.load(acc), t, align=align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _prefetch_row(typingctx, array, row):
    """Ask the CPU to fetch row ``row`` of the C-contiguous ``(n, _TILE)`` ``array`` into L2
    (``llvm.prefetch``, one per cache line) without waiting for it."""
    sig = types.void(array, row)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        i8p = ir.IntType(8).as_pointer()
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        start = builder.mul(
            context.cast(builder, args[1], signature.args[1], types.int64), ir.Constant(i64, _TILE)
        )
        prefetch = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        # read, keep in L2 (locality 2), data cache
        hints = [ir.Constant(i32, h) for h in (0, 2, 1)]
        for q in range(0, _TILE, 64 // (array.dtype.bitwidth // 8)):
            line = builder.gep(data, [builder.add(start, ir.Constant(i64, q))])
            builder.call(prefetch, [builder.bitcast(line, i8p), *hints])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _bucket(indptr, cols, vals, ptr, rows, out_vals):
    """Entries of CSR ``z`` in buckets of genes, once per chunk of samples.

    Output is bucket-major: ``ptr[b, c]`` to ``ptr[b, c + 1]`` index the entries of sample
    ``c`` whose gene lies in bucket ``b`` (genes ``[b·2^_BUCKET_SHIFT, (b + 1)·2^_BUCKET_SHIFT)``);
    ``rows`` holds each entry's gene within its bucket and ``out_vals`` its value.
    """
    m = indptr.shape[0] - 1
    n_buckets = ptr.shape[0]
    cursor = np.zeros((m, n_buckets), dtype=np.int64)
    for c in range(m):
        for e in range(indptr[c], indptr[c + 1]):
            cursor[c, cols[e] >> _BUCKET_SHIFT] += 1
    start = 0
    for b in range(n_buckets):
        for c in range(m):
            ptr[b, c] = start
            start += cursor[c, b]
            cursor[c, b] = ptr[b, c]
        ptr[b, m] = start
    mask = (1 << _BUCKET_SHIFT) - 1
    for c in range(m):
        for e in range(indptr[c], indptr[c + 1]):
            g = cols[e]
            q = cursor[c, g >> _BUCKET_SHIFT]
            rows[q] = g & mask
            out_vals[q] = vals[e]
            cursor[c, g >> _BUCKET_SHIFT] = q + 1


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _gather_tiles(
    ptr, rows, perm, vals, tiles, rows_buf, acc, scale, offset, shift, colsum, beta, s1, s2,
    count, observed,
):  # fmt: skip
    """One permutation (gene ``j`` meets row ``perm[j]`` of ``Tᵀ``; entries from
    :func:`_bucket`): β⁽ᵏ⁾ and its running statistics.

    For each protein tile and each bucket of genes, the rows of ``Tᵀ`` the bucket's genes
    meet are copied into ``rows_buf`` (``2^_BUCKET_SHIFT x _TILE`` values, which stay in
    cache) and every sample adds its entries of that bucket from them; then
    ``β = a·(acc - shift) - b·colsum`` goes to ``beta`` (observed) or into ``s1``, ``s2``
    and ``count``.
    """
    m = scale.shape[0]
    n = perm.shape[0]
    p = beta.shape[1]
    size = rows_buf.shape[0]
    for t in range(tiles.shape[0]):
        tile = tiles[t]
        acc[:] = 0
        for b in range(ptr.shape[0]):
            g0 = b * size
            for j in range(min(n - g0, size)):
                r = perm[g0 + j]
                for q in range(_TILE):
                    rows_buf[j, q] = tile[r, q]
            # The rows of the next bucket arrive while this one is summed: their prefetches
            # are spread over the samples (all at once, most waited for a free slot).
            g1, t1 = (g0 + size, t) if g0 + size < n else (0, t + 1)
            ahead = min(n - g1, size) if t1 < tiles.shape[0] else 0
            upcoming = tiles[min(t1, tiles.shape[0] - 1)]
            done = 0
            for c in range(m):
                due = (c + 1) * ahead // m
                for j in range(g1 + done, g1 + due):
                    _prefetch_row(upcoming, perm[j])
                done = due
                _gather_add(ptr[b, c], ptr[b, c + 1], rows, vals, rows_buf, acc, c * _TILE)
        q0 = t * _TILE
        width = min(_TILE, p - q0)
        for c in range(m):
            a = scale[c]
            b = offset[c]
            for q in range(width):
                x = a * (acc[c, q] - shift[q0 + q]) - b * colsum[q0 + q]
                if observed:
                    beta[c, q0 + q] = x
                else:
                    s1[c, q0 + q] += x
                    s2[c, q0 + q] += x * x
                    if abs(x) >= abs(beta[c, q0 + q]):
                        count[c, q0 + q] += 1


def _aligned_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros whose first element sits on a 64-byte boundary, so that none of the kernel's
    vector loads and stores straddles two cache lines (numpy only promises 16 bytes)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    raw = np.zeros(size + 64 // dtype.itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[skip : skip + size].reshape(shape)


def _tiles(tt: np.ndarray, dtype) -> np.ndarray:
    """``Tᵀ`` as ``(tiles, n, _TILE)`` contiguous tiles of proteins, zero-padded."""
    n, p = tt.shape
    n_tiles = -(-p // _TILE)
    tiles = _aligned_zeros((n_tiles, n, _TILE), dtype)
    for t in range(n_tiles):
        cols = tt[:, t * _TILE : (t + 1) * _TILE]
        tiles[t, :, : cols.shape[1]] = cols
    return tiles


def _sparse_permutation_stats(
    targets: SparseTargets,
    tt: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray],
    dtype,
    threads: int,
) -> np.ndarray:
    """beta/se/zscore/pvalue (``m x 4 x p``) of sparse targets, never densifying ``z``.

    ``tt`` is float64, ``tables`` the forward and inverse tables; products run in ``dtype``,
    corrections and sums in float64. ``threads`` split the samples.
    """
    forward, inverse = tables
    n_rand = forward.shape[0]
    z = sp.csr_array(targets.z)
    m, n = z.shape
    p = tt.shape[1]
    # The observed β always runs in float64: in float32 mode its rounding would go straight
    # into the z-score (Δz ≈ Δβ/se), while the permutations' rounding averages out.
    exact = _tiles(tt, np.float64)
    work = exact if dtype == np.float64 else _tiles(tt, dtype)
    colsum = tt.sum(axis=0)
    identity = np.arange(n, dtype=np.int32)
    if targets.centre is None:
        shifts = np.zeros((n_rand + 1, p))
    else:
        # r P_k Tᵀ for the observed order and every permutation: one GEMM
        shifts = targets.centre[np.vstack([identity, forward])] @ tt
    beta = np.zeros((m, p))
    s1 = np.zeros((m, p))
    s2 = np.zeros((m, p))
    count = np.zeros((m, p), dtype=np.int64)
    n_buckets = ((n - 1) >> _BUCKET_SHIFT) + 1

    def run(lo: int, hi: int) -> None:
        part = z[lo:hi]
        ptr = np.empty((n_buckets, hi - lo + 1), dtype=np.int64)
        rows = np.empty(part.nnz, dtype=np.int32)
        exact_vals = np.empty(part.nnz, dtype=np.float64)
        _bucket(part.indptr, part.indices, part.data, ptr, rows, exact_vals)
        rest = (targets.scale[lo:hi], targets.offset[lo:hi])
        stats = (beta[lo:hi], s1[lo:hi], s2[lo:hi], count[lo:hi])
        for k in range(n_rand + 1):
            tiles = exact if k == 0 else work
            if k <= 1:  # the observed β's float64 buffers, then the permutations' ones
                vals = exact_vals.astype(tiles.dtype, copy=False)
                rows_buf = _aligned_zeros((1 << _BUCKET_SHIFT, _TILE), tiles.dtype)
                acc = _aligned_zeros((hi - lo, _TILE), tiles.dtype)
            _gather_tiles(ptr, rows, identity if k == 0 else inverse[k - 1], vals, tiles,
                          rows_buf, acc, *rest, shifts[k], colsum, *stats, k == 0)  # fmt: skip

    bounds = np.linspace(0, m, max(1, min(threads, m // _MIN_SPARSE_ROWS)) + 1).astype(int)
    if len(bounds) == 2:
        run(0, m)
    else:
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            for job in [pool.submit(run, lo, hi) for lo, hi in itertools.pairwise(bounds)]:
                job.result()
    return _finish(beta, s1, s2, count, n_rand)


def _t_test_stats(y: np.ndarray, model: Model) -> np.ndarray:
    """secactpy's analytical alternative (``n_rand=0``): Student-t on ``β`` alone."""
    n, p = model.tt.shape
    beta = y @ model.tt
    resid = y - beta @ model.x.T
    df = n - p
    if df <= 0:
        warnings.warn(f"n - p = {df} <= 0; using df = 1", RuntimeWarning, stacklevel=3)
        df = 1
    sigma2 = (resid**2).sum(axis=1) / df
    se = np.sqrt(sigma2[:, None] * model.ainv_diag[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > EPS, beta / se, 0.0)
    out = np.empty((y.shape[0], 4, p), dtype=np.float64)
    out[:, 0] = beta
    out[:, 1] = se
    out[:, 2] = t
    out[:, 3] = np.clip(2.0 * scipy.stats.t.sf(np.abs(t), df), 0.0, 1.0)
    return out


def _plain(block):
    """A block as plain scipy CSR or numpy (our kernels use scipy/numpy directly)."""
    if sp.issparse(block):
        return block.to_scipy() if hasattr(block, "to_scipy") else sp.csr_array(block)
    return np.asarray(block)


def _as_dense(block) -> np.ndarray:
    block = _plain(block)
    return block.toarray() if sp.issparse(block) else block


def ridge_block(
    block,
    model: Model,
    tables: tuple[np.ndarray, np.ndarray] | None,
    *,
    dtype=np.float64,
    chunk_rows: int = 1024,
    transform: Callable[[object], SparseTargets] | None = None,
    threads: int = 1,
) -> np.ndarray:
    """The permutation test for one block of samples (the function every dask task runs).

    Parameters
    ----------
    block
        Samples x genes, dense or sparse (a :class:`~scdask._ops.CSRBlock` or scipy CSR).
    model
        From :func:`build_model`, shared by every block.
    tables
        ``(forward, inverse)`` permutation tables (int32, ``n_rand x n``) shared by every
        block, or ``None`` for the t-test.
    dtype
        ``np.float64`` (exact, default) or ``np.float32`` (the products in single
        precision; sums and statistics stay float64).
    chunk_rows
        Samples processed at a time; bounds memory at about ``chunk_rows x n`` values.
    transform
        Optional map from a row slice of ``block`` to its :class:`SparseTargets` (the
        normalisation, centring and scaling of the pipelines). Without it the rows are used
        as they are.
    threads
        Threads for the sparse kernel (the dask graph passes 1: it runs blocks in parallel).

    Returns
    -------
    numpy.ndarray
        ``(m, 4, p)`` float64: beta, se, zscore, pvalue for every sample and protein.

    Examples
    --------
    >>> import numpy as np
    >>> from scdask.activity import build_model, ridge_block
    >>> from scdask.activity._ridge import _tables
    >>> rng = np.random.default_rng(0)
    >>> model = build_model(rng.standard_normal((30, 2)), 1.0)
    >>> ridge_block(rng.standard_normal((5, 30)), model, _tables(30, 10, 0, "srand")).shape
    (5, 4, 2)
    """
    m = block.shape[0]
    p = model.tt.shape[1]
    out = np.empty((m, 4, p), dtype=np.float64)
    tt = model.tt if dtype == np.float64 else model.tt.astype(dtype)
    for start in range(0, m, chunk_rows):
        part = block[start : start + chunk_rows]
        rows = slice(start, start + part.shape[0])
        if transform is not None:
            targets = transform(part)
        elif sp.issparse(part):
            ones = np.ones(part.shape[0])
            targets = SparseTargets(sp.csr_array(_plain(part)), ones, np.zeros_like(ones), None)
        else:
            targets = None
        if tables is not None and targets is not None and targets.shape[0] >= _MIN_SPARSE_ROWS:
            out[rows] = _sparse_permutation_stats(targets, model.tt, tables, dtype, threads)
            continue
        y = targets.dense() if targets is not None else np.asarray(part, dtype=np.float64)
        if tables is None:
            out[rows] = _t_test_stats(y, model)
        else:
            out[rows] = _permutation_stats(y.astype(dtype, copy=False), tt, tables)
    return out


def map_ridge(
    y: da.Array,
    model,
    tables,
    n_proteins: int,
    *,
    dtype=np.float64,
    chunk_rows: int = 1024,
    transform: Callable[[object], np.ndarray] | None = None,
) -> da.Array:
    """:func:`ridge_block` over the row blocks of ``y``: a lazy ``(m, 4, p)`` float64 array.

    Parameters
    ----------
    y
        Samples x genes dask array (blocks of rows; blocks along genes are merged).
    model, tables
        What :func:`ridge_block` takes, typically as ``dask.delayed`` objects so that each
        is one graph key that every task depends on.
    n_proteins
        ``p``, the number of columns of the model.
    dtype, chunk_rows, transform
        Passed to :func:`ridge_block`.

    Returns
    -------
    dask.array.Array
        ``(m, 4, p)``: beta, se, zscore, pvalue along the middle axis.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np
    >>> from scdask.activity import build_model, map_ridge
    >>> from scdask.activity._ridge import _tables
    >>> rng = np.random.default_rng(0)
    >>> model = dask.delayed(build_model)(rng.standard_normal((30, 2)), 1.0)
    >>> tables = dask.delayed(_tables)(30, 10, 0, "srand")
    >>> y = da.from_array(rng.standard_normal((9, 30)), chunks=(4, 30))
    >>> map_ridge(y, model, tables, 2).compute().shape
    (9, 4, 2)
    """
    y = y.rechunk({1: -1})
    kernel = functools.partial(ridge_block, dtype=dtype, chunk_rows=chunk_rows, transform=transform)
    return da.map_blocks(
        kernel,
        y,
        model,
        tables,
        dtype=np.float64,
        drop_axis=1,
        new_axis=[1, 2],
        chunks=(y.chunks[0], (4,), (n_proteins,)),
        meta=np.empty((0, 0, 0), dtype=np.float64),
    )


def _check_rng(rng: str, n_rand: int) -> None:
    if rng not in RNG_METHODS:
        raise InputError(f"rng must be one of {RNG_METHODS}, got {rng!r}")
    if n_rand < 0:
        raise InputError(f"n_rand must be >= 0, got {n_rand}")


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise InputError(f"dtype must be float64 or float32, got {dtype}")
    return dtype


def ridge(
    y,
    x,
    *,
    lambda_: float = 5e5,
    n_rand: int = 1000,
    seed: int = 0,
    rng: str = "srand",
    dtype=np.float64,
    chunk_rows: int = 1024,
) -> dict:
    """SecAct ridge regression of samples on a signature, with a permutation test.

    ``β = T yᵀ`` with ``T = (XᵀX + λI)⁻¹Xᵀ``; the null comes from ``n_rand`` permutations
    of the genes (one table shared by all samples); ``se`` is the population sd of the
    permuted β, ``zscore = (β - mean)/se`` (0 where ``se <= 1e-12``) and
    ``pvalue = (#{|β⁽ᵏ⁾| >= |β|} + 1)/(n_rand + 1)``. ``n_rand=0`` gives secactpy's
    analytical t-test instead. No scaling is applied: pass z-scored data to reproduce
    ``secactpy.ridge``.

    Parameters
    ----------
    y
        Samples x genes (``m x n``): numpy, scipy sparse or a dask array (blocks of rows;
        several blocks along genes are merged).
    x
        Signature, genes x proteins (``n x p``), rows aligned with the columns of ``y``.
    lambda_
        Ridge penalty.
    n_rand
        Number of permutations; 0 for the t-test.
    seed, rng
        Permutation table (see :func:`permutation_table`).
    dtype
        ``np.float64`` (default, matches secactpy to rounding) or ``np.float32``.
    chunk_rows
        Samples multiplied at a time inside a block.

    Returns
    -------
    dict
        ``beta``, ``se``, ``zscore``, ``pvalue``: ``m x p`` arrays (the transpose of
        secactpy's), numpy for in-memory input and dask (lazy, row blocks of ``y``) for
        dask input. On dask, ``Tᵀ`` and the permutation table are single graph keys that
        every block task shares (futures broadcast once to the workers with a Client).

    Examples
    --------
    >>> import numpy as np
    >>> from scdask.activity import ridge
    >>> rng = np.random.default_rng(0)
    >>> res = ridge(rng.standard_normal((4, 60)), rng.standard_normal((60, 3)), n_rand=20)
    >>> res["zscore"].shape
    (4, 3)
    """
    _check_rng(rng, n_rand)
    dtype = _check_dtype(dtype)
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    if y.shape[1] != n:
        raise InputError(f"y has {y.shape[1]} genes (columns) but x has {n} rows")
    if isinstance(y, da.Array):
        model = shared(build_model, x, lambda_, t_test=n_rand == 0)
        tables = shared(_tables, n, n_rand, seed, rng) if n_rand else None
        stacked = map_ridge(y, model, tables, p, dtype=dtype, chunk_rows=chunk_rows)
        return {name: stacked[:, i, :] for i, name in enumerate(_STATS)}
    model = build_model(x, lambda_, t_test=n_rand == 0)
    tables = _tables(n, n_rand, seed, rng) if n_rand else None
    out = ridge_block(
        y, model, tables, dtype=dtype, chunk_rows=chunk_rows, threads=len(os.sched_getaffinity(0))
    )
    return {name: out[:, i, :] for i, name in enumerate(_STATS)}
