"""The house rules, checked: one owner for the run folder's file names, rooms that import one way (modules and
packages alike), short modules."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import fintrl.run_folder as rf

PACKAGE = Path(rf.__file__).parent
MODULES = {
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
    for p in sorted(PACKAGE.rglob("*.py"))
    if p.name not in ("__init__.py", "__main__.py")
}


def imports(path: Path) -> set[str]:
    """The fintrl modules `path` imports (dotted, below `fintrl`), at the top or inside a function."""
    text = path.read_text()
    found = set(re.findall(r"^\s*from fintrl\.([\w.]+) import", text, flags=re.M))
    found |= set(re.findall(r"^\s*import fintrl\.([\w.]+)", text, flags=re.M))
    for base, group in re.findall(r"^\s*from fintrl((?:\.\w+)*) import \(?([\w, ]+)\)?$", text, flags=re.M):
        for name in (n.strip().split(" as ")[0] for n in group.split(",")):
            found.add(f"{base.lstrip('.')}.{name}".lstrip("."))
    return {name for name in found if name in MODULES}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def room(module: str) -> str:
    """A module's room: its package below fintrl, or the module itself at the top (the run spine)."""
    return module.split(".")[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> list[str] | None:
        if node in trail:
            return [*trail[trail.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, (*trail, node)):
                return cycle
        done.add(node)
        return None

    return next((c for node in sorted(graph) if (c := visit(node, ()))), None)


def test_run_folder_file_names_live_in_one_module() -> None:
    names = [v for k, v in vars(rf).items() if k.isupper() and isinstance(v, str) and "." in v]
    assert {"recipe.yaml", "metrics.json", "adapter_config.json", "README.md"} <= set(names)
    offenders = [
        f"{module}: {name}"
        for module, path in MODULES.items()
        if module != "run_folder"
        for name in names
        if re.search(rf"[\"']{re.escape(name)}[\"']", path.read_text())
    ]
    assert offenders == []


def test_the_import_graph_is_found() -> None:
    """The checks below see imports of every form the code uses (a test that can fail: an empty graph passes all)."""
    assert "recipe.schema" in GRAPH["runner"] or "recipe.schema" in GRAPH["recipe.checks"]
    assert "errors" in GRAPH["run_folder"]
    assert len(MODULES) > 40


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(GRAPH) is None


def test_no_import_cycle_between_packages() -> None:
    rooms: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    assert find_cycle(rooms) is None


SUBMODULES = {f"fintrl.{name}" for name in MODULES}


def stale_imports(paths: list[Path]) -> list[str]:
    """`from fintrl.x import name` lines (top-level or inside a function) whose name module x no longer has."""
    stale = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fintrl")):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in SUBMODULES:
                    stale.append(f"{path.name}:{node.lineno} from {node.module} import {alias.name}")
    return stale


def test_lazy_imports_name_what_exists() -> None:
    """An import inside a function runs only on its path (a GPU part, an optional engine): a rename upstream must
    fail here, not on a lent GPU."""
    assert stale_imports(sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "benchmarks").glob("*.py"))) == []


def test_stale_import_finder_finds_one(tmp_path: Path) -> None:
    old = tmp_path / "old.py"
    old.write_text("def f():\n    from fintrl.distributed import launch_from_env\n")
    assert stale_imports([old]) == ["old.py:2 from fintrl.distributed import launch_from_env"]


def test_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_400_lines() -> None:
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_package_inits_stay_light() -> None:
    """`fintrl --help` stays instant: a package's __init__ holds its docstring and nothing that imports."""
    heavy = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE and re.search(r"^\s*(from|import) ", p.read_text(), flags=re.M)
    ]
    assert heavy == []


# Objects several commands need, each built by hand in one place only: (the constructor call, the modules allowed
# to make it). Everyone else calls the owner: LabelScorer.from_eval / Target.scorer, PromptBuilder.resolve /
# from_record / RunFolder.prompt, run_folder's predictions reader and writer, evaluation.report.score_report.
ONE_OWNER = {
    "LabelScorer(": {"scoring.scorer"},
    "PromptBuilder(": {"model.prompts"},
    "ArgumentParser(": {"cli.main"},
    "classification_metrics(": {"metrics.classification", "evaluation.report"},  # + baselines and curve points
    "bootstrap_intervals(": {"evaluation.report"},
    "validate_repo_id(": {"hub.ids"},  # every Hub-id check
    "hf_hub_download(": {"hub.download"},  # every read from the Hub: retried, errors mapped
    "snapshot_download(": {"hub.download"},
}


def test_each_shared_object_has_one_constructor() -> None:
    """A grep that can fail: building one of these anywhere else (by hand) is an offence."""
    offenders = [
        f"{module}: {call}"
        for call, owners in ONE_OWNER.items()
        for module, path in MODULES.items()
        if module not in owners and re.search(rf"(?<![\w.])(?<!def ){re.escape(call)}", path.read_text())
    ]
    assert offenders == []


def test_predictions_are_read_and_written_by_run_folder_alone() -> None:
    """No module opens predictions.jsonl itself: `run_folder.read_predictions` / `write_predictions` do."""
    offenders = [
        module
        for module, path in MODULES.items()
        if module != "run_folder"
        and "PREDICTIONS" in (text := path.read_text())
        and re.search(r"PREDICTIONS\)\.(open|read_text|write_text)|json\.loads\(line", text)
    ]
    assert offenders == []


def test_library_functions_take_no_argparse_namespace() -> None:
    offenders = [
        module
        for module, path in MODULES.items()
        if not module.startswith("cli.") and re.search(r"argparse\.Namespace|(?<!\w)args: Any", path.read_text())
    ]
    assert offenders == []


def test_tests_mirror_the_packages() -> None:
    """A newcomer finds a package's tests under tests/<package>/."""
    tests = Path(__file__).parent
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages and {name for name in packages if not (tests / name).is_dir()} == set()
