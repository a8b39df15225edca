"""The house rules, checked: one owner for the run folder's file names, rooms that import one way, short modules."""

from __future__ import annotations

import re
from pathlib import Path

import fintrl.run_folder as rf

PACKAGE = Path(rf.__file__).parent
MODULES = sorted(p for p in PACKAGE.glob("*.py"))


def imports(path: Path) -> set[str]:
    """The fintrl modules `path` imports, at the top or inside a function."""
    found = set(re.findall(r"^\s*from fintrl\.(\w+) import", path.read_text(), flags=re.M))
    found |= {
        name
        for group in re.findall(r"^\s*from fintrl import ([\w, ]+)$", path.read_text(), flags=re.M)
        for name in map(str.strip, group.split(","))
    }
    return {name for name in found if (PACKAGE / f"{name}.py").is_file()} - {path.stem}


def test_run_folder_file_names_live_in_one_module() -> None:
    names = [v for k, v in vars(rf).items() if k.isupper() and isinstance(v, str) and "." in v]
    assert {"recipe.yaml", "metrics.json", "adapter_config.json", "README.md"} <= set(names)
    offenders = [
        f"{path.name}: {name}"
        for path in MODULES
        if path.name != "run_folder.py"
        for name in names
        if re.search(rf"[\"']{re.escape(name)}[\"']", path.read_text())
    ]
    assert offenders == []


def test_no_import_cycle() -> None:
    graph = {path.stem: imports(path) for path in MODULES if path.stem != "__init__"}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, " -> ".join((*trail, node))
        for nxt in graph.get(node, ()):
            visit(nxt, (*trail, node))

    for module in graph:
        visit(module, ())


def test_no_module_over_400_lines() -> None:
    long = {p.name: n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
