"""fintrl: instruction-tune causal LMs to classify financial text, score them exactly, publish them to the Hub.

The entry points, imported lazily so that `import fintrl` (and `fintrl --help`) stays instant:

>>> from fintrl import load_recipe, run, resolve_target, load_for_inference
>>> report = run(load_recipe("recipes/quickstart.yaml"))
>>> target = resolve_target("runs/quickstart")
>>> model, tokenizer = load_for_inference(target)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fintrl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Recipe": "fintrl.recipe",
    "load_recipe": "fintrl.recipe",
    "check_recipe": "fintrl.checks",
    "run": "fintrl.runner",
    "evaluate": "fintrl.runner",
    "RunFolder": "fintrl.run_folder",
    "Report": "fintrl.run_folder",
    "resolve_target": "fintrl.targets",
    "load_for_inference": "fintrl.targets",
    "LabelScorer": "fintrl.scoring",
    "publish": "fintrl.hub",
    "list_versions": "fintrl.hub",
    "export_merged": "fintrl.export",
    "audit": "fintrl.audit",
    "FintrlError": "fintrl.errors",
}
__all__ = [
    "FintrlError",
    "LabelScorer",
    "Recipe",
    "Report",
    "RunFolder",
    "__version__",
    "check_recipe",
    "audit",
    "evaluate",
    "export_merged",
    "list_versions",
    "load_for_inference",
    "load_recipe",
    "publish",
    "resolve_target",
    "run",
]

if TYPE_CHECKING:
    from fintrl.audit import audit
    from fintrl.checks import check_recipe
    from fintrl.errors import FintrlError
    from fintrl.export import export_merged
    from fintrl.hub import list_versions, publish
    from fintrl.recipe import Recipe, load_recipe
    from fintrl.run_folder import Report, RunFolder
    from fintrl.runner import evaluate, run
    from fintrl.scoring import LabelScorer
    from fintrl.targets import load_for_inference, resolve_target


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fintrl' has no attribute {name!r}")
