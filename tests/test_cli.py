"""The ``scdask`` command: help, exit codes, the main job end to end."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import yaml

from scdask.cli import main

COMMANDS = ["demo", "run", "preprocess", "activity", "info", "convert", "synthetic", "cluster"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    assert f"scdask {command}" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.h5ad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scdask: error: No such file")
    assert "\n" not in err and "Traceback" not in err

    text = tmp_path / "notes.h5ad"
    text.write_text("not a matrix")
    assert main(["info", str(text)]) == 2
    assert "is not HDF5" in capsys.readouterr().err


def test_bad_config_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"activity": {"n_rnd": 10}}))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "n_rnd" in err and "activity." in err


def test_usage_error_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "scdask.cli", "activity"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err  # one line: the problem, and where the help is
    assert "the following arguments are required: input, output" in err
    assert err.endswith("(see 'scdask activity --help')")


def test_info_prints_the_layout(sample_path, capsys):
    assert main(["info", str(sample_path)]) == 0
    out = capsys.readouterr().out
    assert "559" in out and "32786" in out.replace(",", "")
    assert "csr" in out.lower()


def test_info_reads_files_without_x_and_activity_results(tmp_path, capsys):
    import pandas as pd

    import scdask

    cells = tmp_path / "cells.h5ad"
    obs = pd.DataFrame(index=[f"c{i}" for i in range(12)])
    var = pd.DataFrame(index=[f"g{i}" for i in range(4)])
    ad.AnnData(obs=obs, var=var, obsm={"X_umap": np.zeros((12, 2))}).write_h5ad(cells)
    assert main(["info", str(cells)]) == 0
    out = capsys.readouterr().out
    assert "no X (annotations only: 12 cells x 4 genes from obs/var; obsm: X_umap)" in out

    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(50)]
    sig = pd.DataFrame(rng.standard_normal((50, 2)), index=genes, columns=["P1", "P2"])
    expr = pd.DataFrame(rng.standard_normal((50, 3)), index=genes, columns=list("abc"))
    res = scdask.activity.infer(expr, level="bulk", signature=sig, group=False, n_rand=10)
    scdask.write_h5ad(res, tmp_path / "act.h5ad")
    assert main(["info", str(tmp_path / "act.h5ad")]) == 0
    out = capsys.readouterr().out
    assert (
        "activity result (level=bulk, signature=custom, n_rand=10): 3 samples x 2 proteins" in out
    )
    assert "genes" not in out


@pytest.mark.slow
def test_run_writes_results_and_figures(tmp_path, capsys):
    cfg = {
        "output": str(tmp_path / "out"),
        "launcher": {"kind": "none"},
        "preprocess": {"n_top_genes": 500, "n_comps": 20, "umap": True},
        "activity": {
            "levels": ["pseudobulk", "cell"],
            "n_rand": 20,
            "signature": "cytosig",
            "layers": ["zscore", "pvalue"],
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    pb = ad.read_h5ad(out / "activity_pseudobulk.h5ad")
    assert pb.n_obs == 5 and pb.n_vars == 43
    cells = ad.read_h5ad(out / "activity_cell.h5ad")
    processed = ad.read_h5ad(out / "cells.h5ad")
    assert cells.n_obs == processed.n_obs
    assert list(cells.obs_names) == list(processed.obs_names)
    assert set(cells.layers) == {"zscore", "pvalue"}
    assert {"beta", "se", "zscore", "pvalue"} <= set(pb.layers)
    p = cells.layers["pvalue"]
    assert np.all((p >= 1 / 21 - 1e-12) & (p <= 1))
    assert processed.obsm["X_pca"].shape == (processed.n_obs, 20)
    assert "X_umap" in processed.obsm and "leiden" in processed.obs
    for name in ["qc", "hvg", "pca", "umap", "activity_heatmap", "volcano", "umap_activity"]:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_progress_step_keeps_the_client_active():
    """Inside a command's engine and progress step the cluster is the active client (the
    writer's window of futures and the broadcast activity model rely on it)."""
    pytest.importorskip("distributed")
    from scdask._compute import active_client
    from scdask._progress import step
    from scdask.cli import _engine

    options = {"n_workers": 1, "threads_per_worker": 1, "processes": False}
    with _engine({"kind": "local", "options": options}) as client:
        try:
            with step("compute", interval=0.05):
                assert active_client() is client
                assert float(da.ones(10, chunks=5).sum().compute()) == 10.0
        finally:
            client.cluster.close()
    assert active_client() is None


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "10x-h5", "mtx", "visium"])
def test_every_command_reads_every_format(kind, tmp_path, capsys):
    import scipy.sparse as sp

    import scdask
    from scdask.datasets._tenx import write_10x_h5, write_10x_mtx, write_visium

    adata = scdask.datasets.sample()[:120].copy()
    adata.X = sp.csr_matrix(adata.X)
    path = tmp_path / "in"
    if kind == "h5ad":
        path = path.with_suffix(".h5ad")
        adata.write_h5ad(path)
    elif kind == "zarr":
        path = path.with_suffix(".zarr")
        adata.write_zarr(path)
    elif kind == "10x-h5":
        path = write_10x_h5(adata, tmp_path / "filtered_feature_bc_matrix.h5")
    elif kind == "mtx":
        path = write_10x_mtx(adata, tmp_path / "filtered_feature_bc_matrix")
    else:
        path = write_visium(adata, tmp_path / "outs")
    want = scdask.read(path).X.compute().toarray()
    np.testing.assert_array_equal(want, adata.X.toarray())
    assert main(["info", str(path)]) == 0
    assert "120 cells" in capsys.readouterr().out
    level = "spot" if kind == "visium" else "cell"
    out = tmp_path / "act.h5ad"
    argv = ["activity", str(path), str(out), "--level", level, "--signature", "cytosig"]
    assert main([*argv, "--n-rand", "5", "--launcher", "none"]) == 0
    assert ad.read_h5ad(out).n_obs == 120
    assert main(["convert", str(path), str(tmp_path / "copy.h5ad")]) == 0
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "copy.h5ad").X.toarray(), want)
