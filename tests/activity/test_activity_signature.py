"""Signatures: loading, grouping and expansion as secactpy does them."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

from scdask.activity import expand_rows, group_signatures, load_signature
from scdask.activity._signature import _load_bundled

secactpy = pytest.importorskip("secactpy")


def test_cytosig_equals_secactpy():
    mine = load_signature("CytoSig")
    ref = secactpy.load_signature("cytosig")
    pd.testing.assert_frame_equal(mine, ref, check_names=False)
    assert mine.shape == (4881, 43)


def test_secact_equals_secactpy(secact_df):
    mine = load_signature("secact")
    pd.testing.assert_frame_equal(mine, secact_df, check_names=False)
    mine.iloc[0, 0] = 99.0  # callers get their own copy
    assert load_signature("secact").iloc[0, 0] != 99.0


def test_binary_cache(tmp_path):
    _load_bundled.cache_clear()
    try:
        with dask.config.set({"scdask.cache-dir": str(tmp_path)}):
            first = load_signature("cytosig")
            assert len(list((tmp_path / "signatures").glob("CytoSig.tsv.gz-*.npz"))) == 1
            _load_bundled.cache_clear()
            second = load_signature("cytosig")  # from the binary copy
    finally:
        _load_bundled.cache_clear()
    pd.testing.assert_frame_equal(second, first)


def test_file_and_frame_inputs(tmp_path):
    frame = pd.DataFrame({"P1": [1.0, np.nan], "P2": [0.5, 2.0]}, index=["G1", "G2"])
    path = tmp_path / "sig.tsv"
    frame.to_csv(path, sep="\t")
    loaded = load_signature(path)
    assert loaded.loc["G2", "P1"] == 0.0 and list(loaded.columns) == ["P1", "P2"]
    pd.testing.assert_frame_equal(load_signature(frame), loaded, check_names=False)
    with pytest.raises(FileNotFoundError, match="neither one of"):
        load_signature(tmp_path / "missing.tsv")


def test_group_matches_secactpy_cytosig():
    sig = load_signature("cytosig")
    pd.testing.assert_frame_equal(group_signatures(sig), secactpy.group_signatures(sig, 0.9))


def test_group_matches_secactpy_on_secact_subset(secact_df):
    sub = secact_df.iloc[:, :260]
    for cor in (0.9, 0.7):
        mine = group_signatures(sub, cor)
        ref = secactpy.group_signatures(sub, cor)
        assert list(mine.columns) == list(ref.columns)
        np.testing.assert_allclose(mine.to_numpy(), ref.to_numpy(), rtol=1e-15, atol=0)
    assert any("|" in c for c in group_signatures(sub, 0.7).columns)


def test_full_secact_grouping_shape(secact_grouped):
    assert secact_grouped.shape == (7919, 657)
    sizes = [len(c.split("|")) for c in secact_grouped.columns]
    assert sum(sizes) == 1170 and max(sizes) == 31 and sum(s > 1 for s in sizes) == 155


def test_expand_rows_matches_secactpy():
    frame = pd.DataFrame(
        np.arange(8.0).reshape(4, 2), index=["C1orf54|C1QA", "B", "Z|A", "b"], columns=["x", "y"]
    )
    ref = secactpy.expand_rows(frame)
    ref = ref.loc[sorted(ref.index)]
    pd.testing.assert_frame_equal(expand_rows(frame), ref)
    assert list(expand_rows(frame).index) == ["A", "B", "C1QA", "C1orf54", "Z", "b"]
    assert list(expand_rows(frame, sort=False).index) == ["C1orf54", "C1QA", "B", "Z", "A", "b"]
