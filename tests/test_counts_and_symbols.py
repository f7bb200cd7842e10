"""Where the counts and the gene symbols are: ``layer=``/``use_raw=``/``gene_symbols=`` on
every step, the CELLxGENE layout detected by ``scdask run`` and the commands, ``gene_map``
and case-folded (mouse) symbols in activity, and pseudobulk over several obs columns."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

import scdask
from scdask._pipeline import _figures, detect_matrix, load_config
from scdask.activity import infer
from scdask.cli import main

QC_COLUMNS = ["n_genes_by_counts", "total_counts", "total_counts_mt", "pct_counts_mt", "n_genes"]


# -- inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    """The bundled 559 real cells, counts in X (float32 CSR), symbols as var_names."""
    return scdask.datasets.sample()


def _lognorm(x) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1e4 / totals) @ x).log1p().astype(np.float32)


def _cellxgene(counts: ad.AnnData) -> ad.AnnData:
    """CELLxGENE's layout: Ensembl IDs as var_names, symbols in var['feature_name'],
    normalised X, counts in raw.X (raw.var: the same genes, without the symbols)."""
    ids = pd.Index([f"ENSG{i:011d}" for i in range(counts.n_vars)])
    var = pd.DataFrame({"feature_name": counts.var_names.to_numpy()}, index=ids)
    out = ad.AnnData(_lognorm(counts.X), obs=counts.obs.copy(), var=var)
    out.raw = ad.AnnData(sp.csr_matrix(counts.X), obs=counts.obs[[]], var=pd.DataFrame(index=ids))
    return out


@pytest.fixture(scope="module")
def files(counts, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("layouts")
    paths = {"plain": folder / "plain.h5ad", "cellxgene": folder / "cellxgene.h5ad"}
    counts.write_h5ad(paths["plain"])
    _cellxgene(counts).write_h5ad(paths["cellxgene"])
    return paths


def _run(path, out, capsys, **extra) -> tuple[int, str]:
    cfg = {
        "input": str(path),
        "output": str(out),
        "launcher": {"kind": "none"},
        "plots": False,
        "preprocess": {"n_top_genes": 300, "n_comps": 10, "umap": False},
        "activity": {"levels": ["pseudobulk"], "n_rand": 10},
        **extra,
    }
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    code = main(["run", str(cfg_path)])
    return code, capsys.readouterr().err


# -- (a) a CELLxGENE file gives what its counts give --------------------------------------------
@pytest.mark.slow
def test_run_detects_the_cellxgene_layout(files, tmp_path, capsys):
    code, err = _run(files["plain"], tmp_path / "plain", capsys)
    assert code == 0, err
    assert "[scdask] counts from X; gene symbols from var_names" in err.splitlines()
    code, err = _run(files["cellxgene"], tmp_path / "cxg", capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("[scdask] counts from")]
    assert lines == [
        "[scdask] counts from raw.X (X is not counts); gene symbols from "
        "var['feature_name'] (var_names are Ensembl IDs)"
    ]

    plain = ad.read_h5ad(tmp_path / "plain" / "cells.h5ad")
    cxg = ad.read_h5ad(tmp_path / "cxg" / "cells.h5ad")
    assert list(cxg.obs_names) == list(plain.obs_names)
    for column in QC_COLUMNS:
        np.testing.assert_array_equal(cxg.obs[column], plain.obs[column], err_msg=column)
    assert (plain.obs["pct_counts_mt"] > 0).mean() > 0.9
    hvg_plain = set(plain.var_names[plain.var["highly_variable"]])
    hvg_cxg = set(cxg.var["feature_name"][cxg.var["highly_variable"]])
    assert len(hvg_plain) == 300 and hvg_cxg == hvg_plain
    np.testing.assert_allclose(cxg.obsm["X_pca"], plain.obsm["X_pca"], rtol=0, atol=1e-6)

    act_plain = ad.read_h5ad(tmp_path / "plain" / "activity_pseudobulk.h5ad")
    act_cxg = ad.read_h5ad(tmp_path / "cxg" / "activity_pseudobulk.h5ad")
    assert list(act_cxg.obs_names) == list(act_plain.obs_names)
    assert list(act_cxg.var_names) == list(act_plain.var_names)
    for layer in ("beta", "se", "zscore", "pvalue"):
        np.testing.assert_allclose(
            act_cxg.layers[layer], act_plain.layers[layer], rtol=0, atol=1e-10, err_msg=layer
        )


def test_the_config_overrides_the_detection(files, tmp_path, capsys):
    code, err = _run(files["cellxgene"], tmp_path / "x", capsys, matrix={"use_raw": False})
    assert code == 2
    assert (
        "[scdask] counts from X (set by the config); gene symbols from var['feature_name']" in err
    )
    assert "recipe needs counts, but X holds" in err and "use_raw=True" in err

    adata = scdask.read_h5ad(files["cellxgene"])
    given = {"use_raw": True, "gene_symbols": "feature_name"}
    where, line = detect_matrix(adata, files["cellxgene"], given)
    assert where == {"layer": None, "use_raw": True, "gene_symbols": "feature_name"}
    assert line == (
        "[scdask] counts from raw.X (set by the config); gene symbols from "
        "var['feature_name'] (set by the config)"
    )
    with pytest.raises(scdask.InputError, match="keep one of them"):
        load_config({"matrix": {"layer": "counts", "use_raw": True}})
    cfg = load_config({"matrix": {"layer": "counts"}, "activity": {"gene_map": None}})
    assert cfg["matrix"] == {"layer": "counts", "use_raw": None, "gene_symbols": None}
    with pytest.raises(scdask.InputError, match=r"activity\.gene_map: no such file"):
        load_config({"activity": {"gene_map": str(tmp_path / "missing.tsv")}})


def test_detection_finds_a_counts_layer_and_leaves_counts_alone(counts, tmp_path):
    holder = ad.AnnData(_lognorm(counts.X), obs=counts.obs.copy(), var=counts.var.copy())
    holder.layers["raw_counts"] = sp.csr_matrix(counts.X)
    holder.write_h5ad(tmp_path / "layer.h5ad")
    where, line = detect_matrix(scdask.read_h5ad(tmp_path / "layer.h5ad"), tmp_path / "layer.h5ad")
    assert where == {"layer": "raw_counts", "use_raw": False, "gene_symbols": None}
    assert line.startswith("[scdask] counts from layers['raw_counts'] (X is not counts)")
    ad.AnnData(holder.X, obs=holder.obs, var=holder.var).write_h5ad(tmp_path / "norm.h5ad")
    where, line = detect_matrix(scdask.read_h5ad(tmp_path / "norm.h5ad"), tmp_path / "norm.h5ad")
    assert where["layer"] is None and where["use_raw"] is False
    assert "X is not counts, and no layer named like counts nor raw.X is" in line


def test_the_commands_detect_and_take_options(files, tmp_path, capsys):
    act = ["--level", "pseudobulk", "--signature", "cytosig", "--n-rand", "10"]
    act += ["--launcher", "none"]
    assert main(["activity", str(files["plain"]), str(tmp_path / "p.h5ad"), *act]) == 0
    assert main(["activity", str(files["cellxgene"]), str(tmp_path / "c.h5ad"), *act]) == 0
    err = capsys.readouterr().err
    assert err.count("[scdask] counts from") == 2
    assert "[scdask] counts from raw.X (X is not counts)" in err
    p, c = ad.read_h5ad(tmp_path / "p.h5ad"), ad.read_h5ad(tmp_path / "c.h5ad")
    np.testing.assert_allclose(c.layers["zscore"], p.layers["zscore"], rtol=0, atol=1e-10)

    out = tmp_path / "x.h5ad"
    cell = ["--level", "cell", *act[2:], "--no-use-raw"]  # pseudobulk would warn, not refuse
    assert main(["activity", str(files["cellxgene"]), str(out), *cell]) == 2
    err = capsys.readouterr().err
    assert "counts from X (set by the command line)" in err and not out.exists()
    both = ["--layer", "counts", "--use-raw"]
    assert main(["preprocess", str(files["cellxgene"]), str(out), *both]) == 2
    assert "keep one of them" in capsys.readouterr().err


# -- (b) layer= and use_raw= on every step ------------------------------------------------------
@pytest.fixture(scope="module")
def small(counts) -> ad.AnnData:
    """400 cells x the 400 genes with the most counts (in memory), counts in X."""
    totals = np.asarray(counts.X.sum(axis=0)).ravel()
    genes = np.sort(np.argsort(-totals, kind="stable")[:400])
    out = counts[:400, genes].copy()
    out.X = sp.csr_matrix(out.X)
    return out


def _holder(small: ad.AnnData, where: str) -> ad.AnnData:
    """The counts of ``small`` in a layer or in raw; X holds something else (log data)."""
    out = ad.AnnData(_lognorm(small.X), obs=small.obs.copy(), var=small.var.copy())
    if where == "layer":
        out.layers["counts"] = small.X.copy()
    else:
        out.raw = ad.AnnData(small.X.copy(), obs=small.obs[[]], var=small.var.copy())
    return out


def _arg(where: str) -> dict:
    return {"layer": "counts"} if where == "layer" else {"use_raw": True}


def _dense(x) -> np.ndarray:
    x = x.compute() if hasattr(x, "compute") else x
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _out(adata: ad.AnnData, where: str):
    """Where a transform writes: the layer it read, or X when it read raw."""
    return adata.layers["counts"] if where == "layer" else adata.X


def _same_frames(want: pd.DataFrame, got: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True], ids=["memory", "lazy"])
@pytest.mark.parametrize("where", ["layer", "raw"])
def test_every_step_reads_the_layer_or_raw(small, where, lazy, tmp_path):
    pp = scdask.pp
    ref, holder = small.copy(), _holder(small, where)
    if lazy:  # the same AnnData read back lazily: X, layers and raw.X are Dask arrays
        holder.write_h5ad(tmp_path / "h.h5ad")
        holder = scdask.read_h5ad(tmp_path / "h.h5ad", chunk_size=150)
    arg = _arg(where)

    qc = {"qc_vars": "auto", "percent_top": (20, 100), "inplace": False}
    want = pp.calculate_qc_metrics(ref.copy(), **qc)
    got = pp.calculate_qc_metrics(holder.copy(), **qc, **arg)
    for w, g in zip(want, got, strict=True):
        _same_frames(w, g)
    for func, options in [
        (pp.filter_cells, {"min_genes": 150}),
        (pp.filter_cells, {"max_counts": 6000}),
        (pp.filter_genes, {"min_cells": 50}),
        (pp.filter_genes, {"max_counts": 9000}),
    ]:
        w_mask, w_number = func(ref, inplace=False, **options)
        g_mask, g_number = func(holder, inplace=False, **options, **arg)
        np.testing.assert_array_equal(g_mask, w_mask)
        np.testing.assert_array_equal(g_number, w_number)
    kept = holder.copy()
    pp.filter_cells(kept, min_genes=150, **arg)
    assert kept.n_obs == int(pp.filter_cells(ref, min_genes=150, inplace=False)[0].sum())

    w = pp.normalize_total(ref.copy(), target_sum=1e4, key_added="f", copy=True)
    g = pp.normalize_total(holder.copy(), target_sum=1e4, key_added="f", copy=True, **arg)
    np.testing.assert_array_equal(_dense(_out(g, where)), _dense(w.X))
    np.testing.assert_array_equal(g.obs["f"], w.obs["f"])
    w = pp.log1p(ref.copy(), copy=True)
    g = pp.log1p(holder.copy(), copy=True, **arg)
    np.testing.assert_array_equal(_dense(_out(g, where)), _dense(w.X))

    options = {"flavor": "seurat_v3", "n_top_genes": 100, "inplace": False}
    _same_frames(
        pp.highly_variable_genes(ref, **options),
        pp.highly_variable_genes(holder, **options, **arg),
    )
    w = pp.scale(ref.copy(), max_value=10, copy=True)
    g = pp.scale(holder.copy(), max_value=10, copy=True, **arg)
    np.testing.assert_allclose(_dense(_out(g, where)), _dense(w.X), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(g.var["std"], w.var["std"])
    w = pp.pca(ref.copy(), n_comps=5, mask_var=None, copy=True)
    g = pp.pca(holder.copy(), n_comps=5, mask_var=None, copy=True, **arg)
    np.testing.assert_allclose(g.obsm["X_pca"], w.obsm["X_pca"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(g.uns["pca"]["variance"], w.uns["pca"]["variance"], rtol=1e-10)

    options = {"min_genes": 50, "min_cells": 3, "n_top_genes": 100, "n_comps": 5}
    w = pp.recipe(ref.copy(), **options, copy=True, verbose=False)
    g = pp.recipe(holder.copy(), **options, copy=True, verbose=False, **arg)
    for column in QC_COLUMNS:
        np.testing.assert_array_equal(g.obs[column], w.obs[column], err_msg=column)
    np.testing.assert_array_equal(g.var["highly_variable"], w.var["highly_variable"])
    np.testing.assert_array_equal(g.obsm["X_pca"], w.obsm["X_pca"])
    np.testing.assert_array_equal(_dense(g.X), _dense(w.X))
    assert g.uns["recipe"]["params"]["matrix"] == (
        "layers['counts']" if where == "layer" else "raw.X"
    )


STEPS = [
    ("calculate_qc_metrics", {}),
    ("filter_cells", {"min_genes": 1}),
    ("filter_genes", {"min_cells": 1}),
    ("normalize_total", {}),
    ("log1p", {}),
    ("highly_variable_genes", {"flavor": "seurat_v3", "n_top_genes": 10}),
    ("scale", {}),
    ("pca", {"n_comps": 2}),
    ("recipe", {}),
]


@pytest.mark.parametrize(("name", "options"), STEPS, ids=[s[0] for s in STEPS])
def test_layer_and_use_raw_together_or_no_raw_are_refused(small, name, options):
    func = getattr(scdask.pp, name)
    holder = _holder(small, "layer")
    with pytest.raises(scdask.InputError, match="not both"):
        func(holder, layer="counts", use_raw=True, **options)
    with pytest.raises(scdask.InputError, match=r"adata\.raw is empty"):
        func(holder, use_raw=True, **options)


def test_use_raw_with_other_genes(small):
    holder = _holder(small, "raw")[:, :300].copy()  # raw keeps all 400 genes
    with pytest.raises(scdask.InputError, match=r"other genes \(400\) than adata \(300\)"):
        scdask.pp.normalize_total(holder, use_raw=True)
    mask, _ = scdask.pp.filter_cells(holder, min_genes=150, use_raw=True, inplace=False)
    np.testing.assert_array_equal(
        mask, scdask.pp.filter_cells(small, min_genes=150, inplace=False)[0]
    )
    options = {"min_genes": 50, "n_top_genes": 100, "n_comps": 5, "verbose": False}
    want = scdask.pp.recipe(small.copy(), **options, copy=True)
    scdask.pp.recipe(holder, **options, use_raw=True)  # in place: built on raw's 400 genes
    assert list(holder.var_names) == list(want.var_names)
    np.testing.assert_array_equal(holder.obsm["X_pca"], want.obsm["X_pca"])
    assert holder.raw.n_vars == 400 and holder.uns["recipe"]["params"]["matrix"] == "raw.X"


def test_gene_symbols_drive_the_gene_group_rules(counts):
    plain = counts[:200].copy()
    ensembl = _cellxgene(plain)
    want = scdask.pp.calculate_qc_metrics(plain.copy(), qc_vars="auto", inplace=False)[0]
    got = scdask.pp.calculate_qc_metrics(
        ensembl, qc_vars="auto", use_raw=True, gene_symbols="feature_name", inplace=False
    )[0]
    _same_frames(want, got)
    assert (got["pct_counts_mt"] > 0).all() and (got["pct_counts_ribo"] > 0).all()
    scdask.pp.annotate_gene_groups(plain)
    assert plain.var["mt"].sum() > 10
    np.testing.assert_array_equal(ensembl.var["mt"].to_numpy(), plain.var["mt"].to_numpy())
    with pytest.raises(scdask.InputError, match="gene_symbols='symbol' is not a column"):
        scdask.pp.calculate_qc_metrics(ensembl, qc_vars="auto", gene_symbols="symbol")


# -- (c) gene names in activity: case-folding, gene_symbols, gene_map --------------------------
PB = {"level": "pseudobulk", "cell_type_col": "cell_type", "n_rand": 10, "signature": "cytosig"}


def _mouse(adata: ad.AnnData) -> ad.AnnData:
    out = adata.copy()
    out.var_names = [name.capitalize() for name in adata.var_names]
    return out


def _close(got: ad.AnnData, want: ad.AnnData, atol: float = 1e-12) -> None:
    assert list(got.obs_names) == list(want.obs_names)
    assert list(got.var_names) == list(want.var_names)
    for layer in ("beta", "se", "zscore", "pvalue"):
        np.testing.assert_allclose(got.layers[layer], want.layers[layer], rtol=0, atol=atol)


def test_mouse_symbols_warn_and_a_gene_map_fixes_them(counts, tmp_path):
    title = pd.Index([name.capitalize() for name in counts.var_names])
    counts = counts[:, ~title.duplicated(keep=False)].copy()  # C1orf220 and C1ORF220 collide
    human = infer(counts, **PB)
    assert human.uns["activity"]["n_genes_case_folded"] == 0
    mouse = _mouse(counts)
    with pytest.warns(UserWarning, match=r"matched only after upper-casing.*gene_map="):
        folded = infer(mouse, **PB)
    assert folded.uns["activity"]["n_genes_case_folded"] == human.uns["activity"]["n_genes"]
    _close(folded, human)  # upper-casing still matches them, as secactpy does

    table = pd.DataFrame({"mouse": mouse.var_names, "human": counts.var_names})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapped = infer(mouse, gene_map=table, **PB)
    assert mapped.uns["activity"]["n_genes_case_folded"] == 0
    assert mapped.uns["activity"]["n_genes_renamed"] == counts.n_vars
    _close(mapped, human)

    tsv = tmp_path / "map.tsv"
    tsv.write_text("mouse gene\thuman gene\n" + table.to_csv(sep="\t", index=False, header=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(infer(mouse, gene_map=str(tsv), **PB), human)


def test_gene_map_renames_and_the_higher_count_gene_wins(counts):
    sig = scdask.activity.load_signature("cytosig")
    totals = pd.Series(np.asarray(counts.X.sum(axis=0)).ravel(), index=counts.var_names)
    in_sig = totals[totals.index.isin(sig.index)].sort_values()
    low, high = in_sig.index[-40], in_sig.index[-1]
    assert totals[high] > totals[low]

    # renamed genes: three names changed in the data, mapped back (the rest keep theirs)
    moved = in_sig.index[-3:]
    renamed = counts.copy()
    renamed.var_names = [f"x{n}" if n in moved else n for n in counts.var_names]
    back = pd.DataFrame({"from": [f"x{n}" for n in moved], "to": list(moved)})
    _close(infer(renamed, gene_map=back, **PB), infer(counts, **PB))

    # two genes mapped to one name: the one with more counts is kept under that name
    got = infer(counts, gene_map=pd.DataFrame({"from": [high], "to": [low]}), **PB)
    want = counts[:, counts.var_names != low].copy()
    want.var_names = [low if n == high else n for n in want.var_names]
    _close(got, infer(want, **PB))
    got = infer(
        counts, gene_map={high: "ONE", low: "ONE"}, level="cell", n_rand=5, signature="cytosig"
    )
    want = counts[:, counts.var_names != low].copy()
    want.var_names = ["ONE" if n == high else n for n in want.var_names]
    _close(got, infer(want, level="cell", n_rand=5, signature="cytosig"))

    with pytest.raises(scdask.InputError, match="maps 1 genes to more than one gene"):
        infer(counts, gene_map=pd.DataFrame({"a": [low, low], "b": ["A", "B"]}), **PB)
    with pytest.raises(scdask.InputError, match="gene_map must have 2 columns"):
        infer(counts, gene_map=pd.DataFrame({"a": [low], "b": ["A"], "c": ["B"]}), **PB)


def test_gene_symbols_replace_the_automatic_guess(counts):
    ensembl = _cellxgene(counts)
    ensembl.var["other"] = ["zz_" + n for n in counts.var_names]
    human = infer(counts, **PB)
    _close(infer(ensembl, **PB), human)  # automatic: feature_name, counts in raw
    _close(infer(ensembl, gene_symbols="feature_name", use_raw=True, **PB), human)
    with pytest.raises(scdask.InputError, match="at least 2 are needed"):
        infer(ensembl, gene_symbols="other", **PB)
    with pytest.raises(scdask.InputError, match="not both"):
        infer(ensembl, layer="counts", use_raw=True, **PB)


# -- (d) pseudobulk over several obs columns ----------------------------------------------------
def test_pseudobulk_by_two_columns_is_by_their_combination(counts):
    adata = counts.copy()
    donor = np.where(np.arange(adata.n_obs) % 3 == 0, "D1", "D2").astype(object)
    donor[:5] = np.nan
    adata.obs["donor_id"] = pd.Categorical(donor)
    combined = adata.obs["donor_id"].astype(str) + "|" + adata.obs["cell_type"].astype(str)
    adata.obs["combined"] = combined.where(adata.obs["donor_id"].notna())
    options = {**PB, "n_rand": 20}
    options.pop("cell_type_col")
    with pytest.warns(UserWarning, match=r"5 cells have no label in obs\[\['donor_id', 'cell"):
        got = infer(adata, cell_type_col=["donor_id", "cell_type"], **options)
    with pytest.warns(UserWarning, match="5 cells have no 'combined' label"):
        want = infer(adata, cell_type_col="combined", **options)
    assert "D1|T" in got.obs_names and "D2|NK" in got.obs_names
    _close(got, want)
    _close(
        infer(adata, cell_type_col=["cell_type"], **options),
        infer(adata, cell_type_col="cell_type", **options),
    )
    with pytest.raises(scdask.InputError, match="needs cell_type_col naming an obs column"):
        infer(adata, cell_type_col=["donor_id", "tissue"], **options)


def test_figures_colour_by_the_last_grouping_column(counts, tmp_path):
    adata = counts.copy()
    adata.obs["donor_id"] = "D1"
    scdask.pp.recipe(adata, n_top_genes=200, n_comps=5, verbose=False)
    figs = _figures(adata, {}, {"cell_type_col": ["donor_id", "cell_type"]}, tmp_path)
    assert sorted(figs) == ["figure_hvg", "figure_pca", "figure_qc"]
    assert (tmp_path / "pca.png").read_bytes()[:4] == b"\x89PNG"
