"""An ensemble's report: the ensemble scored on the eval split like any target (`evaluate`), plus each member's own
accuracy, macro-F1, NLL and ECE on the same rows, so the gain over the members is in one file. What `fintrl eval A B`
and a recipe's `seeds:` write; with members that are run folders of this machine, the folder also names them
(`ensemble.json`), so it can be scored, served and published as one target."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fintrl.data.loading import LabeledData
    from fintrl.recipe.schema import EvalSection
    from fintrl.run_folder import Report
    from fintrl.scoring.ensemble import Ensemble


def evaluate_ensemble(
    ensemble: Ensemble,
    data: LabeledData,
    out_dir: Path,
    *,
    mode: str | None = None,
    calibrated: bool = True,
    section: EvalSection | None = None,
) -> Report:
    """Score `data`'s eval split with the ensemble (`section`, default the first member's eval settings) into
    `out_dir`; the report adds `ensemble` (members, which are calibrated, per-member headline metrics) and
    `inference`."""
    from fintrl.evaluation.report import evaluate, headline
    from fintrl.run_folder import RunFolder
    from fintrl.scoring.ensemble import ensemble_scorer, inference_form

    recipe = ensemble.members[0].recipe
    scorer = ensemble_scorer(ensemble, labels=data.labels, mode=mode, calibrated=calibrated)
    section = section or recipe.eval
    metrics = evaluate(scorer, data, section, out_dir, recipe.model.name_or_path)  # `model`: the base, as a run's
    gold = data.eval["label"]
    members = []
    for member, result in zip(ensemble.members, scorer.member_results):
        scored = member.calibrate(result) if calibrated else result
        members.append({"name": member.name, **headline(gold, scored, data.labels)})
    metrics["ensemble"] = ensemble.record() | {"per_member": members}
    metrics["inference"] = inference_form().record()
    folders = [member.local_folder for member in ensemble.members]
    if None not in folders:
        RunFolder(out_dir).write_ensemble(folders)
    return metrics
