"""Bad and unusual inputs, each through every entry point it concerns.

For every (input, entry point) pair the table says what must happen: a
:class:`scdask.InputError` (Python) or exit code 2 with one line on stderr (CLI), or a
documented warning. Whatever happens, the input's bytes are unchanged and nothing that looks
finished is left at the requested output path.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import yaml

import scdask
from scdask.cli import main

#: Words that belong to scdask's insides or its libraries, never to a user-facing line.
INTERNAL = re.compile(
    r"Traceback|Missing dependency|numba|(?<!sc)dask\b|KeyError|not in index|read-X-|"
    r"File \"|\bline \d+|object has no attribute|unexpected keyword"
)


# -- inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base() -> ad.AnnData:
    """150 real cells of the bundled sample (three cell types), counts in X."""
    adata = scdask.datasets.sample()
    types = adata.obs["cell_type"].value_counts().index[:3]
    keep = np.flatnonzero(adata.obs["cell_type"].isin(types).to_numpy())[:150]
    sub = adata[keep].copy()
    sub.X = sp.csr_matrix(sub.X)
    sub.obs["cell_type"] = sub.obs["cell_type"].astype(str)
    return sub


def _with_value(adata: ad.AnnData, value: float) -> ad.AnnData:
    out = adata.copy()
    out.X = out.X.astype(np.float32)
    out.X.data[len(out.X.data) // 2] = value
    return out


def _lognorm(adata: ad.AnnData, *, keep_counts: bool) -> ad.AnnData:
    out = adata.copy()
    x = out.X.astype(np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    out.X = sp.csr_matrix(sp.diags(1e4 / totals) @ x).log1p().astype(np.float32)
    if keep_counts:
        out.layers["counts"] = adata.X.copy()
    return out


def _labels(adata: ad.AnnData, labels) -> ad.AnnData:
    out = adata.copy()
    out.obs["cell_type"] = labels
    return out


def _nan_labels(adata: ad.AnnData) -> ad.AnnData:
    labels = adata.obs["cell_type"].astype(object).to_numpy().copy()
    labels[:7] = np.nan
    return _labels(adata, labels)


MAKERS = {
    "nan": lambda a: _with_value(a, np.nan),
    "inf": lambda a: _with_value(a, np.inf),
    "negative": lambda a: _with_value(a, -3.0),
    "lognorm": lambda a: _lognorm(a, keep_counts=False),
    "lognorm_with_counts_layer": lambda a: _lognorm(a, keep_counts=True),
    "one_group": lambda a: _labels(a, "T cells"),
    "nan_labels": _nan_labels,
    "zero_cells": lambda a: a[:0].copy(),
    "no_cell_type_column": lambda a: ad.AnnData(a.X, obs=a.obs[[]], var=a.var),
    "counts": lambda a: a.copy(),
}


@pytest.fixture(scope="module")
def files(base, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    out = {}
    for name, make in MAKERS.items():
        out[name] = folder / f"{name}.h5ad"
        make(base).write_h5ad(out[name])
    out["not_hdf5"] = folder / "not_hdf5.h5ad"
    out["not_hdf5"].write_text("cell,gene,count\n")
    out["truncated"] = folder / "truncated.h5ad"
    out["truncated"].write_bytes(out["counts"].read_bytes()[:4096])
    out["not_a_store"] = folder / "plain_folder"
    out["not_a_store"].mkdir()
    (out["not_a_store"] / "notes.txt").write_text("not zarr")
    return out


def _digest(path: Path) -> str:
    """Hash of a file or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    paths = sorted(path.rglob("*")) if path.is_dir() else [path]
    for p in paths:
        if p.is_file():
            h.update(str(p.relative_to(path.parent)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# -- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    input: str  # a key of ``files``, or "missing"
    entry: str  # cli-info, cli-preprocess, cli-activity-<level>, cli-convert, py-<function>
    expect: str  # regex of the one error line, or of the warning
    warns: bool = False  # a documented, warned choice: success with this warning


CASES = [
    # NaN and infinite values: refused by whoever reads the block
    Case("nan", "py-read", r"NaN or infinite values in rows 0:150"),
    Case("nan", "py-recipe", r"NaN or infinite"),
    Case("nan", "cli-preprocess", r"NaN or infinite"),
    Case("nan", "cli-activity-pseudobulk", r"NaN or infinite"),
    Case("nan", "cli-activity-cell", r"NaN or infinite"),
    Case("inf", "cli-preprocess", r"NaN or infinite"),
    Case("inf", "py-infer-pseudobulk", r"NaN or infinite"),
    # negative values: not counts
    Case("negative", "cli-preprocess", r"recipe needs counts, but X holds 1 negative"),
    Case("negative", "cli-activity-pseudobulk", r"pseudobulk.*needs counts.* 1 negative"),
    Case("negative", "cli-activity-cell", r"'cell'.*needs counts.* 1 negative"),
    # log-normalised X: refused where counts are needed, a warned choice at pseudobulk
    Case("lognorm", "cli-preprocess", r"recipe needs counts.*not whole numbers"),
    Case("lognorm", "py-recipe", r"not whole numbers.*pass the raw counts"),
    Case("lognorm", "cli-activity-cell", r"needs counts.*not whole numbers"),
    Case("lognorm", "py-infer-pseudobulk", r"looks normalised", warns=True),
    Case("lognorm_with_counts_layer", "py-recipe", r"layer='counts'"),
    Case("lognorm_with_counts_layer", "py-infer-cell", r"layer='counts'"),
    # groups
    Case("one_group", "cli-activity-pseudobulk", r"at least 2 groups in obs\['cell_type'\]"),
    Case("one_group", "py-infer-pseudobulk", r"only 'T cells'"),
    Case("nan_labels", "py-infer-pseudobulk", r"7 cells have no 'cell_type' label", warns=True),
    Case("no_cell_type_column", "cli-activity-pseudobulk", r"needs cell_type_col naming"),
    # no cells
    Case("zero_cells", "cli-preprocess", r"needs at least 2 cells"),
    Case("zero_cells", "cli-activity-pseudobulk", r"has 0 cells"),
    Case("zero_cells", "py-infer-cell", r"has 0 cells"),
    # files that are not AnnData stores
    Case("missing", "cli-info", r"No such file"),
    Case("missing", "cli-preprocess", r"No such file"),
    Case("not_hdf5", "cli-activity-pseudobulk", r"is not HDF5 .*scdask.read accepts"),
    Case("not_hdf5", "cli-convert", r"is not HDF5 .*scdask.read accepts"),
    Case("truncated", "cli-info", r"truncated or damaged"),
    Case("truncated", "py-read", r"truncated or damaged"),
    Case("not_a_store", "cli-preprocess", r"is a folder holding \['notes.txt'\]; scdask.read"),
]


def _run_entry(entry: str, path: Path, out: Path) -> int | None:
    """Run one entry point; CLI entries return the exit code, Python ones raise or return."""
    quick = ["--launcher", "none"]
    act = [*quick, "--signature", "cytosig", "--n-rand", "10"]
    if entry == "cli-info":
        return main(["info", str(path)])
    if entry == "cli-preprocess":
        return main(
            ["preprocess", str(path), str(out), "--n-top-genes", "200", "--n-comps", "5", *quick]
        )
    if entry.startswith("cli-activity-"):
        level = entry.removeprefix("cli-activity-")
        return main(["activity", str(path), str(out), "--level", level, *act])
    if entry == "cli-convert":
        return main(["convert", str(path), str(out)])
    adata = scdask.read_h5ad(path)
    if entry == "py-read":
        adata.X.sum().compute()
    elif entry == "py-recipe":
        scdask.pp.recipe(adata, n_top_genes=200, n_comps=5, verbose=False)
    elif entry.startswith("py-infer-"):
        level = entry.removeprefix("py-infer-")
        groups = {"cell_type_col": "cell_type"} if level == "pseudobulk" else {}
        res = scdask.activity.infer(adata, level=level, signature="cytosig", n_rand=10, **groups)
        scdask.write_h5ad(res, out)
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(entry)
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.input}-{c.entry}")
def test_bad_input(case, files, tmp_path, capsys):
    path = files.get(case.input, tmp_path / "missing.h5ad")
    before = _digest(path) if path.exists() else None
    out = tmp_path / "out.h5ad"
    if case.warns:
        with pytest.warns(UserWarning, match=case.expect):
            _run_entry(case.entry, path, out)
        assert out.exists()  # the warned choice finishes
    elif case.entry.startswith("cli-"):
        code = _run_entry(case.entry, path, out)
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [line for line in err.splitlines() if line.startswith("scdask: ")]
        assert len(lines) == 1, err
        assert lines[0].startswith("scdask: error: ")
        assert re.search(case.expect, lines[0]), lines[0]
        assert not INTERNAL.search(err), err
    else:
        with pytest.raises(scdask.InputError, match=case.expect) as info:
            _run_entry(case.entry, path, out)
        assert "\n" not in str(info.value)
        assert not INTERNAL.search(str(info.value)), str(info.value)
    if before is not None:
        assert _digest(path) == before
    if not case.warns:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- outputs that would replace an input -------------------------------------------------------
def _link(kind: str, src: Path, tmp_path: Path) -> Path:
    """An output path that reaches ``src``: itself, a symbolic link, a hard link, or a
    folder that holds it (the input is then a copy inside that folder)."""
    if kind == "same":
        return src
    if kind == "symlink":
        (tmp_path / "link.h5ad").symlink_to(src)
        return tmp_path / "link.h5ad"
    if kind == "hardlink":
        os.link(src, tmp_path / "hard.h5ad")
        return tmp_path / "hard.h5ad"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize(
    "command",
    [
        ["activity", "--level", "pseudobulk", "--signature", "cytosig", "--n-rand", "10"],
        ["preprocess", "--n-top-genes", "200", "--n-comps", "5"],
        ["convert"],
    ],
    ids=["activity", "preprocess", "convert"],
)
def test_cli_never_writes_over_its_input(command, kind, files, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    src.write_bytes(files["counts"].read_bytes())
    before = _digest(src)
    out = _link(kind, src, tmp_path)
    extra = ["--launcher", "none"] if command[0] != "convert" else []
    assert main([command[0], str(src), str(out), *command[1:], *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"scdask: error: refusing to write .*; write to a new path", err), err
    assert _digest(src) == before
    assert os.path.samefile(out, src)  # the link is still there, untouched


def test_writers_refuse_an_input_reached_any_way(files, tmp_path):
    src = tmp_path / "in.h5ad"
    src.write_bytes(files["counts"].read_bytes())
    before = _digest(src)
    lazy = scdask.read_h5ad(src)
    # an in-memory result remembers the file it was made from
    res = scdask.activity.infer(
        lazy, level="pseudobulk", cell_type_col="cell_type", signature="cytosig", n_rand=10
    )
    assert res.uns["activity"]["sources"] == [str(src.resolve())]
    for kind in ("same", "symlink", "hardlink"):
        out = _link(kind, src, tmp_path) if kind != "same" else src
        for adata in (lazy, res):
            with pytest.raises(scdask.InputError, match="refusing to write"):
                scdask.write_h5ad(adata, out)
    # a zarr store written over the folder that holds the input
    with pytest.raises(scdask.InputError, match="is a folder holding the input"):
        scdask.write_zarr(lazy, tmp_path)
    # a zarr input: nothing may be written inside it
    store = tmp_path / "in.zarr"
    scdask.write_zarr(lazy, store)
    zarr_before = _digest(store)
    with pytest.raises(scdask.InputError, match="lies inside the input"):
        scdask.write_h5ad(scdask.read_zarr(store), store / "X" / "out.h5ad")
    assert _digest(src) == before and _digest(store) == zarr_before


# -- scdask run --------------------------------------------------------------------------------
def _config(tmp_path: Path, source: Path, output: Path, **activity) -> Path:
    cfg = {
        "input": str(source),
        "output": str(output),
        "launcher": {"kind": "none"},
        "plots": False,
        "preprocess": {"n_top_genes": 200, "n_comps": 5, "umap": False},
        "activity": {"signature": "cytosig", "n_rand": 10, "levels": ["pseudobulk"], **activity},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_refuses_an_output_folder_that_would_replace_its_input(files, tmp_path, capsys):
    proj = tmp_path / "out" / "proj"
    proj.mkdir(parents=True)
    src = proj / "cells.h5ad"
    src.write_bytes(files["counts"].read_bytes())
    before = _digest(proj)
    assert main(["run", str(_config(tmp_path, src, proj))]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"scdask: error: refusing to write .*cells\.h5ad.*new path", err), err
    assert _digest(proj) == before  # no marker either: refused before any work

    # a result name that is a link to the input
    other = tmp_path / "other"
    other.mkdir()
    (other / "activity_pseudobulk.h5ad").symlink_to(src)
    assert main(["run", str(_config(tmp_path, src, other))]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert _digest(proj) == before


def test_run_that_fails_half_way_leaves_the_folder_marked_incomplete(
    files, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "results"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous, finished run
    real = scdask.activity.infer

    def fail_at_cell_level(data, *, level, **kwargs):
        if level == "cell":
            raise scdask.InputError("cell level failed on purpose")
        return real(data, level=level, **kwargs)

    monkeypatch.setattr(scdask.activity, "infer", fail_at_cell_level)
    cfg = _config(tmp_path, files["counts"], out, levels=["pseudobulk", "cell"])
    assert main(["run", str(cfg)]) == 2
    assert "cell level failed on purpose" in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["INCOMPLETE", "activity_pseudobulk.h5ad"]
    assert "has not finished" in (out / "INCOMPLETE").read_text()
    info = scdask.io.inspect(out / "activity_pseudobulk.h5ad")
    assert any("did not finish" in note for note in info.notes())


def test_run_that_finishes_writes_its_manifest_last(files, tmp_path):
    out = tmp_path / "results"
    assert main(["run", str(_config(tmp_path, files["counts"], out))]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["activity_pseudobulk.h5ad", "cells.h5ad", "manifest.json"]
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"activity_pseudobulk", "cells"}
    for entry in manifest["files"].values():
        assert (out / entry["path"]).stat().st_size == entry["bytes"]


@pytest.mark.slow
def test_sigterm_cleans_up_like_ctrl_c(files, tmp_path):
    """SIGTERM half-way through a run: exit 143, no temporary file, the folder stays marked
    INCOMPLETE, the input untouched."""
    out = tmp_path / "results"
    src = tmp_path / "in.h5ad"
    src.write_bytes(files["counts"].read_bytes())
    before = _digest(src)
    cfg = _config(tmp_path, src, out, levels=["pseudobulk", "cell"])
    text = yaml.safe_load(cfg.read_text())
    text["activity"]["n_rand"] = 1000
    text["activity"]["signature"] = "secact"
    cfg.write_text(yaml.safe_dump(text))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scdask.cli", "run", str(cfg)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "activity_pseudobulk.h5ad").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # into the cell level
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    assert "INCOMPLETE" in names and "manifest.json" not in names
    assert not [n for n in names if n.startswith(".")]  # no hidden temporary file
    assert _digest(src) == before


# -- configuration and options -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"activity": {"n_rand": "100"}}, r"activity\.n_rand must be a whole number"),
        ({"preprocess": {"min_genes": "two hundred"}}, r"preprocess\.min_genes"),
        ({"activity": {"levels": ["pseudobulk", "tissue"]}}, r"activity\.levels"),
        ({"activity": {"n_rnd": 10}}, r"n_rnd"),
        ({"input": "nowhere.h5ad"}, r"nowhere\.h5ad"),
    ],
)
def test_bad_config_is_one_line_before_any_work(change, expect, files, tmp_path, capsys):
    cfg = yaml.safe_load(_config(tmp_path, files["counts"], tmp_path / "out").read_text())
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(expect, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["activity", "in.h5ad", "out.h5ad", "--n-rand", "-1"],
        ["activity", "in.h5ad", "out.h5ad", "--level", "tissue"],
        ["preprocess", "in.h5ad", "out.h5ad", "--min-genes", "two"],
        ["activity", "in.h5ad"],
    ],
)
def test_bad_options_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("--help')"), err


def test_help_shows_every_default_and_the_levels(capsys):
    with pytest.raises(SystemExit):
        main(["activity", "--help"])
    text = capsys.readouterr().out
    for level in ("cell", "pseudobulk", "spot", "bulk"):
        assert re.search(rf"^\s+{level}\s+\S", text, re.M), level
    assert "(default: cell_type)" in text  # the config's cell_type_col
    assert scdask._pipeline.DEFAULT_CONFIG["activity"]["cell_type_col"] == "cell_type"
    for command in ("preprocess", "activity", "convert", "synthetic", "demo", "cluster"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        options = re.split(r"\n  (?=--?\w)", text.split("options:", 1)[1])[1:]
        assert options, command
        for block in options:
            if not block.startswith("-h, --help"):
                assert "default:" in block, (command, block)


def test_info_flags_what_it_sees(files, capsys):
    assert main(["info", str(files["lognorm_with_counts_layer"])]) == 0
    out = capsys.readouterr().out
    assert "not counts" in out and "layers['counts']" in out
    assert main(["info", str(files["nan"])]) == 0
    assert "NaN" in capsys.readouterr().out


def test_python_users_get_the_same_error_on_their_own_compute(files):
    adata = scdask.read_h5ad(files["nan"])
    with pytest.raises(scdask.InputError, match="NaN or infinite"):
        (adata.X * 2).mean(axis=0).compute(scheduler="threads")


@pytest.mark.parametrize("writer", ["write_h5ad", "write_zarr"])
def test_an_existing_folder_is_never_replaced(writer, files, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    before = _digest(folder)
    with pytest.raises(scdask.InputError, match="it is a folder"):
        getattr(scdask, writer)(scdask.read_h5ad(files["counts"]), folder)
    assert main(["convert", str(files["counts"]), str(folder)]) == 2
    assert "it is a folder" in capsys.readouterr().err
    assert _digest(folder) == before
