"""scdask.plotting: each plot returns a Figure with the expected artists, saves PNGs, and
names the missing input and the function that writes it."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdask import plotting
from scdask._ops import as_block

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

N_OBS, N_VARS = 120, 60
CELL_TYPES = ["B", "T", "NK", "Myeloid"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def adata() -> ad.AnnData:
    """Small cells × genes AnnData carrying the columns scdask's pp functions write."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "total_counts": rng.lognormal(8, 0.6, N_OBS),
            "n_genes_by_counts": rng.lognormal(7, 0.4, N_OBS),
            "pct_counts_mt": rng.gamma(2, 2, N_OBS),
            "cell_type": pd.Categorical(rng.choice(CELL_TYPES, N_OBS), categories=CELL_TYPES),
        },
        index=[f"cell{i}" for i in range(N_OBS)],
    )
    var = pd.DataFrame(
        {"means": rng.gamma(1.5, 0.5, N_VARS), "dispersions_norm": rng.normal(0, 1, N_VARS)},
        index=[f"gene{i}" for i in range(N_VARS)],
    )
    var["highly_variable"] = var["dispersions_norm"] > 0.5
    adata = ad.AnnData(obs=obs, var=var)
    adata.obsm["X_pca"] = rng.normal(size=(N_OBS, 10))
    adata.obsm["X_umap"] = rng.normal(size=(N_OBS, 2))
    adata.uns["pca"] = {"variance_ratio": np.array([0.2, 0.1, 0.05])}
    return adata


@pytest.fixture
def activity(adata) -> ad.AnnData:
    """Cells × proteins activity result with a lazy z-score layer, like activity.infer."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(N_OBS, 8))
    result = ad.AnnData(
        obs=pd.DataFrame(index=adata.obs_names),
        var=pd.DataFrame(index=["IL6", "TNF", "IFNG", "IL1B", "CCL5", "TGFB1", "IL10", "GZMB"]),
    )
    result.layers["zscore"] = da.from_array(z, chunks=(50, 4))
    return result


@pytest.fixture
def group_z() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        rng.normal(size=(40, 4)), index=[f"P{i}" for i in range(40)], columns=CELL_TYPES
    )


@pytest.fixture(autouse=True)
def _no_open_figures():
    yield
    assert plt.get_fignums() == [], "a plotting function left a pyplot figure open"


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))


def _colour_by_position(ax) -> dict[tuple[float, float], float]:
    scatter = ax.collections[0]
    pairs = zip(scatter.get_offsets(), scatter.get_array(), strict=True)
    return {tuple(xy): value for xy, value in pairs}


def _tick_labels(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


# -- qc -------------------------------------------------------------------------------------
def test_qc_histograms(adata):
    fig = plotting.qc(adata)
    assert isinstance(fig, mpl.figure.Figure)
    assert [ax.get_xlabel() for ax in fig.axes] == [
        "total_counts",
        "n_genes_by_counts",
        "pct_counts_mt",
    ]
    for ax in fig.axes:
        assert sum(p.get_height() for p in ax.patches) == N_OBS
        assert ax.get_ylabel() == "cells"


def test_qc_violins_one_per_group(adata):
    fig = plotting.qc(adata, keys=["total_counts", "pct_counts_mt"], groupby="cell_type")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        bodies = [c for c in ax.collections if isinstance(c, mpl.collections.PolyCollection)]
        assert len(bodies) == len(CELL_TYPES)
    assert [ax.get_ylabel() for ax in fig.axes] == ["total_counts", "pct_counts_mt"]
    assert _tick_labels(fig.axes[-1].get_xticklabels()) == CELL_TYPES
    assert fig.axes[-1].get_xlabel() == "cell_type"


def test_qc_accepts_the_obs_table_and_skips_nan(adata):
    obs = adata.obs.copy()
    obs.iloc[:10, obs.columns.get_loc("pct_counts_mt")] = np.nan
    fig = plotting.qc(obs, keys=["pct_counts_mt"])
    assert sum(p.get_height() for p in fig.axes[0].patches) == N_OBS - 10


def test_qc_missing_column_names_the_writer(adata):
    del adata.obs["pct_counts_mt"]
    with pytest.raises(KeyError, match=r"pct_counts_mt.*scdask\.pp\.calculate_qc_metrics"):
        plotting.qc(adata)
    with pytest.raises(KeyError, match="sample"):
        plotting.qc(adata, keys=["total_counts"], groupby="sample")
    with pytest.raises(ValueError, match="keys is empty"):
        plotting.qc(adata, keys=[])


def test_qc_refuses_a_continuous_groupby(adata):
    with pytest.raises(ValueError, match="distinct values"):
        plotting.qc(adata, keys=["total_counts"], groupby="n_genes_by_counts")


# -- hvg ------------------------------------------------------------------------------------
def test_hvg_scatter(adata):
    fig = plotting.hvg(adata)
    ax = fig.axes[0]
    assert _points(ax) == N_VARS
    assert ax.get_xlabel() == "mean expression"
    assert ax.get_ylabel() == "normalised dispersion"
    n_hvg = int(adata.var["highly_variable"].sum())
    assert _tick_labels(ax.get_legend().get_texts())[0] == f"highly variable ({n_hvg:,})"


def test_hvg_seurat_v3_table(adata):
    var = adata.var.rename(columns={"dispersions_norm": "variances_norm"})
    var.iloc[0, var.columns.get_loc("variances_norm")] = np.nan
    fig = plotting.hvg(var)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_ylabel() == "normalised variance"
    assert _points(ax) == N_VARS - 1


@pytest.mark.parametrize("column", ["highly_variable", "dispersions_norm"])
def test_hvg_missing_column_names_the_writer(adata, column):
    del adata.var[column]
    with pytest.raises(KeyError, match=r"scdask\.pp\.highly_variable_genes"):
        plotting.hvg(adata)


# -- embedding ------------------------------------------------------------------------------
def test_embedding_categorical(adata):
    adata.uns["cell_type_colors"] = ["#ff0000", "#00ff00", "#0000ff", "#000000"]
    fig = plotting.embedding(adata, basis="pca", color="cell_type")
    ax = fig.axes[0]
    assert _points(ax) == N_OBS
    assert _tick_labels(ax.get_legend().get_texts()) == CELL_TYPES
    assert ax.get_xlabel() == "PC1 (20.0%)"
    assert ax.get_ylabel() == "PC2 (10.0%)"
    assert ax.get_title() == "cell_type"
    # the stored palette is used: every point is one of its colours
    face = {
        tuple(xy): tuple(c)
        for xy, c in zip(
            ax.collections[0].get_offsets(), ax.collections[0].get_facecolors(), strict=True
        )
    }
    palette = dict(zip(CELL_TYPES, adata.uns["cell_type_colors"], strict=True))
    for xy, cell_type in zip(adata.obsm["X_pca"][:, :2], adata.obs["cell_type"], strict=True):
        assert face[tuple(xy)] == mpl.colors.to_rgba(palette[cell_type])
    # the scatter holds the embedding's first two columns
    got = ax.collections[0].get_offsets()
    assert {tuple(r) for r in np.asarray(got)} == {tuple(r) for r in adata.obsm["X_pca"][:, :2]}


def test_embedding_stored_palette_survives_unused_categories(adata):
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["pDC"])  # unused
    adata.uns["cell_type_colors"] = ["#ff0000", "#00ff00", "#0000ff", "#000000", "#ffff00"]
    fig = plotting.embedding(adata, basis="pca", color="cell_type")
    legend = fig.axes[0].get_legend()
    assert _tick_labels(legend.get_texts()) == CELL_TYPES
    got = [mpl.colors.to_hex(h.get_color()) for h in legend.legend_handles]
    assert got == ["#ff0000", "#00ff00", "#0000ff", "#000000"]


def test_embedding_missing_category_is_grey_and_labelled(adata):
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("cell_type")] = None
    fig = plotting.embedding(adata, color="cell_type")
    assert _tick_labels(fig.axes[0].get_legend().get_texts())[-1] == "NA"
    assert _points(fig.axes[0]) == N_OBS


def test_embedding_numeric_gets_a_colorbar(adata):
    fig = plotting.embedding(adata, basis="umap", color="total_counts")
    assert len(fig.axes) == 2  # scatter + colorbar
    assert _points(fig.axes[0]) == N_OBS
    assert fig.axes[0].get_xlabel() == "UMAP1"
    assert fig.axes[1].get_ylabel() == "total_counts"


def test_embedding_without_colour(adata):
    fig = plotting.embedding(adata, basis="X_umap")
    assert len(fig.axes) == 1
    assert _points(fig.axes[0]) == N_OBS
    assert fig.axes[0].get_title() == "umap"


def test_embedding_activity_computes_one_column_once(adata, activity, counting_scheduler):
    with counting_scheduler(1) as counter:
        fig = plotting.embedding(
            adata, color="IFNG", values=activity, layer="zscore", title="IFNG activity"
        )
    assert counter.count == 1
    ax = fig.axes[0]
    assert ax.get_title() == "IFNG activity"
    want = activity.layers["zscore"][:, 2].compute()
    np.testing.assert_allclose(np.sort(ax.collections[0].get_array()), np.sort(want))
    lo, hi = ax.collections[0].get_clim()
    assert lo == -hi  # signed values: diverging, centred at 0


def test_embedding_activity_on_sparse_blocks_and_reordered_cells(adata):
    rng = np.random.default_rng(3)
    dense = rng.random((N_OBS, 5))
    dense[dense < 0.6] = 0
    order = rng.permutation(N_OBS)
    values = ad.AnnData(
        X=da.from_array(as_block(sp.csr_array(dense[order])), chunks=(40, 5), asarray=False),
        obs=pd.DataFrame(index=adata.obs_names[order]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
    )
    fig = plotting.embedding(adata, color="g1", values=values)
    ax = fig.axes[0]
    colour_of = _colour_by_position(ax)
    for i in range(N_OBS):
        assert colour_of[tuple(adata.obsm["X_umap"][i, :2])] == pytest.approx(dense[i, 1])


def test_embedding_color_values(adata):
    rng = np.random.default_rng(4)
    values = pd.Series(rng.normal(size=N_OBS), index=adata.obs_names)[::-1]  # aligned by name
    fig = plotting.embedding(adata, color_values=values, title="score")
    ax = fig.axes[0]
    assert ax.get_title() == "score"
    colour_of = _colour_by_position(ax)
    assert colour_of[tuple(adata.obsm["X_umap"][0])] == pytest.approx(values["cell0"])
    fig = plotting.embedding(adata, color_values=np.array(["a", "b"] * (N_OBS // 2)))
    assert _tick_labels(fig.axes[0].get_legend().get_texts()) == ["a", "b"]


def test_embedding_errors(adata, activity):
    del adata.obsm["X_umap"]
    with pytest.raises(KeyError, match=r"X_umap.*scdask\.pp\.umap"):
        plotting.embedding(adata, basis="umap")
    with pytest.raises(KeyError, match=r"'IL6'.*values="):
        plotting.embedding(adata, basis="pca", color="IL6")
    with pytest.raises(KeyError, match=r"'IL99' is not in values\.var_names"):
        plotting.embedding(adata, basis="pca", color="IL99", values=activity, layer="zscore")
    with pytest.raises(KeyError, match="no layer 'beta'"):
        plotting.embedding(adata, basis="pca", color="IL6", values=activity, layer="beta")
    with pytest.raises(ValueError, match="layer="):
        plotting.embedding(adata, basis="pca", color="IL6", values=activity)
    with pytest.raises(ValueError, match="either color or color_values"):
        plotting.embedding(adata, basis="pca", color="cell_type", color_values=np.zeros(N_OBS))
    with pytest.raises(ValueError, match="needs color="):
        plotting.embedding(adata, basis="pca", values=activity)
    with pytest.raises(ValueError, match="3 values for 120 cells"):
        plotting.embedding(adata, basis="pca", color_values=[1, 2, 3])
    with pytest.raises(ValueError, match="same cells"):
        plotting.embedding(
            adata[:50], basis="pca", color="IL6", values=activity[:40], layer="zscore"
        )


# -- activity heatmap -----------------------------------------------------------------------
def test_activity_heatmap_top_proteins(group_z):
    group_z.index.name = "protein"
    group_z.columns.name = "cell type"
    fig = plotting.activity_heatmap(group_z, top=12)
    ax = fig.axes[0]
    image = ax.images[0]
    assert image.get_array().shape == (12, len(CELL_TYPES))
    shown = _tick_labels(ax.get_yticklabels())
    strongest = group_z.abs().max(axis=1).sort_values(ascending=False).index[:12]
    assert set(shown) == set(strongest)
    # ordered by the group where each protein peaks, in the groups' order
    peaks = [CELL_TYPES.index(group_z.loc[p].idxmax()) for p in shown]
    assert peaks == sorted(peaks)
    np.testing.assert_allclose(np.asarray(image.get_array()), group_z.loc[shown].to_numpy())
    lo, hi = image.get_clim()
    assert lo == -hi
    assert _tick_labels(ax.get_xticklabels()) == CELL_TYPES
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("cell type", "protein")
    assert fig.axes[1].get_ylabel() == "activity z-score"


def test_activity_heatmap_small_frame_and_nan(group_z):
    small = group_z.iloc[:5].copy()
    small.iloc[0, 0] = np.nan
    fig = plotting.activity_heatmap(small, top=20)
    assert fig.axes[0].images[0].get_array().shape == (5, len(CELL_TYPES))
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("group", "protein")


def test_activity_heatmap_errors(group_z):
    with pytest.raises(ValueError, match="top must be at least 1"):
        plotting.activity_heatmap(group_z, top=0)
    with pytest.raises(ValueError, match="empty"):
        plotting.activity_heatmap(group_z.iloc[:0])
    with pytest.raises(ValueError, match="numeric"):
        plotting.activity_heatmap(group_z.assign(B="x"))
    with pytest.raises(TypeError, match="DataFrame"):
        plotting.activity_heatmap(group_z.to_numpy())


# -- volcano --------------------------------------------------------------------------------
def _zp(n: int = 50) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(5)
    names = [f"P{i}" for i in range(n)]
    z = pd.Series(rng.normal(0, 2, n), index=names)
    return z, pd.Series(np.clip(np.exp(-np.abs(z)), 1e-6, 1), index=names)


def test_volcano_points_and_labels():
    z, p = _zp()
    fig = plotting.volcano(z, p.iloc[::-1], label_top=7)  # pvalue aligned by name
    ax = fig.axes[0]
    assert _points(ax) == len(z)
    labels = {t.get_text() for t in ax.texts}
    assert labels == set(z.abs().sort_values(ascending=False).index[:7])
    assert ax.get_xlabel() == "activity z-score"
    assert "log" in ax.get_ylabel()
    y = np.asarray(ax.collections[0].get_offsets())[:, 1]
    np.testing.assert_allclose(np.sort(y), np.sort(-np.log10(p.to_numpy())))


def test_volcano_labels_of_piled_up_points_do_not_overlap():
    """Ten strong proteins at the p-value floor within a narrow z range: no labels overlap."""
    names = [f"PROTEIN{i}" for i in range(40)]
    z = pd.Series(np.r_[np.linspace(-20, -19, 10), np.linspace(-3, 3, 30)], index=names)
    p = pd.Series(np.r_[np.full(10, 1e-3), np.linspace(0.01, 0.9, 30)], index=names)
    fig = plotting.volcano(z, p, label_top=10)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    # the text itself, not the leader line (Annotation.get_window_extent includes it)
    boxes = [mpl.text.Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]
    assert len(boxes) == 10
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    plt.close(fig)


def test_volcano_arrays_zero_p_and_nan():
    z, p = _zp(30)
    p.iloc[0] = 0.0
    z.iloc[1] = np.nan
    fig = plotting.volcano(z.to_numpy(), p.to_numpy(), names=z.index, label_top=0)
    ax = fig.axes[0]
    assert _points(ax) == 29
    assert len(ax.texts) == 0
    zero = ax.collections[1].get_offsets()
    assert len(zero) == 1
    assert zero[0][1] == pytest.approx(-np.log10(p[p > 0].drop(z.index[1]).min()))


def test_volcano_errors():
    z, p = _zp(10)
    with pytest.raises(ValueError, match="same proteins"):
        plotting.volcano(z, p.iloc[:5])
    with pytest.raises(ValueError, match="names="):
        plotting.volcano(z.to_numpy(), p.to_numpy())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plotting.volcano(z, p * 10)
    with pytest.raises(ValueError, match="label_top"):
        plotting.volcano(z, p, label_top=-1)


# -- shared behaviour -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["qc", "hvg", "embedding", "activity_heatmap", "volcano"])
def test_save_writes_a_png_atomically(tmp_path, adata, group_z, kind):
    z, p = _zp(20)
    calls = {
        "qc": lambda save: plotting.qc(adata, save=save),
        "hvg": lambda save: plotting.hvg(adata, save=save),
        "embedding": lambda save: plotting.embedding(adata, color="cell_type", save=save),
        "activity_heatmap": lambda save: plotting.activity_heatmap(group_z, save=save),
        "volcano": lambda save: plotting.volcano(z, p, save=save),
    }
    target = tmp_path / f"{kind}.png"
    target.write_bytes(b"old")  # replaced, not appended to
    fig = calls[kind](target)
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    assert isinstance(fig, mpl.figure.Figure)
    assert [f.name for f in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_missing_matplotlib_names_the_extra(monkeypatch, adata):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'scdask\[plot\]'"):
        plotting.qc(adata)


def test_import_does_not_load_matplotlib():
    code = "import sys, scdask.plotting; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
