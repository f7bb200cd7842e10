"""Permutation tables: bit-identical to secactpy 0.3.1 (srand, gsl, numpy), cached on disk."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from scdask.activity import permutation_table

secactpy = pytest.importorskip("secactpy")

# SPEC §2.6: the srand table for n=20, n_rand=5, seed=0 (forward rows, then inverse rows).
FORWARD_20_5_0 = np.array(
    [
        [16, 8, 0, 2, 18, 7, 10, 3, 11, 15, 14, 5, 6, 1, 19, 12, 4, 9, 13, 17],
        [6, 8, 10, 7, 4, 3, 5, 11, 15, 17, 16, 12, 13, 9, 0, 14, 19, 18, 2, 1],
        [3, 14, 12, 19, 16, 2, 17, 10, 18, 1, 4, 5, 7, 9, 8, 6, 11, 0, 15, 13],
        [3, 1, 19, 10, 13, 15, 0, 4, 8, 9, 17, 6, 12, 11, 18, 7, 16, 14, 5, 2],
        [15, 7, 11, 9, 1, 4, 12, 5, 14, 0, 10, 2, 18, 8, 6, 19, 3, 17, 16, 13],
    ]
)
INVERSE_20_5_0 = np.array(
    [
        [2, 13, 3, 7, 16, 11, 12, 5, 1, 17, 6, 8, 15, 18, 10, 9, 0, 19, 4, 14],
        [14, 19, 18, 5, 4, 6, 0, 3, 1, 13, 2, 7, 11, 12, 15, 8, 10, 9, 17, 16],
        [17, 9, 5, 0, 10, 11, 15, 12, 14, 13, 7, 16, 2, 19, 1, 18, 4, 6, 8, 3],
        [6, 1, 19, 0, 7, 18, 11, 15, 8, 9, 3, 13, 12, 4, 17, 5, 16, 10, 14, 2],
        [9, 4, 11, 16, 5, 7, 14, 1, 13, 3, 10, 2, 6, 19, 8, 0, 18, 17, 12, 15],
    ]
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path):
    with dask.config.set({"scdask.cache-dir": str(tmp_path)}):
        yield


def test_spec_reference_rows():
    forward = permutation_table(20, 5, 0, inverse=False)
    inverse = permutation_table(20, 5, 0)
    np.testing.assert_array_equal(forward, FORWARD_20_5_0)
    np.testing.assert_array_equal(inverse, INVERSE_20_5_0)
    assert forward.dtype == np.int32
    assert inverse.dtype == np.intp


@pytest.mark.parametrize(
    ("n", "n_rand", "seed"),
    [
        (20, 5, 0),
        (20, 5, 42),
        (1000, 50, 0),
        (7919, 3, 0),
        (2, 7, 3),
        (3, 10, 5),
        (150, 1000, 0),
        (300, 20, 2**31 - 1),
        (300, 20, 2**31 + 5),
        (300, 20, 2**32 - 1),
        (300, 20, 2**40 + 17),
        (300, 20, -3),
        (300, 20, 123456789),
    ],
)
def test_srand_matches_secactpy(n, n_rand, seed):
    expected = secactpy.generate_inverse_permutation_table(n, n_rand, seed)
    np.testing.assert_array_equal(permutation_table(n, n_rand, seed, "srand"), expected)
    forward = secactpy.generate_permutation_table(n, n_rand, seed)
    np.testing.assert_array_equal(permutation_table(n, n_rand, seed, inverse=False), forward)


def test_srand_seed_zero_is_seed_one():
    zero = permutation_table(500, 10, 0)
    np.testing.assert_array_equal(zero, permutation_table(500, 10, 1))
    np.testing.assert_array_equal(zero, secactpy.generate_inverse_permutation_table(500, 10, 1))
    assert not np.array_equal(zero, permutation_table(500, 10, 2))


@pytest.mark.parametrize(
    ("n", "n_rand", "seed"), [(20, 5, 0), (20, 5, 7), (500, 20, 0), (9, 4, 2**33 + 1)]
)
def test_gsl_matches_secactpy(n, n_rand, seed):
    expected = secactpy.GSLRNG(seed).inverse_permutation_table(n, n_rand)
    np.testing.assert_array_equal(permutation_table(n, n_rand, seed, "gsl"), expected)


def test_gsl_seed_zero_is_4357():
    np.testing.assert_array_equal(
        permutation_table(50, 3, 0, "gsl"), permutation_table(50, 3, 4357, "gsl")
    )


def test_numpy_rng_matches_secactpy_without_touching_global_state():
    np.random.seed(99)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    table = permutation_table(300, 20, 5, "numpy")
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    expected = secactpy.rng.generate_inverse_permutation_table_fast(300, 20, 5)
    np.testing.assert_array_equal(table, expected)


def test_rows_are_permutations_and_cumulative():
    forward = permutation_table(64, 30, 11, inverse=False)
    assert (np.sort(forward, axis=1) == np.arange(64)).all()
    inverse = permutation_table(64, 30, 11)
    rows = np.arange(30)[:, None]
    np.testing.assert_array_equal(inverse[rows, forward], np.broadcast_to(np.arange(64), (30, 64)))


def test_disk_cache_is_keyed_by_rng(tmp_path):
    srand = permutation_table(40, 4, 3, "srand")
    gsl = permutation_table(40, 4, 3, "gsl")
    assert not np.array_equal(srand, gsl)  # secactpy's use_cache bug: same file for both
    files = sorted(p.name for p in (tmp_path / "permutations").iterdir())
    assert files == ["perm_gsl_n40_r4_s3.npy", "perm_srand_n40_r4_s3.npy"]
    np.testing.assert_array_equal(permutation_table(40, 4, 3, "gsl"), gsl)
    # A corrupt cache file is rebuilt, not trusted.
    (tmp_path / "permutations" / "perm_gsl_n40_r4_s3.npy").write_bytes(b"garbage")
    np.testing.assert_array_equal(permutation_table(40, 4, 3, "gsl"), gsl)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rng must be one of"):
        permutation_table(10, 2, rng="mt")
    with pytest.raises(ValueError, match="n_genes >= 1"):
        permutation_table(0, 2)
