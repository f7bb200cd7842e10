"""scdask.pp.scale against scanpy.pp.scale in memory: values, statistics, laziness."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import scdask
from scdask.preprocessing import log1p, normalize_total
from scdask.preprocessing._scale import scale


def _lognorm_pair(lazy: ad.AnnData, memory: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Both AnnData normalised to 1e4 and log1p'd (scdask lazily, scanpy in memory)."""
    normalize_total(lazy, target_sum=1e4)
    log1p(lazy)
    memory = memory.copy()
    sc.pp.normalize_total(memory, target_sum=1e4)
    sc.pp.log1p(memory)
    return lazy, memory


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.fixture(params=["pbmc68k", "sample"])
def pair(request, sample_lazy, sample_memory, pbmc68k_path):
    if request.param == "pbmc68k":
        return _lognorm_pair(
            scdask.read_h5ad(pbmc68k_path, chunk_size=128), ad.read_h5ad(pbmc68k_path)
        )
    return _lognorm_pair(sample_lazy(150), sample_memory)


@pytest.mark.parametrize(("zero_center", "max_value"), [(True, None), (True, 10), (False, 3)])
def test_scale_matches_scanpy(pair, zero_center, max_value, counting_scheduler):
    lazy, memory = pair
    with counting_scheduler(1) as counter:
        scale(lazy, zero_center=zero_center, max_value=max_value)
    assert counter.count == 1
    assert isinstance(lazy.X, da.Array)
    assert isinstance(lazy.X._meta, np.ndarray) == zero_center
    sc.pp.scale(memory, zero_center=zero_center, max_value=max_value)
    got = lazy.X.compute()
    assert sp.issparse(got) != zero_center
    np.testing.assert_allclose(_dense(got), _dense(memory.X), atol=1e-5, rtol=0)
    np.testing.assert_allclose(lazy.var["mean"], memory.var["mean"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(lazy.var["std"], memory.var["std"], rtol=1e-6)
    if max_value is not None:
        assert _dense(got).max() <= max_value
    assert (_dense(got) > 1).any()


def test_scale_constant_and_empty_genes_stay_unscaled():
    x = np.array([[0.0, 2.0, 1.0], [0.0, 2.0, 3.0], [0.0, 2.0, 5.0]], dtype=np.float32)
    lazy = ad.AnnData(X=da.from_array(x, chunks=(2, 3)))
    memory = ad.AnnData(X=x.copy())
    scale(lazy)
    sc.pp.scale(memory)
    np.testing.assert_array_equal(lazy.var["std"].to_numpy()[:2], [1.0, 1.0])
    np.testing.assert_allclose(lazy.X.compute(), memory.X, atol=1e-6)


def test_scale_in_memory_and_integers_copy():
    rng = np.random.default_rng(0)
    counts = sp.random(40, 12, density=0.3, format="csr", random_state=rng, dtype=np.float64)
    counts.data = np.ceil(counts.data * 9)
    ints = counts.astype(np.int64)
    memory = ad.AnnData(X=ints.copy())
    result = scale(memory, max_value=2, copy=True)
    assert memory.X.dtype == np.int64 and "mean" not in memory.var
    assert result.X.dtype == np.float64 and isinstance(result.X, np.ndarray)
    want = ad.AnnData(X=ints.astype(np.float64))
    sc.pp.scale(want, max_value=2)
    np.testing.assert_allclose(result.X, _dense(want.X), atol=1e-12)


def test_scale_layer(pair):
    lazy, _ = pair
    lazy.layers["log"] = lazy.X
    x_before = lazy.X
    scale(lazy, layer="log", zero_center=False)
    assert lazy.X is x_before
    assert sp.issparse(lazy.layers["log"]._meta)
