"""Shared work runs once on every user path, and lazy results are plain graphs.

The per-block ridge kernel is counted on each path a user takes from a lazy cell-level
result (to_frames, the writers, a plot, the command line): every block runs once. The
shared operands (model, permutation table) are ordinary graph keys: one per compute, once
for all the windows of a streaming write, and a result built under a Client computes after
the Client is gone.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter

import anndata as ad
import dask
import numpy as np
import pytest

import scdask
from scdask import activity
from scdask._compute import SHARED_PREFIX, shared
from scdask.activity import _ridge
from scdask.cli import main


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the ridge kernel's runs (patched before the graph is built)."""
    calls = Counter()
    lock = threading.Lock()
    real = _ridge.ridge_block

    def counted(block, *args, **kwargs):
        with lock:
            calls["ridge_block"] += 1
        return real(block, *args, **kwargs)

    monkeypatch.setattr(_ridge, "ridge_block", counted)
    return calls


def _lazy_result(chunk_size=200):
    counts = scdask.read_h5ad(scdask.datasets.sample_path(), chunk_size=chunk_size)
    return activity.infer(counts, level="cell", signature="cytosig", n_rand=20)


@pytest.mark.parametrize(
    "path",
    ["to_frames", "write_h5ad", "write_zarr", "volcano", "embedding", "dask.compute"],
)
def test_every_block_runs_once_per_user_path(path, kernel_calls, tmp_path):
    res = _lazy_result()
    n_blocks = res.layers["zscore"].numblocks[0]
    assert n_blocks > 1 and kernel_calls["ridge_block"] == 0  # building ran nothing
    with dask.config.set(scheduler="threads"):
        if path == "to_frames":
            frames = activity.to_frames(res)
            assert set(frames) == {"beta", "se", "zscore", "pvalue"}
        elif path in ("write_h5ad", "write_zarr"):
            getattr(scdask, path)(res, tmp_path / "out")
        elif path == "volcano":
            scdask.plotting.volcano(
                res.layers["zscore"][3], res.layers["pvalue"][3], names=res.var_names
            )
        elif path == "embedding":
            cells = scdask.datasets.sample()
            cells.obsm["X_pca"] = np.random.default_rng(0).normal(size=(cells.n_obs, 2))
            scdask.plotting.embedding(
                cells, basis="pca", color=res.var_names[0], values=res, layer="zscore"
            )
        else:
            dask.compute(*(res.layers[name] for name in activity.STATS))
    # a plot needs the block of one cell, or one column of every block
    expected = 1 if path == "volcano" else n_blocks
    assert kernel_calls["ridge_block"] == expected


def test_the_command_line_runs_each_block_once(kernel_calls, tmp_path):
    out = tmp_path / "act.h5ad"
    argv = ["activity", str(scdask.datasets.sample_path()), str(out), "--level", "cell"]
    argv += ["--signature", "cytosig", "--n-rand", "20", "--launcher", "none"]
    assert main(argv) == 0
    ran = kernel_calls["ridge_block"]
    # the same result built here, as the command builds it (blocks from the file, tasks split
    # per thread), has as many blocks as the kernel ran
    assert ran == _lazy_result(chunk_size="auto").layers["zscore"].numblocks[0]


def test_shared_operands_are_graph_keys_and_run_once_for_all_windows(tmp_path):
    log = tmp_path / "runs.txt"  # a file: tasks may run on a copy of this function
    log.write_text("")

    def model(n):
        with log.open("a") as f:
            f.write("run\n")
        return np.arange(n, dtype=np.float64)

    def runs():
        return len(log.read_text().splitlines())

    operand = shared(model, 4)
    assert operand.key.startswith(SHARED_PREFIX) and runs() == 0  # nothing ran
    x = dask.array.ones((40, 4), chunks=(5, 4))
    y = x.map_blocks(lambda b, m: b * m, operand, dtype=np.float64, meta=np.empty((0, 0)))
    with dask.config.set(scheduler="threads"):
        scdask.write_h5ad(ad.AnnData(y), tmp_path / "y.h5ad")
    assert runs() == 1  # 8 blocks in windows of a few: one run
    np.testing.assert_array_equal(
        scdask.read_h5ad(tmp_path / "y.h5ad").X.compute()[0], [0, 1, 2, 3]
    )

    from distributed import Client

    log.write_text("")
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        scdask.write_h5ad(ad.AnnData(y), tmp_path / "z.h5ad")
    assert runs() == 1


@pytest.mark.slow
def test_a_result_built_under_a_client_computes_after_it_closes():
    with dask.config.set(scheduler="threads"):
        expected = activity.to_frames(_lazy_result())
    client = scdask.launch.local(n_workers=2, threads_per_worker=1)
    try:
        res = _lazy_result()
        graph = dict(res.layers["zscore"].__dask_graph__())
        assert not [k for k, v in graph.items() if type(v).__name__ == "Future"]
    finally:
        client.close()
    with dask.config.set(scheduler="threads"):
        frames = activity.to_frames(res)
    for name, frame in expected.items():
        np.testing.assert_array_equal(frames[name].to_numpy(), frame.to_numpy())


def test_in_memory_input_goes_to_the_cluster_once():
    """An in-memory matrix is data in every graph made from it; under a Client it is sent
    once for the recipe's four passes, not with each."""
    import scipy.sparse as sp
    from distributed import Client

    rng = np.random.default_rng(0)
    x = sp.random(20_000, 2_000, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.ceil(x.data * 20)
    adata = ad.AnnData(x)
    adata.var_names = [f"MT-{i}" if i < 20 else f"G{i}" for i in range(x.shape[1])]
    expected = scdask.pp.recipe(adata, n_top_genes=200, n_comps=5, copy=True, verbose=False)
    with (
        Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        got = scdask.pp.recipe(adata, n_top_genes=200, n_comps=5, copy=True, verbose=False)
    large = [str(w.message) for w in caught if "Sending large graph" in str(w.message)]
    assert large == []
    np.testing.assert_allclose(got.obsm["X_pca"], expected.obsm["X_pca"], rtol=1e-5, atol=1e-5)
