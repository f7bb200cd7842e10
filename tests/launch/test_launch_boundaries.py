"""Only scdask.launch may create clusters: no other module imports a cluster class."""

from __future__ import annotations

import ast
from pathlib import Path

import scdask

CLUSTER_NAMES = {
    "LocalCluster",
    "LocalCUDACluster",
    "SLURMCluster",
    "SpecCluster",
    "JobQueueCluster",
}
CLUSTER_MODULES = {"dask_jobqueue", "dask_cuda"}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in CLUSTER_MODULES:
                found.append(f"{path}:{node.lineno}: from {module} import ...")
            found += [
                f"{path}:{node.lineno}: imports {a.name}"
                for a in node.names
                if a.name in CLUSTER_NAMES
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{path}:{node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in CLUSTER_MODULES
            ]
        elif isinstance(node, ast.Attribute) and node.attr in CLUSTER_NAMES:
            found.append(f"{path}:{node.lineno}: uses .{node.attr}")
    return found


def test_no_cluster_class_outside_launch():
    package = Path(scdask.__file__).parent
    launch = package / "launch"
    files = [p for p in package.rglob("*.py") if launch not in p.parents]
    assert files, "no source files found"
    offences = [o for p in files for o in _offences(p)]
    assert offences == []


def test_the_check_sees_an_offence(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from distributed import LocalCluster\nimport dask_cuda\n")
    assert len(_offences(bad)) == 2
