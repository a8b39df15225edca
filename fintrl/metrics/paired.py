"""Two sets of predictions on the same rows, compared row by row: is B really better than A?

Both sides scored the same rows, so the comparison is paired: the bootstrap resamples rows and takes both sides'
answers on them (`stats.paired_differences`), and McNemar's exact test looks only at the rows where exactly one side
is right. The verdict rule: B (or A) is better only when the 95 % interval of the accuracy difference B - A excludes
0 AND McNemar's p < 0.05; otherwise there is no detectable difference.

Several pairs on the same rows (A and B trained once per seed) pool into one verdict by the same rule
(`compare_pooled`): the mean difference over the pairs, its interval from row resamples applied to every pair alike
(`stats.pooled_differences`), and McNemar's exact test on the discordant rows of all pairs together. Under "no
effect", each pair's runs are exchangeable on every row, so each discordant (pair, row) falls either way with
probability 1/2: the rows are the sample, and the seeds' spread enters through the mean.

Rows are `predictions.jsonl` rows: `text`, `gold`, `prediction` (label names; None for an invalid answer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fintrl.errors import RunFolderError
from fintrl.metrics.stats import (
    HEADLINE,
    RESAMPLES,
    SEED,
    class_f1,
    format_interval,
    mcnemar,
    paired_differences,
    pooled_differences,
)
from fintrl.run_folder import PREDICTIONS, RunFolder, parse_predictions, read_predictions

logger = logging.getLogger(__name__)
ALPHA = 0.05
SAMPLE = 5  # flipped rows shown each way
NAMES = {"accuracy": "accuracy", "f1_macro": "macro-F1", "f1_weighted": "weighted-F1", "mcc": "MCC"}
RULE = (
    "B (or A) is better only when the 95 % paired-bootstrap interval of the accuracy difference B - A excludes 0 "
    "and McNemar's exact test gives p < 0.05; otherwise: no detectable difference"
)

Rows = list[dict[str, Any]]


def same_rows(a: Rows | None, b: Rows | None) -> bool:
    """Both cover the same eval rows: the same texts with the same gold labels, in the same order."""
    return (
        a is not None and b is not None and [(r["text"], r["gold"]) for r in a] == [(r["text"], r["gold"]) for r in b]
    )


def _discordant(a: Rows, b: Rows) -> tuple[list[int], list[int]]:
    """Row indices B gets right and A wrong, and the reverse."""
    b_only = [i for i, (x, y) in enumerate(zip(a, b)) if y["prediction"] == y["gold"] != x["prediction"]]
    a_only = [i for i, (x, y) in enumerate(zip(a, b)) if x["prediction"] == x["gold"] != y["prediction"]]
    return b_only, a_only


def flips(a: Rows, b: Rows) -> dict[str, Any]:
    """`{gained, lost, p_value}`: rows B gets right and A wrong, the reverse, and McNemar's exact p-value."""
    b_only, a_only = _discordant(a, b)
    return {"gained": len(b_only), "lost": len(a_only), "p_value": mcnemar(len(b_only), len(a_only))}


def verdict(difference: float, interval: list[float], p_value: float, a: str = "A", b: str = "B") -> str:
    """One line, by RULE: `B is better: +0.021 accuracy, 95 % CI [+0.008, +0.034], McNemar p = 0.003`."""
    evidence = f"{difference:+.3f} accuracy, 95 % CI [{interval[0]:+.3f}, {interval[1]:+.3f}], McNemar p = "
    evidence += f"{p_value:.3f}" if p_value >= 0.001 else f"{p_value:.1e}"
    if (interval[0] > 0 or interval[1] < 0) and p_value < ALPHA:
        return f"{b if difference > 0 else a} is better: {evidence}"
    return f"no detectable difference: {evidence}"


def compare_rows(
    a: Rows,
    b: Rows,
    labels: list[str] | None = None,
    *,
    names: tuple[str, str] = ("A", "B"),
    sample: int = SAMPLE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """The whole comparison of two sides' predictions on the same rows (checked): metric differences B - A with
    paired-bootstrap 95 % intervals, McNemar's exact test, the rows flipped each way (the first `sample` of each, in
    row order), per-class F1 differences, and the verdict (`names` fill it: A, B or e.g. v1.0.0, this version)."""
    if not same_rows(a, b):
        raise ValueError("the two sides' predictions are not on the same rows")
    labels = labels or sorted({r["gold"] for r in a} | {r["prediction"] for r in a + b if r["prediction"] is not None})
    index = {name: i for i, name in enumerate(labels)}
    gold = [index[r["gold"]] for r in a]
    pred_a, pred_b = ([index.get(r["prediction"], -1) for r in side] for side in (a, b))
    k = len(labels)
    metrics = paired_differences(gold, pred_a, pred_b, k, resamples=resamples, seed=seed)
    bootstrap = metrics.pop("bootstrap")
    b_only, a_only = _discordant(a, b)
    p_value = mcnemar(len(b_only), len(a_only))
    f1 = {"a": class_f1(gold, pred_a, k), "b": class_f1(gold, pred_b, k)}
    accuracy = metrics["accuracy"]

    def shown(rows: list[int]) -> list[dict[str, Any]]:
        return [
            {"text": a[i]["text"], "gold": a[i]["gold"], "a": a[i]["prediction"], "b": b[i]["prediction"]}
            for i in rows[:sample]
        ]

    return {
        "n": len(a),
        "labels": labels,
        "metrics": metrics,
        "bootstrap": bootstrap,
        "mcnemar": {
            "b_right_a_wrong": len(b_only),
            "a_right_b_wrong": len(a_only),
            "p_value": p_value,
            "test": "exact two-sided binomial test of the discordant rows, p = 1/2 (scipy.stats.binomtest)",
        },
        "flips": {"b_right_a_wrong": shown(b_only), "a_right_b_wrong": shown(a_only)},
        "per_class_f1": {
            label: {"a": float(f1["a"][i]), "b": float(f1["b"][i]), "difference": float(f1["b"][i] - f1["a"][i])}
            for i, label in enumerate(labels)
        },
        "verdict": verdict(accuracy["difference"], accuracy["interval"], p_value, *names),
        "rule": RULE,
    }


def compare_pooled(
    pairs: list[tuple[Rows, Rows]],
    labels: list[str] | None = None,
    *,
    names: list[tuple[str, str]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """B against A over several pairs of predictions on the same rows (one pair per seed), pooled by RULE: the mean
    metric differences with paired-bootstrap 95 % intervals, McNemar's exact test on all pairs' discordant rows, each
    pair's accuracies and flips (`names`: each pair's sides, A1 and B1 ... unless given), and the verdict."""
    if not pairs:
        raise ValueError("no pairs to pool")
    first = pairs[0][0]
    if not all(same_rows(first, a) and same_rows(first, b) for a, b in pairs):
        raise ValueError("the pairs' predictions are not all on the same rows")
    labels = labels or sorted(
        {r["gold"] for r in first} | {r["prediction"] for a, b in pairs for r in a + b if r["prediction"] is not None}
    )
    index = {name: i for i, name in enumerate(labels)}
    gold = [index[r["gold"]] for r in first]
    coded = [tuple([index.get(r["prediction"], -1) for r in side] for side in pair) for pair in pairs]
    metrics = pooled_differences(gold, coded, len(labels), resamples=resamples, seed=seed)
    bootstrap = metrics.pop("bootstrap")
    names = names or [(f"A{i}", f"B{i}") for i in range(1, len(pairs) + 1)]
    each = [
        {"a": x, "b": y, "accuracy": {"a": _accuracy(a), "b": _accuracy(b)}, **flips(a, b)}
        for (x, y), (a, b) in zip(names, pairs, strict=True)
    ]
    gained, lost = sum(p["gained"] for p in each), sum(p["lost"] for p in each)
    p_value = mcnemar(gained, lost)
    accuracy = metrics["accuracy"]
    return {
        "n": len(first),
        "labels": labels,
        "pairs": each,
        "metrics": metrics,
        "bootstrap": bootstrap | {"pooled": f"the mean over {len(pairs)} pairs, each resample applied to all alike"},
        "mcnemar": {
            "b_right_a_wrong": gained,
            "a_right_b_wrong": lost,
            "p_value": p_value,
            "test": "exact two-sided binomial test of every pair's discordant rows together, p = 1/2",
        },
        "verdict": verdict(accuracy["difference"], accuracy["interval"], p_value),
        "rule": RULE,
    }


def _accuracy(rows: Rows) -> float:
    return sum(r["prediction"] == r["gold"] for r in rows) / len(rows)


def _metric_table(metrics: dict[str, Any], a: str, b: str) -> list[str]:
    rows = [f"{'metric':<12} {a:>7} {b:>7}  B - A, 95 % CI"]
    for key in HEADLINE:
        m = metrics[key]
        diff = format_interval(m["difference"], m["interval"], signed=True)
        rows.append(f"{NAMES[key]:<12} {m['a']:>7.3f} {m['b']:>7.3f}  {diff}")
    return rows


def _mcnemar_line(test: dict[str, Any], title: str, unit: str) -> str:
    return (
        f"{title}: B right where A is wrong on {test['b_right_a_wrong']} {unit}, A right where B is wrong on "
        f"{test['a_right_b_wrong']}: p = {test['p_value']:.4g}"
    )


def render(report: dict[str, Any]) -> str:
    """The comparison as `fintrl compare` prints it; the verdict is the last line."""
    a, b = report.get("a", "A"), report.get("b", "B")
    lines = [f"A: {a}", f"B: {b}", f"rows: {report['n']} ({report.get('rows', 'the same eval rows')})"]
    data = report.get("evaluation_data") or {}
    if data.get("same") is False:
        lines.append(
            f"their own evaluation data differ (eval rows sha256 {data['a_eval_sha256'][:12]} vs "
            f"{data['b_eval_sha256'][:12]}): both are compared on the rows above"
        )
    lines += ["", *_metric_table(report["metrics"], "A", "B")]
    test = report["mcnemar"]
    lines += [
        "",
        _mcnemar_line(test, "McNemar's exact test", "rows"),
        "per-class F1 (A -> B): "
        + ", ".join(
            f"{n} {f['a']:.3f} -> {f['b']:.3f} ({f['difference']:+.3f})" for n, f in report["per_class_f1"].items()
        ),
    ]
    for key, title, count in (
        ("b_right_a_wrong", "B right, A wrong", test["b_right_a_wrong"]),
        ("a_right_b_wrong", "A right, B wrong", test["a_right_b_wrong"]),
    ):
        lines.append(f"{title}: {count} rows" + (", e.g.:" if count else ""))
        for row in report["flips"][key]:
            text = row["text"] if len(row["text"]) <= 100 else row["text"][:97] + "..."
            lines.append(f"  gold {row['gold']}, A {row['a']}, B {row['b']}: {text}")
    return "\n".join([*lines, "", report["verdict"]])


def render_pooled(report: dict[str, Any]) -> str:
    """Several pairs pooled, as `fintrl compare A B A2 B2 ...` prints it after each pair's report; the pooled
    verdict is the last line."""
    lines = [f"pooled over {len(report['pairs'])} pairs (A, B), {report['n']} rows each:"]
    for pair in report["pairs"]:
        accuracy = pair["accuracy"]
        lines.append(
            f"  {pair['a']} -> {pair['b']}: accuracy {accuracy['a']:.3f} -> {accuracy['b']:.3f}, "
            f"{pair['gained']} rows gained, {pair['lost']} lost, McNemar p = {pair['p_value']:.4g}"
        )
    lines += ["", *_metric_table(report["metrics"], "mean A", "mean B")]
    mcnemar_line = _mcnemar_line(report["mcnemar"], "McNemar's exact test, all pairs", "(pair, row)s")
    return "\n".join([*lines, "", mcnemar_line, "", report["verdict"]])


def with_previous(run_dir: Path, previous: str, previous_text: str | None) -> dict[str, Any]:
    """The card's "Compared with the previous version": the run's predictions against those `previous` published
    (`previous_text`: its predictions.jsonl, None when it has none), when both are on the same rows."""
    before = None
    if previous_text is not None:
        try:
            before = parse_predictions(previous_text, f"{previous}'s {PREDICTIONS}")
        except RunFolderError as err:  # a hand-edited file on the Hub: no comparison, not a failed publish
            logger.warning("no comparison with %s: %s", previous, err)
    rows = read_predictions(Path(run_dir) / PREDICTIONS)
    if not same_rows(before, rows):
        why = "it has no saved predictions" if before is None else "it was evaluated on different rows"
        return {"previous": previous, "same_rows": False, "reason": why}
    report = compare_rows(before, rows, RunFolder(run_dir).labels(), names=(previous, "this version"))
    sentence = report["verdict"][:1].upper() + report["verdict"][1:]
    return {"previous": previous, "same_rows": True, **report, "verdict": sentence}
