"""``load_config``: every setting of ``scdask run`` is checked before any work starts."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import yaml

from scdask import InputError
from scdask._pipeline import _RULES, DEFAULT_CONFIG, ConfigError, load_config
from scdask.cli import main

# (config, a regex the one-line message must match)
BAD = [
    (
        {"activity": {"n_rand": "100"}},
        r"^activity\.n_rand must be a whole number >= 0, got '100' \(text\); "
        r"write it without quotes: n_rand: 100$",
    ),
    (
        {"preprocess": {"min_genes": "two hundred"}},
        r"preprocess\.min_genes .*'two hundred' \(text\)",
    ),
    ({"activity": {"n_rand": True}}, r"activity\.n_rand must be a whole number.*got true"),
    ({"activity": {"n_rand": -1}}, r"activity\.n_rand must be a whole number >= 0, got -1"),
    (
        {"activity": {"seed": 1.5}},
        r"activity\.seed must be a whole number >= 0, got 1\.5 \(number\)",
    ),
    ({"preprocess": {"n_top_genes": 0}}, r"preprocess\.n_top_genes must be a whole number >= 1"),
    ({"preprocess": {"n_comps": None}}, r"preprocess\.n_comps .*got null \(no value\)"),
    ({"preprocess": {"min_cells": [3]}}, r"preprocess\.min_cells .*got \[3\] \(list\)"),
    ({"preprocess": {"target_sum": 0}}, r"preprocess\.target_sum must be a number > 0, got 0"),
    (
        {"preprocess": {"target_sum": "1e4"}},
        r"target_sum.*write it without quotes: target_sum: 1e4",
    ),
    ({"preprocess": {"target_sum": float("inf")}}, r"preprocess\.target_sum .*got inf"),
    ({"preprocess": {"max_value": -2}}, r"preprocess\.max_value must be a number > 0 or null"),
    ({"preprocess": {"flavor": "seurat_v3"}}, r"preprocess\.flavor must be one of 'seurat', "),
    ({"preprocess": {"umap": "yes please"}}, r"preprocess\.umap must be true or false"),
    ({"plots": 1}, r"^plots must be true or false, got 1 \(whole number\)"),
    ({"plots": "false"}, r"plots .*write it without quotes: plots: false"),
    ({"chunk_size": 0}, r"^chunk_size must be 'auto' or a whole number >= 1"),
    ({"chunk_size": "big"}, r"^chunk_size .*got 'big' \(text\)"),
    ({"output": 3}, r"^output must be a folder path, got 3"),
    ({"input": ""}, r"^input must be 'sample' or the path"),
    ({"input": "no/such/atlas.h5ad"}, r"^input: no such file or folder 'no/such/atlas\.h5ad'"),
    ({"launcher": {"kind": "k8s"}}, r"^launcher\.kind must be one of 'local', 'cuda', "),
    ({"launcher": {"options": "n_workers=4"}}, r"^launcher\.options must be a mapping"),
    ({"launcher": "local"}, r"^launcher must be a mapping of settings, got 'local' \(text\)"),
    ({"activity": {"levels": ["pseudobulk", "tissue"]}}, r"activity\.levels must be one or more"),
    ({"activity": {"levels": []}}, r"activity\.levels .*got \[\] \(list\)"),
    ({"activity": {"levels": ["cell", "cell"]}}, r"activity\.levels .*without repeats"),
    ({"activity": {"levels": "pseudobulk, cell"}}, r"activity\.levels .*'pseudobulk, cell'"),
    ({"activity": {"layers": ["zscore", "p"]}}, r"activity\.layers must be one or more of 'beta'"),
    ({"activity": {"cell_type_col": 7}}, r"activity\.cell_type_col must be an obs column name"),
    ({"activity": {"cell_type_col": None}}, r"activity\.cell_type_col is null, but .*pseudobulk"),
    ({"activity": {"signature": "nosuch.tsv"}}, r"activity\.signature: 'nosuch\.tsv' is neither"),
    ({"activity": {"rng": "mt19937"}}, r"activity\.rng must be one of 'srand', 'gsl', 'numpy'"),
    ({"activity": {"dtype": "float16"}}, r"activity\.dtype must be one of 'float64', 'float32'"),
    ({"activity": {"n_rnd": 10}}, r"unknown key\(s\) \['n_rnd'\] in activity\."),
]


@pytest.mark.parametrize(("cfg", "message"), BAD, ids=[str(c) for c, _ in BAD])
def test_a_bad_value_is_one_line_naming_the_key_and_the_fix(cfg, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(cfg)
    text = str(exc.value)
    assert "\n" not in text
    unquoted = re.sub(r"'[^']*'", "", text)  # choices such as rng: 'numpy' may be named
    assert not re.search(r"\b(numba|pandas|dask|numpy|scipy|Traceback)\b", unquoted), text
    assert isinstance(exc.value, InputError) and isinstance(exc.value, ValueError)


def test_a_missing_input_names_the_path_and_the_current_folder():
    with pytest.raises(ConfigError) as exc:
        load_config({"input": "missing.h5ad"})
    assert "'missing.h5ad'" in str(exc.value) and os.getcwd() in str(exc.value)


def test_the_defaults_pass_unchanged():
    before = yaml.safe_dump(DEFAULT_CONFIG)
    assert load_config() == DEFAULT_CONFIG
    assert load_config({}) == load_config(None)
    assert yaml.safe_dump(DEFAULT_CONFIG) == before  # not mutated


def test_every_setting_has_one_rule_and_is_documented():
    def leaves(mapping, prefix=""):
        for key, value in mapping.items():
            if isinstance(value, dict) and key != "options":
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    keys = [rule[0] for rule in _RULES]
    assert sorted(keys) == sorted(leaves(DEFAULT_CONFIG))
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        assert f"``{key}``" in load_config.__doc__ or f"``{leaf}``" in load_config.__doc__, key


def test_good_values_are_normalised():
    cfg = load_config(
        {
            "chunk_size": 100.0,
            "launcher": {"kind": "none", "options": None},
            "preprocess": {"min_genes": 200.0, "max_value": None, "flavor": "cell_ranger"},
            "activity": {
                "levels": "pseudobulk",
                "layers": "zscore",
                "cell_type_col": ["cell_type", "sample"],
                "n_rand": np.int64(50),
                "signature": "CytoSig",
                "rng": "gsl",
                "dtype": "float32",
            },
            "plots": np.bool_(False),
        }
    )
    assert cfg["chunk_size"] == 100 and type(cfg["chunk_size"]) is int
    assert cfg["launcher"] == {"kind": "none", "options": {}}
    assert cfg["preprocess"]["min_genes"] == 200 and type(cfg["preprocess"]["min_genes"]) is int
    assert cfg["preprocess"]["max_value"] is None
    a = cfg["activity"]
    assert a["levels"] == ["pseudobulk"] and a["layers"] == ["zscore"]
    assert a["cell_type_col"] == ["cell_type", "sample"]
    assert a["n_rand"] == 50 and type(a["n_rand"]) is int
    assert cfg["plots"] is False


def test_a_yaml_file_reads_exponent_numbers_and_empty_sections(tmp_path):
    atlas = tmp_path / "atlas.h5ad"
    atlas.write_bytes(b"")
    sig = tmp_path / "sig.tsv"
    sig.write_text("gene\tA\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"input: {atlas}\n"
        "preprocess:\n"
        "  target_sum: 1e4\n"
        "  n_top_genes: 1.5e3\n"
        "launcher:\n"
        "activity:\n"
        "  levels: pseudobulk\n"
        "  n_rand: 1e2\n"
        f"  signature: {sig}\n"
    )
    cfg = load_config(path, output=str(tmp_path / "out"))
    assert cfg["input"] == str(atlas) and cfg["output"] == str(tmp_path / "out")
    assert cfg["preprocess"]["target_sum"] == 10000.0
    assert cfg["preprocess"]["n_top_genes"] == 1500
    assert cfg["launcher"] == DEFAULT_CONFIG["launcher"]
    assert cfg["activity"]["levels"] == ["pseudobulk"] and cfg["activity"]["n_rand"] == 100
    assert cfg["activity"]["signature"] == str(sig)


def test_overrides_replace_the_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("output: a\nplots: false\nactivity: {n_rand: 10, seed: 3}\n")
    cfg = load_config(path, output="b", activity={"n_rand": 20})
    assert cfg["output"] == "b" and cfg["plots"] is False
    assert cfg["activity"]["n_rand"] == 20 and cfg["activity"]["seed"] == 0
    with pytest.raises(ConfigError, match=r"^activity\.n_rand"):
        load_config(path, activity={"n_rand": "20"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("preprocess:\n\tmin_genes: 2\n", r"is not valid YAML: .* at line 2, column 1"),
        ("- input: sample\n", r"must hold a YAML mapping of settings .*got list"),
        ("activity: {n_rand: 10\n", r"is not valid YAML"),
        ("preprocess: 5\n", r"^preprocess must be a mapping of settings"),
    ],
)
def test_a_bad_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(path)
    assert "\n" not in str(exc.value)


def test_the_command_refuses_a_bad_value_before_any_work(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"output: {tmp_path / 'out'}\nactivity:\n  n_rand: '100'\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "scdask: error: activity.n_rand must be a whole number >= 0, got '100' (text); "
        "write it without quotes: n_rand: 100"
    )
    assert not (tmp_path / "out").exists()
