"""Write constraints.txt: the exact versions of fintrl's tested dependency set (its requirements with the dev extras,
and everything they require in turn), as installed in this environment. `make setup` and CI install through it, so a
green CI means this locked set works; `pip install -e .` without it still takes the ranges in pyproject.toml.

    make setup && python scripts/lock.py      # refresh after changing pyproject.toml or upgrading on purpose

Left out: fintrl itself, and torch with its CUDA runtime packages (scripts/setup picks the build for the machine,
pinned by TORCH_VERSION there). Standard library only.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setup_check import Requirement, requirements  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "constraints.txt"
SKIP = re.compile(r"^(fintrl|torch|triton|nvidia-.*|cuda-.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure() -> dict[str, str]:
    """name -> installed version, for every distribution fintrl[dev] needs, followed through their requirements."""
    pending, seen, out = list(requirements()), set(), {}
    while pending:
        req = pending.pop()
        extras = req.extras
        key = (canonical(req.name), tuple(sorted(extras)))
        if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"lock: {req.name} is required but not installed; run `make setup` first")
        out[canonical(req.name)] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *extras)):
                pending.append(Requirement(str(sub).split(";")[0]))
    return {name: version for name, version in out.items() if not SKIP.match(name) and "+" not in version}


def main() -> int:
    pins = closure()
    header = (
        "# The tested dependency set of fintrl[dev] (scripts/lock.py writes it; make setup and CI install with it).\n"
    )
    OUT.write_text(header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    print(f"lock: {len(pins)} pins -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
