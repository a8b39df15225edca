"""A sweep's search space: recipe fields and the values each may take, read from YAML and checked like a recipe.

```yaml
train.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}
train.num_train_epochs: {int: [1, 3]}
lora.r: [8, 16, 32]            # a list: one of these
data.balance: [true, false]
```

Every field must be one the recipe can take: the recipe is built and checked (`check_recipe`) at each end of every
range and with every listed value before any trial trains, so a typo or an impossible value is one line up front.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import RecipeError

if TYPE_CHECKING:
    import optuna

RANGES = ("uniform", "log_uniform", "int", "log_int")  # {kind: [low, high]}; a list is a choice of values
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Dimension:
    """One recipe field (`train.learning_rate`) and its values: a range (`kind`, `low`, `high`) or `choices`."""

    field: str
    kind: str  # one of RANGES, or "choice"
    low: float | None = None
    high: float | None = None
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Scalar:
        """The trial's value for this field (Optuna's sampler picks it)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.field, list(self.choices))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.kind == "log_int")
        return trial.suggest_float(self.field, self.low, self.high, log=self.kind == "log_uniform")

    def edges(self) -> list[Scalar]:
        """The values a recipe is checked with before the sweep: each end of a range, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind in ("int", "log_int") else float
        return [cast(self.low), cast(self.high)]


def override(field: str, value: Scalar) -> str:
    """A `--set` override for `field` = `value` (JSON is YAML: strings stay strings, null stays null)."""
    return f"{field}={json.dumps(value)}"


def load_space(path: str | Path) -> list[Dimension]:
    """The dimensions of a space file; one `RecipeError` naming the field and what to write instead."""
    from fintrl.recipe.yaml_io import load_yaml

    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RecipeError(f"--space {path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(
            f"--space {path}: empty; give at least one recipe field and its values, e.g. "
            "`train.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}` or `lora.r: [8, 16, 32]`"
        )
    return [_dimension(path, str(field), spec) for field, spec in raw.items()]


def _dimension(path: Path, field: str, spec: Any) -> Dimension:
    where = f"--space {path}: {field}"
    if "." not in field:
        raise RecipeError(f"{where}: give a recipe field as section.key (train.learning_rate, lora.r)")
    if isinstance(spec, list):
        if not spec:
            raise RecipeError(f"{where}: an empty list; give the values to try, e.g. [8, 16, 32]")
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in spec):
            raise RecipeError(f"{where}: list values must be numbers, strings, true/false or null")
        if len(set(map(json.dumps, spec))) != len(spec):
            raise RecipeError(f"{where}: a value is listed twice")
        return Dimension(field, "choice", choices=tuple(spec))
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in RANGES:
        raise RecipeError(
            f"{where}: give a list of values or one range, {{{' | '.join(RANGES)}: [low, high]}}; got {spec!r}"
        )
    kind, bounds = next(iter(spec.items()))
    numbers = isinstance(bounds, list) and len(bounds) == 2
    numbers = numbers and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    if not numbers or not all(math.isfinite(b) for b in bounds):
        raise RecipeError(f"{where}: {kind} takes [low, high], two finite numbers; got {bounds!r}")
    low, high = bounds
    if low >= high:
        raise RecipeError(f"{where}: {kind} [{low}, {high}]: low must be below high")
    if kind.startswith("log") and low <= 0:
        raise RecipeError(f"{where}: {kind} [{low}, {high}]: a log scale needs low above 0")
    if kind in ("int", "log_int") and not (float(low).is_integer() and float(high).is_integer()):
        raise RecipeError(f"{where}: {kind} [{low}, {high}]: give whole numbers")
    return Dimension(field, kind, float(low), float(high))


def check_space(dimensions: list[Dimension], recipe_path: str, overrides: list[str]) -> None:
    """Build and check the recipe with every edge value of every dimension: a field the recipe cannot take (unknown,
    wrong type, refused by TRL/PEFT/transformers) is refused here, before anything trains."""
    from fintrl.checks.recipe import check_recipe
    from fintrl.recipe.schema import load_recipe

    for dim in dimensions:
        for value in dim.edges():
            try:
                recipe = load_recipe(recipe_path, overrides=[*overrides, override(dim.field, value)])
                check_recipe(recipe)
            except RecipeError as err:
                raise RecipeError(f"--space: {dim.field} = {json.dumps(value)}: {err}") from None
            if recipe.seeds:
                raise RecipeError(
                    f"{recipe_path}: seeds {recipe.seeds}: a sweep trains one run per trial; "
                    "drop seeds (--set seeds=null)"
                )
