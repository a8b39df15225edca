"""fintrl: instruction-tune causal LMs to classify financial text, score them exactly, publish them to the Hub.

The entry points, imported lazily so that `import fintrl` (and `fintrl --help`) stays instant:

```python
from fintrl import load_recipe, run, resolve_target, load_for_inference
report = run(load_recipe("recipes/quickstart.yaml"))
target = resolve_target("runs/quickstart")
model, tokenizer = load_for_inference(target)
```
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
    "Recipe": "fintrl.recipe.schema",
    "load_recipe": "fintrl.recipe.schema",
    "check_recipe": "fintrl.checks.recipe",
    "run": "fintrl.runner",
    "evaluate": "fintrl.evaluation.report",
    "RunFolder": "fintrl.run_folder",
    "Report": "fintrl.run_folder",
    "resolve_target": "fintrl.scoring.targets",
    "load_for_inference": "fintrl.scoring.targets",
    "LabelScorer": "fintrl.scoring.scorer",
    "publish": "fintrl.hub.publish",
    "list_versions": "fintrl.hub.versions",
    "export_merged": "fintrl.export.merge",
    "audit": "fintrl.audit.confident",
    "reproduce": "fintrl.reproduce",
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
    "reproduce",
    "resolve_target",
    "run",
]

if TYPE_CHECKING:
    from fintrl.audit.confident import audit
    from fintrl.checks.recipe import check_recipe
    from fintrl.errors import FintrlError
    from fintrl.evaluation.report import evaluate
    from fintrl.export.merge import export_merged
    from fintrl.hub.publish import publish
    from fintrl.hub.versions import list_versions
    from fintrl.recipe.schema import Recipe, load_recipe
    from fintrl.reproduce import reproduce
    from fintrl.run_folder import Report, RunFolder
    from fintrl.runner import run
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.scoring.targets import load_for_inference, resolve_target


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fintrl' has no attribute {name!r}")
