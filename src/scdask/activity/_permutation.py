"""Permutation tables for the SecAct permutation test, bit-identical to secactpy 0.3.1.

The table holds ``n_rand`` permutations of ``0..n-1``. With ``rng="srand"`` (the default,
glibc ``srand``/``rand``) and ``rng="gsl"`` (MT19937 with GSL's seeding) every permutation
is one forward Fisher-Yates pass over the array left by the previous one, drawing
``j = i + r // (RAND_MAX // (n - i) + 1)`` for ``i = 0 .. n-2``; ``rng="numpy"`` draws
independent ``RandomState(seed).permutation(n)`` rows (secactpy's fast mode) without touching
numpy's global state.

Everything is vectorised with numpy:

* glibc's additive-feedback generator ``s_i = s_{i-31} + s_{i-3} (mod 2**32)`` is linear, so
  31 consecutive words are a fixed 31x31 integer matrix ``M`` times the previous 31 words.
  ``M**R`` jumps ``R`` rows ahead, which gives the start of many independent lanes; the
  recurrence then runs three words at a time in all lanes at once (uint32 wraps mod 2**32).
* MT19937 twists its 624 words in four vectorised slices.
* The ``n - 1`` swaps of one Fisher-Yates pass are sequential, but passes that start from
  the identity are independent: every swap runs once, vectorised over all permutations,
  and the cumulative table is then a chain of cheap gathers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scdask._config import cache_dir
from scdask._errors import InputError
from scdask._files import atomic_target

__all__ = ["RNG_METHODS", "permutation_table"]

RNG_METHODS = ("srand", "gsl", "numpy")

_MASK32 = np.uint64(0xFFFFFFFF)
_SRAND_MAX = 2**31 - 1
_MT_MAX = 2**32 - 1
_GLIBC_DISCARD = 310
_GLIBC_LANES = 2048  # independent stretches of the sequence generated side by side


# -- glibc rand() ---------------------------------------------------------------------------
def _glibc_initial_state(seed: int) -> np.ndarray:
    """The 31 words ``r[0..30]`` that glibc's ``srandom(seed)`` writes (as uint32 bit patterns)."""
    seed32 = seed % 2**32
    if seed32 == 0:
        seed32 = 1
    word = seed32 - 2**32 if seed32 >= 2**31 else seed32
    words = [word]
    for _ in range(30):
        hi = int(word / 127773)  # C division truncates toward zero
        lo = word - hi * 127773
        word = 16807 * lo - 2836 * hi
        if word < 0:
            word += 2147483647
        words.append(word)
    return np.array([w % 2**32 for w in words], dtype=np.uint64)


def _glibc_step_matrix() -> np.ndarray:
    """The 31x31 matrix ``M`` with ``row_t = M @ row_{t-1} (mod 2**32)``.

    Rows are 31 consecutive words of the sequence, wherever every word of ``row_t`` obeys
    ``s_i = s_{i-31} + s_{i-3}``.
    """
    m = np.zeros((31, 31), dtype=np.uint64)
    for c in range(31):
        # s[c] = prev[c] + s[c-3] for c >= 3, and s[c] = prev[c] + prev[28 + c] for c < 3.
        m[c, c] += 1
        k = c
        while k >= 3:
            k -= 3
            m[c, k] += 1
        m[c, 28 + k] += 1
    return m


def _matpow_mod32(m: np.ndarray, power: int) -> np.ndarray:
    """``m**power (mod 2**32)``; uint64 products wrap mod 2**64, which keeps them exact mod 2**32."""
    result = np.eye(m.shape[0], dtype=np.uint64)
    while power:
        if power & 1:
            result = (result @ m) & _MASK32
        m = (m @ m) & _MASK32
        power >>= 1
    return result


def _glibc_rand(seed: int, count: int) -> np.ndarray:
    """The first ``count`` values of glibc ``rand()`` after ``srand(seed)`` (int64)."""
    r = _glibc_initial_state(seed)
    # Row 0 is s_3 .. s_33 (s_31..s_33 copy s_0..s_2); from s_34 on the recurrence holds.
    row = np.concatenate([r[3:], r[:3]])
    offset = _GLIBC_DISCARD + 34 - 3  # o_k = s_{k+344} >> 1 and row 0 starts at s_3
    n_rows = -(-(offset + count) // 31)
    n_lanes = max(1, min(_GLIBC_LANES, n_rows // 64))
    lane_rows = -(-(n_rows - 1) // n_lanes) if n_rows > 1 else 1
    jump = _matpow_mod32(_glibc_step_matrix(), lane_rows)
    lanes = np.empty((31 * (lane_rows + 1), n_lanes), dtype=np.uint32)
    start = row
    for lane in range(n_lanes):
        lanes[:31, lane] = start
        start = (jump @ start) & _MASK32
    total = lanes.shape[0]
    for q in range(31, total, 3):
        e = min(q + 3, total)
        lanes[q:e] = lanes[q - 31 : e - 31] + lanes[q - 3 : e - 3]
    words = np.concatenate([row.astype(np.uint32), lanes[31:].T.reshape(-1)])
    return (words[offset : offset + count] >> np.uint32(1)).astype(np.int64)


# -- MT19937 ---------------------------------------------------------------------------------
def _mt19937(seed: int, count: int) -> np.ndarray:
    """``count`` outputs of ``genrand_int32`` after ``init_genrand(seed)`` (int64)."""
    mt = np.empty(624, dtype=np.uint64)
    value = seed & 0xFFFFFFFF
    mt[0] = value
    for i in range(1, 624):
        value = (1812433253 * (value ^ (value >> 30)) + i) & 0xFFFFFFFF
        mt[i] = value
    upper, lower = np.uint64(0x80000000), np.uint64(0x7FFFFFFF)
    matrix_a, one = np.uint64(0x9908B0DF), np.uint64(1)

    def twist(lo: int, hi: int, nxt: np.ndarray, far: np.ndarray) -> None:
        y = (mt[lo:hi] & upper) | (nxt & lower)
        mt[lo:hi] = far ^ (y >> one) ^ ((y & one) * matrix_a)

    n_twists = -(-count // 624)
    out = np.empty(n_twists * 624, dtype=np.uint64)
    for t in range(n_twists):
        # mt[i] depends on mt[i+1] (still old) and mt[(i+397) % 624] (new once i >= 227).
        twist(0, 227, mt[1:228], mt[397:624])
        twist(227, 454, mt[228:455], mt[0:227])
        twist(454, 623, mt[455:624], mt[227:396])
        twist(623, 624, mt[0:1], mt[396:397])
        out[t * 624 : (t + 1) * 624] = mt
    y = out[:count]
    y ^= y >> np.uint64(11)
    y ^= (y << np.uint64(7)) & np.uint64(0x9D2C5680)
    y ^= (y << np.uint64(15)) & np.uint64(0xEFC60000)
    y ^= y >> np.uint64(18)
    return y.astype(np.int64)


# -- Fisher-Yates ----------------------------------------------------------------------------
def _shuffle_maps(j: np.ndarray) -> np.ndarray:
    """For each row of swap targets ``j`` (``j[:, i] >= i``, ``n - 1`` columns), the
    permutation ``g`` such that one Fisher-Yates pass turns any array ``a`` into ``a[g]``.

    The passes are independent when they start from the identity, so the ``n - 1`` swaps
    run once, each swap vectorised over all rows (positions x rows layout, flat indices).
    """
    n_perm, steps = j.shape
    n = steps + 1
    dtype = np.int16 if n < 2**15 else np.int32
    state = np.repeat(np.arange(n, dtype=dtype), n_perm)
    targets = (j.T * n_perm + np.arange(n_perm)).astype(np.intp)
    for i in range(steps):
        here = state[i * n_perm : (i + 1) * n_perm]
        displaced = here.copy()
        where = targets[i]
        here[:] = state[where]
        state[where] = displaced
    return np.ascontiguousarray(state.reshape(n, n_perm).T).astype(np.intp)


def _cumulative_table(draws: np.ndarray, n: int, n_rand: int, rand_max: int) -> np.ndarray:
    """Forward table (int32) of cumulative Fisher-Yates passes driven by raw ``draws``."""
    table = np.empty((n_rand, n), dtype=np.int32)
    if n == 1:
        table[:] = 0
        return table
    i = np.arange(n - 1, dtype=np.int64)
    divisor = rand_max // (n - i) + 1
    j = i + draws.reshape(n_rand, n - 1) // divisor
    maps = _shuffle_maps(j)
    state = np.arange(n, dtype=np.int32)
    for k in range(n_rand):
        state = state[maps[k]]
        table[k] = state
    return table


def _build_table(n: int, n_rand: int, seed: int, rng: str) -> np.ndarray:
    if rng == "numpy":
        rs = np.random.RandomState(seed)
        return np.array([rs.permutation(n) for _ in range(n_rand)], dtype=np.int32).reshape(
            n_rand, n
        )
    count = n_rand * (n - 1)
    if rng == "srand":
        return _cumulative_table(_glibc_rand(seed, count), n, n_rand, _SRAND_MAX)
    draws = _mt19937(4357 if seed == 0 else seed, count)
    return _cumulative_table(draws, n, n_rand, _MT_MAX)


# -- cache -----------------------------------------------------------------------------------
def _cache_path(n: int, n_rand: int, seed: int, rng: str) -> Path:
    root = cache_dir()
    return root / "permutations" / f"perm_{rng}_n{n}_r{n_rand}_s{seed}.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _forward_table(n: int, n_rand: int, seed: int, rng: str, cache: bool) -> np.ndarray:
    if not cache:
        return _build_table(n, n_rand, seed, rng)
    path = _cache_path(n, n_rand, seed, rng)
    try:
        table = np.load(path)
        if table.shape == (n_rand, n) and table.dtype == np.int32:
            return table
    except (OSError, ValueError):
        pass
    table = _build_table(n, n_rand, seed, rng)
    try:
        _save_atomic(path, table)
    except OSError:
        pass  # an unwritable cache only costs the rebuild next time
    return table


def _inverse(table: np.ndarray) -> np.ndarray:
    inverse = np.empty(table.shape, dtype=np.intp)
    rows = np.arange(table.shape[0])[:, None]
    inverse[rows, table] = np.arange(table.shape[1])
    return inverse


def permutation_table(
    n_genes: int,
    n_rand: int,
    seed: int = 0,
    rng: str = "srand",
    *,
    inverse: bool = True,
    cache: bool = True,
) -> np.ndarray:
    """Permutation table of secactpy's permutation test, bit for bit.

    Parameters
    ----------
    n_genes
        Length of each permutation (the number of genes used in the regression).
    n_rand
        Number of permutations (rows).
    seed
        Seed. With ``"srand"``, seeds are taken modulo 2**32 and 0 is the same as 1
        (glibc); with ``"gsl"``, 0 means GSL's default 4357.
    rng
        ``"srand"`` (glibc ``rand()``, secactpy's default and the old R SecAct on Linux),
        ``"gsl"`` (MT19937, the current R SecAct default when ``seed=0``) or ``"numpy"``
        (independent permutations from ``numpy.random.RandomState(seed)``, secactpy's
        fast mode; numpy's global state is not touched).
    inverse
        Return the inverse permutations ``Q[k, P[k, j]] = j`` (what the ridge kernel
        consumes, dtype ``intp``) instead of the forward table ``P`` (dtype ``int32``).
    cache
        Keep the forward table as ``.npy`` under ``dask.config["scdask.cache-dir"]``
        (``permutations/``), keyed by all four inputs and written atomically.

    Returns
    -------
    numpy.ndarray
        ``(n_rand, n_genes)`` array. ``rng="srand"`` equals
        ``secactpy.generate_inverse_permutation_table(n_genes, n_rand, seed)`` and
        ``rng="gsl"`` equals ``secactpy.GSLRNG(seed).inverse_permutation_table(...)``.

    Examples
    --------
    >>> from scdask.activity import permutation_table
    >>> permutation_table(20, 2, inverse=False, cache=False)[0].tolist()
    [16, 8, 0, 2, 18, 7, 10, 3, 11, 15, 14, 5, 6, 1, 19, 12, 4, 9, 13, 17]
    """
    if rng not in RNG_METHODS:
        raise InputError(f"rng must be one of {RNG_METHODS}, got {rng!r}")
    n_genes, n_rand, seed = int(n_genes), int(n_rand), int(seed)
    if n_genes < 1 or n_rand < 0:
        raise InputError(f"need n_genes >= 1 and n_rand >= 0, got {n_genes} and {n_rand}")
    table = _forward_table(n_genes, n_rand, seed, rng, cache)
    return _inverse(table) if inverse else table
