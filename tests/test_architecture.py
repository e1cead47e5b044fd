"""The code's shape is checked, not just described: the import contract (pyproject.toml, `make lint`), no import
cycles, and every `_target_` of conf/ importable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contract_holds() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # data is below train: an upward import (here a function-level one, which counts too)
        ("lmlab/data/splits.py", "\n\ndef _upward() -> None:\n    import lmlab.train  # noqa: F401\n", "Layers"),
        # data imports nothing of models
        ("lmlab/data/sources.py", "\nimport lmlab.models  # noqa: F401,E402\n", "Data imports nothing of models"),
        # the report reads run dirs, never trains
        ("lmlab/report/collect.py", "\nimport lmlab.tasks  # noqa: F401,E402\n", "The report reads run dirs only"),
    ],
)
def test_breaking_a_layer_fails_the_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "src" / module
    target.write_text(target.read_text() + line)
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout[-3000:]


def test_no_import_cycles_between_any_two_modules() -> None:
    import grimp
    import networkx as nx

    graph = grimp.build_graph("lmlab")
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    assert edges.number_of_edges() > 150  # the graph was really read (function-level imports included)
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def _targets(node: Any, where: str) -> list[tuple[str, str]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("_target_", "class") and isinstance(value, str) and "." in value and "${" not in value:
                found.append((value, where))
            found.extend(_targets(value, where))
    elif isinstance(node, list):
        for value in node:
            found.extend(_targets(value, where))
    return found


def test_every_target_in_conf_imports() -> None:
    from hydra.utils import get_object

    targets = [
        t
        for path in sorted((ROOT / "conf").rglob("*.yaml"))
        for t in _targets(yaml.safe_load(path.read_text()), str(path.relative_to(ROOT)))
    ]
    assert len(targets) >= 25
    for target, where in targets:
        assert get_object(target) is not None, f"{where}: {target}"
