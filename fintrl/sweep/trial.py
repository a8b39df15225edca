"""One trial of a sweep, whichever engine runs it: the recipe with the trial's values, trained and scored as
`fintrl run` does into the trial's own run folder, its learning-curve points handed to the engine's pruner."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.sweep.results import fmt_value, trial_dir
from fintrl.sweep.space import override

if TYPE_CHECKING:
    from fintrl.train import CurveHook

CURVE = {"accuracy", "f1_macro"}  # what the learning curve scores during training: the metrics pruning can follow


def run_trial(
    number: int,
    values: dict[str, Any],
    recipe_path: str,
    overrides: list[str],
    out: Path,
    on_curve_point: CurveHook | None = None,
) -> dict[str, Any]:
    """Train trial `number` with `values` (recipe field -> value); returns its report (metrics.json)."""
    from fintrl.recipe.schema import load_recipe
    from fintrl.runner import run

    sets = [*overrides, *(override(field, value) for field, value in values.items())]
    recipe = load_recipe(recipe_path, overrides=sets, output_dir=str(trial_dir(out, number)))
    print(f"fintrl: trial {number}: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items()), flush=True)
    return run(recipe, overwrite=True, on_curve_point=on_curve_point)
