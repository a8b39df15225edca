"""`fintrl audit RUN`: rows whose gold label the model confidently disagrees with, ranked: candidates for relabelling.

Confident learning (Northcutt, Jiang and Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels"),
on out-of-sample probabilities (`fintrl.audit.folds` says where each split's come from). Per split:
- the threshold of label j is the mean probability of j over the rows whose gold label is j (how sure the model
  usually is of a j row);
- a row is *confident* in every label whose probability reaches that label's threshold; its suggested label is the
  confident one (of several, the most likely);
- it is flagged when it is confident in some label, the suggestion is not its gold label, and the model's most likely
  label is not the gold one either.
This is `cleanlab.filter.find_label_issues(filter_by="confident_learning")`, written out (tests/audit/test_audit.py
checks the two agree row for row when cleanlab is installed): the rule is a dozen lines of numpy, we need each row's
thresholds and suggestion (cleanlab returns a mask), and cleanlab would add a dependency and ~2 s of import to every
install for them. Thresholds are per split: the eval rows are scored by the run's adapter (calibrated), the
train rows by fold adapters trained on less data, and the two are not equally sure of themselves.
Flagged rows are ranked by margin, p(suggested) - p(gold): the most confident disagreement first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fintrl.errors import DataError, RecipeError
from fintrl.run_folder import AUDIT_CSV, AUDIT_SUMMARY, RunFolder, write_atomic

if TYPE_CHECKING:
    from fintrl.audit.folds import SplitScores

logger = logging.getLogger(__name__)

DEFAULT_FOLDS = 2  # fold training costs (K-1) x the run's training: K=2 once more, K=5 four times (docs: evaluation)
SPLITS = ("all", "train", "eval")
FUZZ = 1e-6  # cleanlab's floating-point slack: p >= t - FUZZ is confident; the gold label wins a tie for the argmax
NEVER = 2.0  # the threshold of a label no row has: no probability reaches it (cleanlab's convention)
METHOD = "confident learning (Northcutt et al. 2021): cleanlab's filter_by='confident_learning', per split"


@dataclass(frozen=True)
class LabelIssues:
    """The confident-learning verdict on one split's rows."""

    thresholds: np.ndarray  # [labels] per-label mean self-confidence
    suggested: np.ndarray  # [n] the confident label (-1: confident in none)
    flagged: np.ndarray  # [n] bool
    margin: np.ndarray  # [n] p(suggested) - p(gold) (-inf where there is no suggestion)
    confident_joint: np.ndarray  # [labels, labels] rows confident somewhere: gold (rows) x suggested (columns)


def confident_thresholds(probabilities: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """t_j = mean p_j over the rows whose gold label is j (NEVER for a label no row has), at least 2 x FUZZ."""
    p, gold = np.asarray(probabilities, dtype=float), np.asarray(gold)
    t = np.array([p[gold == j, j].mean() if (gold == j).any() else NEVER for j in range(p.shape[1])])
    return np.clip(t, 2 * FUZZ, None)


def find_label_issues(probabilities: np.ndarray, gold: np.ndarray) -> LabelIssues:
    """Confident learning's off-diagonal rows, less those the model itself predicts as gold (see the module doc)."""
    p, gold = np.asarray(probabilities, dtype=float), np.asarray(gold, dtype=int)
    n, k = p.shape
    thresholds = confident_thresholds(p, gold)
    confident = p >= thresholds - FUZZ
    count = confident.sum(1)
    suggested = np.where(count > 1, p.argmax(1), confident.argmax(1))  # several: the most likely (as cleanlab)
    suggested = np.where(count > 0, suggested, -1)
    favour_gold = p.copy()
    favour_gold[np.arange(n), gold] += FUZZ
    flagged = (count > 0) & (suggested != gold) & (favour_gold.argmax(1) != gold)
    p_suggested = np.where(suggested >= 0, p[np.arange(n), np.maximum(suggested, 0)], -np.inf)
    joint = np.zeros((k, k), dtype=int)
    np.add.at(joint, (gold[count > 0], suggested[count > 0]), 1)
    return LabelIssues(thresholds, suggested, flagged, p_suggested - p[np.arange(n), gold], joint)


# -- the audit --------------------------------------------------------------------------------------------------------
def audit(
    run_dir: str | Path, *, folds: int = DEFAULT_FOLDS, split: str = "all", seed: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Audit a finished run's rows: (every row, flagged ones first in rank order; the summary for audit.json).

    ```python
    rows, summary = audit("runs/fpb_50agree_smollm2", folds=2)
    summary["flagged"], summary["pairs"]
    ```
    """
    from fintrl.audit.folds import check_folds, cross_fit, eval_scores, in_sample

    start = time.perf_counter()
    if split not in SPLITS:
        raise RecipeError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    check_folds(folds)
    run = RunFolder(Path(run_dir)).require_finished("audit")
    recipe = run.recipe()
    labels = run.labels() or []
    seed = recipe.data.seed if seed is None else seed
    parts: list[SplitScores] = []
    if split in ("all", "eval"):
        parts.append(eval_scores(run, labels))  # read first: a run without predictions fails before any training
    if split in ("all", "train"):
        from fintrl.data.loading import load_labeled_data

        data = load_labeled_data(recipe.data)
        if data.labels != labels:
            raise DataError(f"label sets differ: the run was scored on {labels}, its data now has {data.labels}")
        check_folds(folds, np.asarray(data.train["label"]), labels)
        parts.insert(0, cross_fit(recipe, data, folds, seed) if folds else in_sample(run, data))
    rows, splits = [], {}
    for part in parts:
        issues = find_label_issues(part.probabilities, part.gold)
        rows += split_rows(part, issues, labels)
        splits[part.split] = split_summary(part, issues, labels, folds, seed)
    ranked = sorted((r for r in rows if r["flagged"]), key=lambda r: (-r["margin"], r["p_gold"]))
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    rest = sorted((r for r in rows if not r["flagged"]), key=lambda r: r["p_gold"])  # least sure of gold first
    pairs = Counter(f"{r['gold']} -> {r['suggested']}" for r in ranked)
    summary = {
        "run": str(run.path),
        "method": METHOD,
        "labels": labels,
        "n": len(rows),
        "flagged": len(ranked),
        "pairs": dict(pairs.most_common()),
        "splits": splits,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return ranked + rest, summary


def split_rows(part: SplitScores, issues: LabelIssues, labels: list[str]) -> list[dict[str, Any]]:
    """One dict per row: what audit.csv holds (probabilities rounded to 6 places, as predictions.jsonl)."""
    out = []
    for i, text in enumerate(part.texts):
        probs = part.probabilities[i]
        pred = part.predictions[i]
        sug = int(issues.suggested[i])
        out.append(
            {
                "rank": None,
                "flagged": bool(issues.flagged[i]),
                "split": part.split,
                "row": i,
                "gold": labels[part.gold[i]],
                "suggested": labels[sug] if sug >= 0 else None,
                "predicted": labels[pred] if pred >= 0 else None,
                "confidence": round(float(probs[pred] if pred >= 0 else probs.max()), 6),
                "p_gold": round(float(probs[part.gold[i]]), 6),
                "margin": round(float(issues.margin[i]), 6) if sug >= 0 else None,
                "fold": part.fold[i] if part.fold else None,
                "scored": part.scored[i],
                "text": text,
                **{f"p_{name}": round(float(p), 6) for name, p in zip(labels, probs)},
            }
        )
    return out


def split_summary(part: SplitScores, issues: LabelIssues, labels: list[str], folds: int, seed: int) -> dict[str, Any]:
    if part.split == "eval":
        how = "out-of-sample: the run's own predictions.jsonl (its adapter never trained on these rows)"
    elif folds:
        how = f"out-of-sample: {folds}-fold cross-fitting (stratified, seed {seed}), an adapter per fold"
    else:
        how = "in-sample: the run's adapter, which trained on these rows (biased: it flags fewer) (--folds 0)"
    pairs = Counter(f"{labels[g]} -> {labels[s]}" for g, s, f in zip(part.gold, issues.suggested, issues.flagged) if f)
    return {
        "n": len(part.texts),
        "flagged": int(issues.flagged.sum()),
        "scored": how,
        "folds": folds if part.split == "train" else None,
        "seed": seed if part.split == "train" and folds else None,
        "thresholds": {name: round(float(t), 6) for name, t in zip(labels, issues.thresholds)},
        "pairs": dict(pairs.most_common()),
        "confident_joint": {"labels": labels, "matrix": issues.confident_joint.tolist()},  # gold rows x suggested
    }


# -- output -----------------------------------------------------------------------------------------------------------
def write_audit(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """audit.csv (every row, flagged first; empty cells for None) and audit.json (the summary)."""
    buffer = io.StringIO()
    columns = list(rows[0]) if rows else ["rank", "flagged", "split", "row", "gold", "suggested", "predicted", "text"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(folder / AUDIT_CSV, buffer.getvalue())
    write_atomic(folder / AUDIT_SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def pair_table(pairs: dict[str, int], labels: list[str]) -> list[str]:
    """Flagged rows per (gold, suggested) as a table: gold labels down, suggested across."""
    cells = [[str(pairs.get(f"{g} -> {s}", 0)) if g != s else "-" for s in labels] for g in labels]
    head = ["gold \\ suggested", *labels]
    grid = [head] + [[g, *row] for g, row in zip(labels, cells)]
    widths = [max(len(r[i]) for r in grid) for i in range(len(head))]
    return ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in grid]


def report_lines(rows: list[dict[str, Any]], summary: dict[str, Any], top: int, out_dir: Path) -> list[str]:
    """What `fintrl audit` prints: the counts, the top rows, the class pairs and where the files are."""
    parts = [f"{name} {s['flagged']} of {s['n']} ({s['scored']})" for name, s in summary["splits"].items()]
    lines = [f"audit of {summary['run']}: {summary['flagged']} of {summary['n']} rows flagged; " + "; ".join(parts)]
    flagged = [r for r in rows if r["flagged"]][:top]
    if flagged:
        lines.append(f"top {len(flagged)} (most confident disagreement first):")
        lines.append(
            f"{'rank':>4}  {'split':<5} {'row':>5}  {'gold':<12} {'suggested':<12} {'p_gold':>6} {'p_sugg':>6}  text"
        )
        for r in flagged:
            text = " ".join(r["text"].split())
            text = text[:90] + ("..." if len(text) > 90 else "")
            lines.append(
                f"{r['rank']:>4}  {r['split']:<5} {r['row']:>5}  {r['gold'][:12]:<12} {r['suggested'][:12]:<12} "
                f"{r['p_gold']:>6.3f} {r['p_gold'] + r['margin']:>6.3f}  {text}"
            )
    lines.append("flagged rows per class pair:")
    lines += ["  " + line for line in pair_table(summary["pairs"], summary["labels"])]
    lines.append(f"written: {out_dir / AUDIT_CSV} (all {summary['n']} rows, flagged first), {out_dir / AUDIT_SUMMARY}")
    return lines


# -- command line -----------------------------------------------------------------------------------------------------
