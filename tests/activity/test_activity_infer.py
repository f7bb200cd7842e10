"""infer(): the secactpy 0.3.1 pipelines reproduced, lazily, whatever the blocks."""

from __future__ import annotations

import warnings

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdask._compute import SHARED_PREFIX
from scdask._ops import CSRBlock
from scdask.activity import build_model, infer, to_frames
from scdask.activity._ridge import _tables
from scdask.io import write_h5ad

secactpy = pytest.importorskip("secactpy")

CELLS = slice(0, 559, 9)  # 63 cells of every type


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def _sc_ref(adata, **kwargs):
    kwargs.setdefault("cell_type_col", "cell_type")
    return _quiet(
        secactpy.secact_activity_inference_scrnaseq, adata, backend="numpy", verbose=False, **kwargs
    )


def _lazy(adata, rows_per_block):
    """The AnnData with X as a dask array of CSRBlock row blocks (what read_h5ad gives)."""
    x = CSRBlock(sp.csr_array(adata.X))
    lazy = ad.AnnData(X=da.from_array(x, chunks=(rows_per_block, x.shape[1]), asarray=False))
    lazy.obs = adata.obs.copy()
    lazy.var = adata.var.copy()
    return lazy


@pytest.fixture(scope="module")
def cells(sample):
    return sample[CELLS].copy()


# -- pseudobulk ------------------------------------------------------------------------------
def test_pseudobulk_secact_grouped(sample, secact_df, assert_frames_match):
    """The default pipeline: SecAct grouped at 0.9 inside, expanded to 1,170 sorted rows."""
    ref = _sc_ref(sample, sig_matrix=secact_df, n_rand=100, rng_method="srand")
    res = infer(
        sample, level="pseudobulk", cell_type_col="cell_type", signature=secact_df, n_rand=100
    )
    assert res.shape == (5, 1170)
    assert list(res.obs_names) == ["B", "Myeloid", "NK", "Other", "T"]
    assert_frames_match(to_frames(res), ref)


def test_pseudobulk_from_many_row_blocks_matches_secactpy(sample, assert_frames_match):
    """The per-type sums of a lazy X with many row blocks (as read_h5ad gives for an atlas)."""
    ref = _sc_ref(sample, sig_matrix="cytosig", n_rand=50, rng_method="srand")
    lazy = _lazy(sample, 100)
    assert lazy.X.numblocks[0] == 6
    res = infer(lazy, level="pseudobulk", cell_type_col="cell_type", signature="cytosig", n_rand=50)
    assert_frames_match(to_frames(res), ref)


def test_pseudobulk_cytosig_n1000_and_t_test(sample, assert_frames_match):
    for n_rand in (1000, 0):
        ref = _sc_ref(sample, sig_matrix="cytosig", n_rand=n_rand)
        res = infer(
            sample,
            level="pseudobulk",
            cell_type_col="cell_type",
            signature="cytosig",
            n_rand=n_rand,
        )
        assert res.shape == (5, 43)
        assert_frames_match(to_frames(res), ref, exact_p=n_rand > 0)


def test_pseudobulk_normalised_input_is_averaged_like_secactpy(
    sample, secact_grouped, assert_frames_match
):
    norm = sample.copy()
    x = sp.csr_matrix(norm.X, dtype=np.float64)
    x.data = np.log1p(x.data * 1.5) / 1.3  # non-integer, max < 20
    norm.X = x
    ref = _sc_ref(norm, sig_matrix=secact_grouped, is_group_sig=False, n_rand=100)
    with pytest.warns(UserWarning, match="looks normalised"):
        res = infer(
            norm,
            level="pseudobulk",
            cell_type_col="cell_type",
            signature=secact_grouped,
            group=False,
            n_rand=100,
        )
    assert_frames_match(to_frames(res), ref)


# -- single cell -----------------------------------------------------------------------------
@pytest.mark.parametrize("rng", ["srand", "gsl"])
def test_cell_level_matches_secactpy(cells, secact_grouped, rng, assert_frames_match):
    ref = _sc_ref(
        cells,
        sig_matrix=secact_grouped,
        is_group_sig=False,
        is_single_cell_level=True,
        n_rand=100,
        rng_method=rng,
    )
    res = infer(cells, signature=secact_grouped, group=False, n_rand=100, rng=rng)
    assert isinstance(res.layers["zscore"], da.Array)
    pd.testing.assert_series_equal(res.obs["cell_type"], cells.obs["cell_type"])
    assert_frames_match(to_frames(res), ref)


def test_cell_level_cytosig_grouped_sorted_genes(cells, assert_frames_match):
    ref = _sc_ref(
        cells,
        sig_matrix="cytosig",
        is_group_sig=True,
        is_single_cell_level=True,
        n_rand=100,
        sort_genes=True,
    )
    res = infer(cells, signature="cytosig", group=True, n_rand=100, gene_order="sorted")
    assert_frames_match(to_frames(res), ref)


def test_gene_order_changes_null_not_beta(cells, secact_grouped):
    kw = {"signature": secact_grouped, "group": False, "n_rand": 30}
    a = to_frames(infer(cells[:8], gene_order="expression", **kw))
    b = to_frames(infer(cells[:8], gene_order="signature", **kw))
    np.testing.assert_allclose(a["beta"], b["beta"], rtol=1e-10, atol=1e-14)
    assert not np.allclose(a["se"], b["se"])


# -- bulk ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def log_cpm_by_type(sample):
    """Genes x types log2 CPM from the real sample (what bulk profiles look like)."""
    codes = sample.obs["cell_type"].to_numpy()
    sums = pd.DataFrame(
        {t: np.asarray(sample.X[codes == t].sum(axis=0)).ravel() for t in sorted(set(codes))},
        index=sample.var_names,
    )
    return np.log2(sums / sums.sum() * 1e6 + 1)


def test_bulk_differential_profile(log_cpm_by_type, secact_grouped, assert_frames_match):
    diff = (log_cpm_by_type["Myeloid"] - log_cpm_by_type["T"]).to_frame("Myeloid_vs_T")
    ref = _quiet(
        secactpy.secact_activity_inference,
        diff,
        is_differential=True,
        sig_matrix=secact_grouped,
        is_group_sig=False,
        n_rand=300,
        backend="numpy",
        verbose=False,
    )
    res = infer(
        diff, level="bulk", differential=True, signature=secact_grouped, group=False, n_rand=300
    )
    assert list(res.obs_names) == ["Change"]
    assert_frames_match(to_frames(res), ref)


@pytest.mark.parametrize(
    ("paired", "single"), [(False, False), (False, True), (True, True), (None, None)]
)
def test_bulk_controls(log_cpm_by_type, secact_grouped, paired, single, assert_frames_match):
    expr = log_cpm_by_type[["B", "NK", "T"]]
    ctrl = log_cpm_by_type[["B", "NK", "T"]].rename(columns=str) * 0.9 + 0.1
    kw = {"sig_matrix": secact_grouped, "is_group_sig": False, "n_rand": 100, "rng_method": "gsl"}
    if paired is None:  # no control: row-mean centring
        ref = _quiet(secactpy.secact_activity_inference, expr, backend="numpy", verbose=False, **kw)
        res = infer(
            expr, level="bulk", signature=secact_grouped, group=False, n_rand=100, rng="gsl"
        )
    else:
        ref = _quiet(
            secactpy.secact_activity_inference,
            expr,
            input_profile_control=ctrl,
            is_paired=paired,
            is_single_sample_level=single,
            backend="numpy",
            verbose=False,
            **kw,
        )
        res = infer(
            expr,
            level="bulk",
            control=ctrl,
            paired=paired,
            single_sample=single,
            signature=secact_grouped,
            group=False,
            n_rand=100,
            rng="gsl",
        )
    assert_frames_match(to_frames(res), ref)


def test_bulk_errors(log_cpm_by_type, secact_grouped):
    expr = log_cpm_by_type[["B", "NK"]]
    with pytest.raises(ValueError, match="no control column"):
        infer(
            expr,
            level="bulk",
            control=expr.set_axis(["x", "y"], axis=1),
            paired=True,
            signature=secact_grouped,
            n_rand=5,
        )
    dup = pd.concat([expr, expr.iloc[:3]])
    with pytest.raises(ValueError, match="3 duplicated gene names"):
        infer(dup, level="bulk", signature=secact_grouped, n_rand=5)
    other = expr.set_axis([f"X{i}" for i in range(len(expr))])
    with pytest.raises(ValueError, match=r"only 0 of the data's 32786 genes .* 7919 genes"):
        infer(other, level="bulk", signature=secact_grouped, n_rand=5)


# -- spatial ---------------------------------------------------------------------------------
def test_spot_level_count_frame(sample, secact_grouped, counts_frame, assert_frames_match):
    spots = counts_frame(sample, slice(100, 140))
    ref = _quiet(
        secactpy.secact_activity_inference_st,
        spots,
        sig_matrix=secact_grouped,
        is_group_sig=False,
        n_rand=100,
        backend="numpy",
        scale_factor=1e4,
    )
    res = infer(
        spots, level="spot", signature=secact_grouped, group=False, n_rand=100, scale_factor=1e4
    )
    assert_frames_match(to_frames(res), ref)


# -- blocks, schedulers, graph ---------------------------------------------------------------
@pytest.fixture(scope="module")
def one_block(cells):
    return to_frames(infer(_lazy(cells, 1000), signature="cytosig", n_rand=40))


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_same_numbers_with_many_blocks(cells, one_block, scheduler):
    res = infer(_lazy(cells, 10), signature="cytosig", n_rand=40, chunk_rows=4)
    assert res.layers["beta"].numblocks[0] == 7
    with dask.config.set(scheduler=scheduler, num_workers=2):
        many = to_frames(res)
    for name in ("beta", "se", "zscore"):
        np.testing.assert_allclose(many[name], one_block[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(many["pvalue"], one_block["pvalue"])


def test_on_a_cluster_model_and_table_are_plain_keys(cells, secact_grouped, tmp_path):
    """With a Client the model and table are still keys of an ordinary graph: building
    computes and sends nothing, the graph holds no large literal, and the written result
    equals the local one (the writer runs them once for all its windows:
    tests/test_shared_work.py)."""
    distributed = pytest.importorskip("distributed")
    local = to_frames(infer(_lazy(cells, 16), signature=secact_grouped, group=False, n_rand=30))
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = infer(_lazy(cells, 16), signature=secact_grouped, group=False, n_rand=30)
        graph = res.layers["beta"].__dask_graph__()
        big = [k for k, v in dict(graph).items() if dask.sizeof.sizeof(v) > 2**20]
        # the model's task carries the signature: the only large entry
        assert [k.startswith(SHARED_PREFIX + "build_model") for k in big] == [True], big
        assert not [v for v in dict(graph).values() if isinstance(v, distributed.Future)]
        assert client.who_has() == {}  # building ran and sent nothing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_h5ad(res, tmp_path / "cells.h5ad")
        # the model's task went to the cluster once, not with each window of blocks
        large = [w for w in caught if "Sending large graph" in str(w.message)]
        assert len(large) <= 1, [str(w.message) for w in large]
    got = ad.read_h5ad(tmp_path / "cells.h5ad")
    for name in ("beta", "se", "zscore"):
        np.testing.assert_allclose(got.layers[name].T, local[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(got.layers["pvalue"].T, local["pvalue"])


def _count_tasks(arrays, func) -> int:
    """Tasks of the merged graph of ``arrays`` whose key was made from ``func``'s name."""
    graph = dask.base.collections_to_expr(arrays).__dask_graph__()
    names = [key[0] if isinstance(key, tuple) else key for key in graph]
    shared = SHARED_PREFIX + func.__name__.strip("_")  # see scdask._compute.shared
    return sum(name.rsplit("-", 1)[0] == shared for name in names)


@pytest.mark.parametrize("rows_per_block", [63, 5])
def test_projection_and_table_built_once(cells, secact_grouped, rows_per_block):
    res = infer(_lazy(cells, rows_per_block), signature=secact_grouped, group=False, n_rand=20)
    arrays = [res.layers[name] for name in ("beta", "se", "zscore", "pvalue")]
    assert arrays[0].numblocks[0] == -(-63 // rows_per_block)
    assert _count_tasks(arrays, build_model) == 1
    assert _count_tasks(arrays, _tables) == 1
    calls = []

    def counting_build(*args, **kwargs):
        calls.append(1)
        return build_model(*args, **kwargs)

    import scdask.activity._infer as infer_module

    original = infer_module.build_model
    infer_module.build_model = counting_build
    try:
        res = infer(_lazy(cells, rows_per_block), signature=secact_grouped, group=False, n_rand=5)
        to_frames(res)
    finally:
        infer_module.build_model = original
    assert len(calls) == 1


def test_lazy_until_asked(sample_path, secact_grouped, counting_scheduler):
    """From a path: two passes of statistics (gene totals for duplicated symbols, gene means),
    then nothing until the result is computed."""
    with counting_scheduler(max_computes=2) as counter:
        res = infer(sample_path, signature=secact_grouped, group=False, n_rand=5)
    assert counter.count == 2
    assert isinstance(res.X, da.Array) and res.shape == (559, 657)


def test_path_input_matches_in_memory(sample, sample_path, secact_grouped):
    kw = {"signature": secact_grouped, "group": False, "n_rand": 5}
    a = to_frames(infer(sample_path, **kw))
    b = to_frames(infer(sample, **kw))
    for name in ("beta", "zscore"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(a["pvalue"], b["pvalue"])


def test_float32_zscores_close(cells, secact_grouped):
    kw = {"signature": secact_grouped, "group": False, "n_rand": 100}
    z64 = to_frames(infer(cells[:30], **kw))["zscore"]
    res = infer(cells[:30], dtype=np.float32, **kw)
    z32 = to_frames(res)["zscore"]
    assert res.uns["activity"]["dtype"] == "float32"
    np.testing.assert_allclose(z32, z64, rtol=0, atol=1e-4)
    assert np.abs(z32.to_numpy() - z64.to_numpy()).max() > 0  # really single precision


# -- failure modes of the reference, made explicit -------------------------------------------
def test_empty_cell_gets_neutral_output_and_changes_nothing_else(cells, secact_grouped):
    kw = {"signature": secact_grouped, "group": False, "n_rand": 30}
    base = to_frames(infer(cells[:12], **kw))
    x = sp.vstack([sp.csr_matrix(cells.X[:12]), sp.csr_matrix((1, cells.n_vars))]).tocsr()
    with_empty = ad.AnnData(X=x, var=cells.var.copy())
    with_empty.obs_names = [*cells.obs_names[:12], "empty"]
    with pytest.warns(UserWarning, match="1 cells have no counts"):
        res = infer(with_empty, **kw)
    frames = to_frames(res)
    assert res.uns["activity"]["n_empty"] == 1
    for name in ("beta", "se", "zscore"):
        assert (frames[name]["empty"] == 0).all()
        np.testing.assert_allclose(frames[name].iloc[:, :12], base[name], rtol=1e-12, atol=1e-14)
    assert (frames["pvalue"]["empty"] == 1).all()
    np.testing.assert_array_equal(frames["pvalue"].iloc[:, :12], base["pvalue"])


def test_normalised_input_rejected_at_cell_level(cells, secact_grouped):
    norm = cells.copy()
    norm.X = sp.csr_matrix(np.log1p(norm.X.toarray()))
    with pytest.raises(ValueError, match=r"needs counts, but X holds .* not whole"):
        infer(norm, signature=secact_grouped, n_rand=5)


def test_no_overlap_and_bad_arguments(cells, secact_grouped):
    other = cells.copy()
    other.var_names = [f"NOPE{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="only 0 of the data's"):
        infer(other, signature=secact_grouped, n_rand=5)
    with pytest.raises(ValueError, match="level must be one of"):
        infer(cells, level="tissue")
    with pytest.raises(ValueError, match="needs cell_type_col"):
        infer(cells, level="pseudobulk", signature=secact_grouped)
    with pytest.raises(ValueError, match="dtype must be"):
        infer(cells, dtype=np.float16)
    with pytest.raises(ValueError, match="apply to level='bulk' only"):
        infer(cells, control=pd.DataFrame(), signature=secact_grouped)
    with pytest.raises(ValueError, match="per-type aggregation of spots"):
        infer(cells, level="spot", cell_type_col="cell_type", signature=secact_grouped)


def test_duplicated_symbols_keep_highest_mean_like_secactpy(cells, assert_frames_match):
    """Two columns that normalise to one symbol: both tools keep the higher-mean one."""
    sub = cells[:20].copy()
    cyto = secactpy.load_signature("cytosig").index
    means = np.asarray(sub.X.mean(axis=0)).ravel()
    names = list(sub.var_names)
    in_sig = [i for i, g in enumerate(names) if g in cyto and means[i] > 0]
    low, high = sorted(in_sig[:2], key=lambda i: means[i])
    names[high] = names[low].lower() + ".2"  # "GENE" and "gene.2" both become "GENE"
    sub.var_names = names
    ref = _sc_ref(sub, sig_matrix="cytosig", is_single_cell_level=True, n_rand=30)
    res = infer(sub, signature="cytosig", n_rand=30)
    assert_frames_match(to_frames(res), ref)
