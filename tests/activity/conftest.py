"""Shared inputs for the activity tests: the real sample and the SecAct signature, once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

STATS = ("beta", "se", "zscore", "pvalue")


@pytest.fixture(scope="session")
def sample():
    from scdask.datasets import sample

    return sample()


@pytest.fixture(scope="session")
def secact_df():
    """secactpy's own SecAct loader: the reference input for every SecAct comparison."""
    secactpy = pytest.importorskip("secactpy")
    return secactpy.load_signature("secact")


@pytest.fixture(scope="session")
def secact_grouped(secact_df):
    """SecAct grouped at 0.9 (657 columns); passed to both tools with grouping off."""
    from scdask.activity import group_signatures

    return group_signatures(secact_df, 0.9)


def _assert_frames_match(
    mine: dict, ref: dict, *, rtol: float = 1e-10, exact_p: bool = True
) -> None:
    """beta/se/zscore to ``rtol`` (relative to each statistic's scale) and identical
    permutation p-values (``exact_p``; t-test p-values are continuous), with the same row
    and column labels in the same order."""
    for name in STATS:
        a, b = mine[name], ref[name]
        assert list(a.index) == list(b.index), name
        assert list(a.columns) == list(map(str, b.columns)), name
        a, b = a.to_numpy(), b.to_numpy(dtype=np.float64)
        if name == "pvalue" and exact_p:
            np.testing.assert_array_equal(a, b)
        else:
            scale = np.abs(b).max()
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=name)


def _counts_frame(adata, rows) -> pd.DataFrame:
    """Genes x samples count frame of some rows of an in-memory AnnData."""
    x = adata.X[rows]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return pd.DataFrame(
        x.T.astype(np.float64), index=adata.var_names, columns=adata.obs_names[rows]
    )


@pytest.fixture
def assert_frames_match():
    return _assert_frames_match


@pytest.fixture
def counts_frame():
    return _counts_frame
