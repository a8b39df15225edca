"""The docs site builds, every page is in its navigation, and the README stays a front door that points to it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def nav_pages(nav: list) -> set[str]:
    """Every page named in mkdocs.yml's nav, at any depth (`- Title: page.md`, `- page.md` or a section's list)."""
    pages: set[str] = set()
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            if isinstance(value, list):
                pages |= nav_pages(value)
            elif isinstance(value, str) and not value.startswith(("http://", "https://")):
                pages.add(value)
    return pages


def mkdocs_config() -> dict:
    # mkdocs.yml may hold `!!python/name:` tags (Material's emoji, superfences); skip them as a plain loader can't
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason='mkdocs is not installed: pip install -e ".[docs]"'
)
def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a page outside the nav or a failing API page is an error."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("fintrl.scoring.scorer.LabelScorer") > 0


def test_every_docs_page_is_in_the_nav() -> None:
    config = mkdocs_config()
    assert config["docs_dir"] == "docs"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    named = nav_pages(config["nav"])
    assert pages - named == set(), "pages missing from mkdocs.yml's nav"
    assert named - pages == set(), "nav entries without a page"


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 260, "the README grew: move the manual's part into docs/"
    assert "make quickstart" in readme and "make test" in readme
    assert "(docs/index.md)" in readme and "mkdocs serve" in readme
    for link in re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", readme):
        if not link.startswith(("http://", "https://", "mailto:")):
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `>>>` example in fintrl's docstrings runs and prints what it shows (usage sketches that need a finished
    run or the Hub are ```python blocks instead, which nothing claims to run)."""
    import doctest
    import importlib

    monkeypatch.chdir(ROOT)  # examples name recipes/... as a user in a checkout would
    package = ROOT / "fintrl"
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted(package.rglob("*.py"))
        if ">>>" in p.read_text(encoding="utf-8")
    ]
    assert modules, "no docstring examples found: the check would pass vacuously"
    for name in modules:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"
        assert result.attempted > 0, f"{name} has '>>>' outside a docstring example"
