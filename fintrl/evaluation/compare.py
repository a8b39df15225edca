"""`fintrl compare A B` (and `fintrl versions org/name --compare OLD NEW`): two models on the same eval rows;
`fintrl compare A B A2 B2 ...`: pairs of runs (one per seed) on the same rows, each compared and all pooled.

A side is a run folder, an eval output folder (`fintrl eval --output-dir`), an adapter folder, an ensemble folder or a
Hub repo at a version (`org/name@v1.0.0`; an ensemble's too). Saved predictions are reused when both sides'
`predictions.jsonl` cover the same rows (the same texts with the same gold labels, in the same order). Otherwise the
side that lacks them is scored now on the other side's rows, with its own recipe's prompt and scorer and its
calibration (`evaluation.report.evaluate`, or `evaluation.ensemble.evaluate_ensemble`, into a temporary folder); when
neither side has predictions, A's recipe gives the data and both are scored. The statistics
and the verdict rule: `fintrl.metrics.paired`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import DataError, RecipeError, RunFolderError
from fintrl.hub.download import read_file
from fintrl.hub.ids import is_hub_id
from fintrl.metrics.paired import Rows, compare_pooled, compare_rows, same_rows
from fintrl.run_folder import METRICS, PREDICTIONS, RunFolder, parse_predictions, read_predictions

if TYPE_CHECKING:
    from fintrl.data.loading import LabeledData

logger = logging.getLogger(__name__)


@dataclass
class Side:
    spec: str  # as the user gave it
    rows: Rows | None  # saved predictions, or those scored now
    labels: list[str] | None
    scorable: bool  # holds a recipe and weights (an eval output folder does not)
    how: str = "saved predictions"
    eval_sha256: str | None = None  # its report's fingerprint of the rows it was evaluated on (`fintrl.provenance`)


def load_side(spec: str) -> Side:
    """A side's saved predictions and label set, without loading any model."""
    from fintrl.scoring.targets import split_revision

    name, revision = split_revision(spec)
    folder = Path(name)
    if folder.is_dir():
        run = RunFolder(folder)
        scorable = run.is_run or run.is_ensemble
        report = run.metrics() if run.file(METRICS).is_file() else {}
        rows = read_predictions(folder / PREDICTIONS)
        return Side(spec, rows, run.labels(), scorable, eval_sha256=_fingerprint(report))
    if not is_hub_id(name):
        raise RunFolderError(f"{spec}: no such folder, and not a Hub repo (org/name or org/name@v1.0.0)")
    report = json.loads(read_file(name, METRICS, revision=revision) or "{}")
    predictions = read_file(name, PREDICTIONS, revision=revision)
    rows = parse_predictions(predictions, f"{spec}: {PREDICTIONS}") if predictions is not None else None
    labels = (report.get("data") or {}).get("labels") if isinstance(report, dict) else None
    return Side(spec, rows, labels, scorable=True, eval_sha256=_fingerprint(report))


def _fingerprint(report: object) -> str | None:
    provenance = report.get("provenance") if isinstance(report, dict) else None
    data = provenance.get("data") if isinstance(provenance, dict) else None
    value = data.get("eval_sha256") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _rows_as_data(rows: Rows, labels: list[str]) -> LabeledData:
    """The other side's eval rows as data to score (no train rows: no baselines)."""
    from datasets import ClassLabel, Dataset, Features, Value

    from fintrl.data.loading import LabeledData

    unknown = sorted({r["gold"] for r in rows} - set(labels))
    if unknown:
        raise DataError(f"gold labels {unknown} are not in the label set {labels}")
    features = Features({"text": Value("string"), "label": ClassLabel(names=labels)})
    rows_data = {"text": [r["text"] for r in rows], "label": [labels.index(r["gold"]) for r in rows]}
    return LabeledData(
        train=Dataset.from_dict({"text": [], "label": []}, features=features),
        eval=Dataset.from_dict(rows_data, features=features),
        labels=labels,
        source="compare",
        task="class",
        license=None,
        eval_split="the other side's eval rows",
    )


def score(side: Side, rows: Rows | None, labels: list[str] | None, trust_remote_code: bool = False) -> Rows:
    """Score `side` on `rows` (or, given none, on its own recipe's eval split) exactly as `fintrl eval` would."""
    from fintrl.data.loading import load_labeled_data
    from fintrl.evaluation.ensemble import evaluate_ensemble
    from fintrl.evaluation.report import evaluate
    from fintrl.scoring.ensemble import Ensemble, resolve_scored
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.scoring.targets import load_for_inference

    if not side.scorable:
        raise RunFolderError(
            f"{side.spec} has predictions on other rows, and no recipe or weights to score it again: compare its "
            "run folder, adapter or Hub repo instead"
        )
    resolved = resolve_scored([side.spec], trust_remote_code=trust_remote_code)
    target = resolved.members[0] if isinstance(resolved, Ensemble) else resolved
    if rows is None:
        data = load_labeled_data(target.recipe.data)
    else:
        data = _rows_as_data(rows, labels or target.labels or sorted({r["gold"] for r in rows}))
    if (target.labels or data.labels) != data.labels:
        raise DataError(f"label sets differ: {side.spec} was trained on {target.labels}, the rows have {data.labels}")
    section = target.recipe.eval.model_copy(update={"baselines": False})
    with tempfile.TemporaryDirectory(prefix="fintrl-compare-") as tmp:
        if isinstance(resolved, Ensemble):
            evaluate_ensemble(resolved, data, Path(tmp), section=section)
        else:
            model, tokenizer = load_for_inference(target)
            scorer = LabelScorer.from_eval(model, tokenizer, target.prompt_builder(data.labels), section)
            evaluate(scorer, data, section, Path(tmp), target.name, target.calibration)
        scored = read_predictions(Path(tmp) / PREDICTIONS) or []
    side.labels = side.labels or data.labels
    return scored


def _paired(a_spec: str, b_spec: str, trust_remote_code: bool) -> tuple[Side, Side, str, dict[str, Any]]:
    """Both sides with predictions on the same rows (saved, or scored now), which rows those are, and whether their
    own reports fingerprint the same evaluation data."""
    a, b = load_side(a_spec), load_side(b_spec)
    if a.labels and b.labels and a.labels != b.labels:
        raise DataError(f"label sets differ: A has {a.labels}, B has {b.labels}; only the same labels compare")
    labels = a.labels or b.labels
    differ = a.eval_sha256 is not None and b.eval_sha256 is not None and a.eval_sha256 != b.eval_sha256
    if same_rows(a.rows, b.rows):
        if differ:  # the reports contradict their own predictions: no paired test on rows nobody can vouch for
            raise RunFolderError(
                f"{a_spec} and {b_spec} hold predictions on the same rows, but their reports fingerprint different "
                f"evaluation data ({a.eval_sha256[:12]} vs {b.eval_sha256[:12]}); was one edited by hand? rerun them"
            )
        rows = "the same eval rows: both sides' saved predictions"
    elif a.rows is not None:
        b.rows, b.how, rows = score(b, a.rows, labels, trust_remote_code), "scored now on A's rows", "A's eval rows"
    elif b.rows is not None:
        a.rows, a.how, rows = score(a, b.rows, labels, trust_remote_code), "scored now on B's rows", "B's eval rows"
    else:
        a.rows, a.how = score(a, None, None, trust_remote_code), "scored now on its recipe's eval split"
        b.rows, b.how, rows = score(b, a.rows, a.labels, trust_remote_code), "scored now on A's rows", "A's eval split"
    if not same_rows(a.rows, b.rows):  # scored rows drop nothing; a mismatch here is a bug, not a user's error
        raise RecipeError(f"{a_spec} and {b_spec} could not be scored on the same rows")
    data = {
        "a_eval_sha256": a.eval_sha256,
        "b_eval_sha256": b.eval_sha256,
        "same": None if None in (a.eval_sha256, b.eval_sha256) else not differ,
    }
    if differ:
        logger.warning(
            "A and B were evaluated on different data (eval rows %s vs %s): the paired test uses %s, scored by both",
            a.eval_sha256[:12],
            b.eval_sha256[:12],
            rows,
        )
    return a, b, rows, data


def _report(a: Side, b: Side, rows: str, data: dict[str, Any]) -> dict[str, Any]:
    report = compare_rows(a.rows, b.rows, a.labels or b.labels)
    return {"a": a.spec, "b": b.spec, "a_rows": a.how, "b_rows": b.how, "rows": rows, "evaluation_data": data, **report}


def compare(a_spec: str, b_spec: str, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """The comparison report of B against A (`fintrl.metrics.paired.compare_rows`), with how each side's rows were
    had."""
    return _report(*_paired(a_spec, b_spec, trust_remote_code))


def compare_pairs(pairs: list[tuple[str, str]], *, trust_remote_code: bool = False) -> dict[str, Any]:
    """`{pairs: [each pair's comparison report], pooled: the pairs pooled}` (`fintrl.metrics.paired.compare_pooled`):
    A and B trained once per seed, all scored on the same rows.

    Example: `compare_pairs([("runs/a-seed42", "runs/b-seed42"), ("runs/a-seed7", "runs/b-seed7")])`."""
    sides = [_paired(a, b, trust_remote_code) for a, b in pairs]
    first, labels = sides[0][0], sides[0][0].labels or sides[0][1].labels
    for a, b, _, _ in sides[1:]:
        if not same_rows(first.rows, a.rows) or (a.labels or b.labels) != labels:
            raise DataError(
                f"{a.spec} and {b.spec} were scored on other rows or labels than {first.spec}; the pairs pooled must "
                "all be evaluated on the same rows"
            )
    pooled = compare_pooled([(a.rows, b.rows) for a, b, _, _ in sides], labels, names=list(pairs))
    return {"pairs": [_report(*side) for side in sides], "pooled": pooled}
