"""The synthetic atlas generator: format, realism, determinism, atomicity, memory."""

from __future__ import annotations

import subprocess
import sys

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from scdask.datasets import _synthetic, sample, synthetic

N_CELLS = 5_000
N_GENES = 5_000


@pytest.fixture(scope="module")
def real():
    return sample()


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory):
    return synthetic(tmp_path_factory.mktemp("atlas") / "atlas.h5ad", N_CELLS, n_genes=N_GENES)


@pytest.fixture(scope="module")
def atlas(atlas_path):
    return anndata.read_h5ad(atlas_path)


def _rows_strictly_sorted(x: sp.csr_matrix) -> bool:
    step = np.diff(x.indices)
    same_row = np.ones(len(step), dtype=bool)
    row_starts = x.indptr[1:-1]
    same_row[row_starts[(row_starts > 0) & (row_starts < x.nnz)] - 1] = False
    return bool((step[same_row] > 0).all())


def test_file_is_an_anndata_csr_h5ad(atlas_path, atlas):
    assert atlas.shape == (N_CELLS, N_GENES)
    assert isinstance(atlas.X, sp.csr_matrix)
    with h5py.File(atlas_path, "r") as f:
        assert f.attrs["encoding-type"] == "anndata"
        assert f.attrs["encoding-version"] == "0.1.0"
        x = f["X"]
        assert x.attrs["encoding-type"] == "csr_matrix"
        assert x.attrs["encoding-version"] == "0.1.0"
        assert tuple(x.attrs["shape"]) == (N_CELLS, N_GENES)
        assert x["data"].dtype == np.float32
        assert x["indices"].dtype == np.int32
        assert x["indptr"].dtype == np.int64
    assert list(atlas.obs_names[:3]) == ["cell0", "cell1", "cell2"]
    assert atlas.obs_names[-1] == f"cell{N_CELLS - 1}"
    assert isinstance(atlas.obs["cell_type"].dtype, pd.CategoricalDtype)


def test_counts_are_non_negative_integers_sorted_per_row(atlas):
    values = atlas.X.data
    assert values.min() > 0  # explicit zeros are never stored
    np.testing.assert_array_equal(values, np.round(values))
    assert _rows_strictly_sorted(atlas.X)
    assert atlas.X.indices.max() < N_GENES


def test_genes_are_real_symbols_with_all_mt_and_top_genes(atlas, real):
    names = atlas.var_names
    assert names.is_unique
    assert set(names) <= set(real.var_names)
    # Kept in the sample's order.
    position = real.var_names.get_indexer(names)
    assert (np.diff(position) > 0).all()
    mt = real.var_names[real.var_names.str.startswith("MT-")]
    assert len(mt) == 30
    assert set(mt) <= set(names)
    assert atlas[:, mt].X.sum() > 0
    top = real.var_names[np.argsort(-np.asarray(real.X.sum(axis=0)).ravel())[:500]]
    assert set(top) <= set(names)


def test_expression_resembles_the_real_sample(atlas, real):
    reference = real[:, atlas.var_names]
    mean_syn = np.asarray(atlas.X.mean(axis=0)).ravel()
    mean_real = np.asarray(reference.X.mean(axis=0)).ravel()
    detected = mean_real > 0
    assert spearmanr(mean_syn[detected], mean_real[detected]).statistic > 0.9
    density_syn = atlas.X.nnz / np.prod(atlas.shape)
    density_real = reference.X.nnz / np.prod(reference.shape)
    assert density_syn == pytest.approx(density_real, rel=0.25)
    # Overdispersion: squared coefficient of variation of well-expressed genes within 2x.
    well = mean_real > 0.5
    var_syn = np.asarray(atlas.X.multiply(atlas.X).mean(axis=0)).ravel() - mean_syn**2
    var_real = np.asarray(reference.X.multiply(reference.X).mean(axis=0)).ravel() - mean_real**2
    ratio = (var_syn[well] / mean_syn[well] ** 2) / (var_real[well] / mean_real[well] ** 2)
    assert 0.5 < np.median(ratio) < 2.0


def test_cell_types_and_library_sizes_follow_the_sample(atlas, real):
    freq_syn = atlas.obs["cell_type"].value_counts(normalize=True)
    freq_real = real.obs["cell_type"].value_counts(normalize=True)
    assert set(freq_syn.index) == set(freq_real.index)
    for name in freq_real.index:
        assert freq_syn[name] == pytest.approx(freq_real[name], abs=0.03)
    totals_syn = np.asarray(atlas.X.sum(axis=1)).ravel()
    totals_real = np.asarray(real[:, atlas.var_names].X.sum(axis=1)).ravel()
    assert np.median(totals_syn) == pytest.approx(np.median(totals_real), rel=0.2)
    assert totals_syn.max() < 2 * totals_real.max()
    # Type-specific profiles: LYZ is a myeloid marker in the synthetic data too.
    lyz = np.asarray(atlas[:, "LYZ"].X.todense()).ravel()
    myeloid = (atlas.obs["cell_type"] == "Myeloid").to_numpy()
    assert lyz[myeloid].mean() > 10 * lyz[~myeloid].mean()


def test_more_genes_than_the_sample_adds_synth_genes(tmp_path):
    n_genes = 32_786 + 14
    adata = anndata.read_h5ad(synthetic(tmp_path / "wide.h5ad", 300, n_genes=n_genes))
    assert adata.shape == (300, n_genes)
    assert list(adata.var_names[-14:]) == [f"SYNTH{i}" for i in range(1, 15)]
    real = sample()
    assert (adata.var_names[:-14] == real.var_names).all()
    # Genes never seen in the sample are seen in about 1 cell in 1,000; the SYNTH genes too.
    seen = np.asarray(real.X.sum(axis=0)).ravel() > 0
    detection = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    assert 2e-4 < detection[:-14][~seen].mean() < 5e-3
    assert detection[:-14][seen].mean() > 10 * detection[:-14][~seen].mean()
    assert detection[-14:].sum() > 0


def test_few_genes_are_the_mt_genes(tmp_path):
    adata = anndata.read_h5ad(synthetic(tmp_path / "narrow.h5ad", 300, n_genes=5))
    assert adata.shape == (300, 5)
    assert adata.var_names.str.startswith("MT-").all()
    assert (np.asarray(adata.X.sum(axis=0)).ravel() > 0).all()


def _x_arrays(path):
    with h5py.File(path, "r") as f:
        return {key: f["X"][key][()] for key in ("data", "indices", "indptr")} | {
            "cell_type": f["obs/cell_type/codes"][()]
        }


def test_same_seed_same_file_whatever_the_chunking(tmp_path):
    a = _x_arrays(synthetic(tmp_path / "a.h5ad", 700, n_genes=2_000, seed=3, chunk_cells=1))
    b = _x_arrays(synthetic(tmp_path / "b.h5ad", 700, n_genes=2_000, seed=3, chunk_cells=5_000))
    c = _x_arrays(synthetic(tmp_path / "c.h5ad", 700, n_genes=2_000, seed=4))
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert a["data"].tobytes() != c["data"].tobytes()
    assert not np.array_equal(a["indptr"], c["indptr"])


@pytest.mark.slow
def test_worker_processes_write_the_same_file(tmp_path):
    one = synthetic(tmp_path / "one.h5ad", 700, n_genes=1_000, seed=5, chunk_cells=256)
    two = synthetic(tmp_path / "two.h5ad", 700, n_genes=1_000, seed=5, chunk_cells=256, n_jobs=2)
    a, b = _x_arrays(one), _x_arrays(two)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_failure_mid_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "atlas.h5ad"
    target.write_bytes(b"previous content")
    draw = _synthetic._draw_block
    calls = []

    def failing_draw(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        return draw(*args, **kwargs)

    monkeypatch.setattr(_synthetic, "_draw_block", failing_draw)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthetic(target, 2_000, n_genes=1_000, chunk_cells=256)
    assert len(calls) == 2
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.h5ad"]


def test_failure_without_previous_file_leaves_no_file(tmp_path, monkeypatch):
    def failing_draw(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_synthetic, "_draw_block", failing_draw)
    with pytest.raises(KeyboardInterrupt):
        synthetic(tmp_path / "atlas.h5ad", 500, n_genes=1_000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("n_cells", "kwargs"),
    [
        (0, {}),
        (10, {"n_genes": 0}),
        (10, {"n_genes": 2**31}),
        (10, {"seed": -1}),
        (10, {"chunk_cells": 0}),
        (10, {"n_jobs": 0}),
    ],
)
def test_invalid_arguments_raise(tmp_path, n_cells, kwargs):
    with pytest.raises(ValueError):
        synthetic(tmp_path / "x.h5ad", n_cells, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("p", [1e-3, 0.3, 0.9, 0.99])
def test_logseries_sampler_matches_the_exact_law(p):
    draws = _synthetic._logseries(np.random.default_rng(0), np.full(200_000, p))
    k = np.arange(1, 8)
    pmf = -(p**k) / (k * np.log1p(-p))
    observed = np.array([(draws == i).mean() for i in k])
    np.testing.assert_allclose(observed, pmf, atol=0.005)
    assert draws.mean() == pytest.approx(-p / ((1 - p) * np.log1p(-p)), rel=0.03)


_PEAK_RSS_SCRIPT = """
import resource, sys
from scdask.datasets import synthetic
synthetic(sys.argv[1], int(sys.argv[2]), n_genes=500, chunk_cells=256)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_cells(tmp_path):
    def peak_kib(n_cells: int) -> int:
        path = tmp_path / f"atlas{n_cells}.h5ad"
        run = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path), str(n_cells)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(run.stdout.strip())

    small, large = peak_kib(6_000), peak_kib(24_000)
    # Holding X would add ~18,000 cells x ~370 non-zeros x 8 bytes = ~54 MB; obs adds ~2 MB.
    assert (large - small) / 1024 < 25, (small, large)


def test_counts_follow_the_fitted_negative_binomial_exactly():
    # Replays each block's first draws (types, library sizes) to know every cell's mean.
    model = _synthetic._fit(3_000)
    n_genes = len(model.gene_names)
    frac = np.zeros((len(model.type_names), n_genes))
    frac[:, model.dense_cols] = model.dense_frac
    frac[:, model.sparse_cols] = model.sparse_frac.reshape(len(model.type_names), -1)
    size = np.zeros(n_genes)
    size[model.dense_cols] = model.dense_size
    size[model.sparse_cols] = model.sparse_size
    counts, means = [], []
    for block in range(8):
        rng = np.random.default_rng([7, block])
        types = rng.choice(len(model.type_names), size=256, p=model.type_freq)
        lib = _synthetic._draw_library_sizes(model, rng, types)
        codes, row_nnz, indices, data = _synthetic._draw_block(model, 7, block, 256)
        np.testing.assert_array_equal(codes, types)
        indptr = np.concatenate([[0], np.cumsum(row_nnz)])
        counts.append(sp.csr_matrix((data, indices, indptr), shape=(256, n_genes)).toarray())
        means.append(lib[:, None] * frac[types])
    x, mean = np.vstack(counts), np.vstack(means)
    variance = mean + mean**2 / size
    for cols in (model.dense_cols, model.sparse_cols):
        assert len(cols) > 300
        x_part, mean_part, size_part = x[:, cols], mean[:, cols], size[cols]
        assert x_part.sum() / mean_part.sum() == pytest.approx(1.0, abs=0.02)
        z2 = (x_part - mean_part) ** 2 / variance[:, cols]
        assert z2.mean() == pytest.approx(1.0, abs=0.05)
        p_zero = (size_part / (size_part + mean_part)) ** size_part
        assert (x_part == 0).mean() == pytest.approx(p_zero.mean(), abs=0.005)
