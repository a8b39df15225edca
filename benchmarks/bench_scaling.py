"""Temperature against vector scaling on finished runs, without training again.

Each run's calibration rows (rebuilt from its recipe: the same seeded hold-out the run made) and its validation rows
are scored once, raw, with its adapter as the run scored them; each method is then fitted and checked on the
calibration rows exactly as `fintrl run` does (`calibrate_rows`: vector scaling falls back to one temperature where
its check refuses it) and applied to the validation rows. Printed per run: which map each method ended with and why,
validation accuracy / macro-F1 / NLL / ECE raw and with each, and the vector method's labels against the raw ones by
`fintrl compare`'s paired test (temperature scaling never moves a label). The raw scores are kept in the results, so
`--refit` measures again (after a change to the fit or the check) without a model.

    python -m benchmarks.bench_scaling --runs runs/bench/calibration/*-cal256     # ~2-5 min per run on 2 CPU cores
    python -m benchmarks.bench_scaling --refit runs/bench/scaling.json            # seconds: the saved scores
    python -m benchmarks.bench_scaling --report runs/bench/scaling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import environment, loadavg, stopwatch, write_report

METHODS = ("temperature", "vector")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN", help="finished run folders with calibration rows")
    p.add_argument("--refit", metavar="RESULTS.json", help="no model: fit, check and apply again on its saved scores")
    p.add_argument("--out", default="runs/bench/scaling.json")
    p.add_argument("--report", metavar="RESULTS.json", help="run nothing: print an earlier results JSON")
    return p.parse_args(argv)


def scored(run: Path) -> dict[str, Any]:
    """The run's calibration and validation rows, scored raw with its adapter (as `fintrl run` scored them)."""
    from fintrl.data.loading import load_labeled_data
    from fintrl.run_folder import read_json
    from fintrl.scoring.calibration import hold_out
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.scoring.targets import load_for_inference, resolve_target

    target = resolve_target(str(run))
    recipe = target.recipe
    data = load_labeled_data(recipe.data)
    _, held = hold_out(data, recipe.eval, recipe.data.seed)
    if held is None:
        raise SystemExit(f"bench_scaling: {run} held no calibration rows out (eval.calibration_samples 0?)")
    model, tokenizer = load_for_inference(target)
    scorer = LabelScorer.from_eval(model, tokenizer, target.prompt_builder(data.labels), recipe.eval)
    with stopwatch() as clock:
        calibration_rows, validation = scorer.score(held["text"]), scorer.score(data.eval["text"])

    def rows(result: Any, gold: list[int]) -> dict[str, Any]:
        return {"probabilities": result.probabilities.tolist(), "predictions": result.predictions, "gold": gold}

    return {
        "run": run.name,
        "labels": data.labels,
        "seed": recipe.data.seed,
        "mode": validation.mode,
        "calibration": rows(calibration_rows, list(held["label"])),
        "validation": rows(validation, list(data.eval["label"])),
        "run_accuracy": read_json(run / "metrics.json")["accuracy"],  # raw labels are the run's: a sanity check
        "score_seconds": round(clock.seconds, 1),
    }


def measure(scores: dict[str, Any]) -> dict[str, Any]:
    """Each method fitted and checked on the calibration rows as a run does, applied to the validation rows."""
    import numpy as np

    from fintrl.evaluation.report import headline
    from fintrl.scoring.calibration import calibrate_rows
    from fintrl.scoring.scorer import ScoreResult

    held, val, labels = scores["calibration"], scores["validation"], scores["labels"]
    raw = ScoreResult(val["predictions"], np.asarray(val["probabilities"]), scores["mode"])
    gold = val["gold"]
    out: dict[str, Any] = {"run": scores["run"], "n_calibration": len(held["gold"]), "n_validation": len(gold)}
    out |= {"raw": headline(gold, raw, labels), "run_accuracy": scores["run_accuracy"]}
    predictions: dict[str, list[int]] = {}
    for method in METHODS:
        probabilities = np.asarray(held["probabilities"])
        calibration = calibrate_rows(probabilities, held["gold"], scores["mode"], scores["seed"], method)
        result = calibration.apply_result(raw)
        predictions[method] = result.predictions
        check = calibration.check or {}
        out[method] = headline(gold, result, labels) | {
            "used": "none" if calibration.scaling.identity else calibration.method,
            "reason": check.get("reason"),
            "check": {k: v for k, v in (check.get("vector") or check).items() if k != "folds"},
            "labels_changed": sum(a != b for a, b in zip(raw.predictions, result.predictions)),
        }
    out["vector_vs_raw"] = _paired(gold, raw.predictions, predictions["vector"], labels)
    return out | {"score_seconds": scores["score_seconds"], "scores": scores}


def _paired(gold: list[int], raw: list[int], vector: list[int], labels: list[str]) -> dict[str, Any]:
    """The vector method's labels against the raw ones: `fintrl compare`'s paired bootstrap and McNemar test."""
    from fintrl.metrics.paired import compare_rows

    sides = [
        [{"text": str(i), "gold": labels[g], "prediction": labels[p]} for i, (g, p) in enumerate(zip(gold, side))]
        for side in (raw, vector)
    ]
    verdict = compare_rows(*sides, labels, names=("raw", "vector"))
    accuracy = verdict["metrics"]["accuracy"]
    return {
        "difference": accuracy["difference"],
        "interval": accuracy["interval"],
        "p_value": verdict["mcnemar"]["p_value"],
        "verdict": verdict["verdict"],
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "| run | acc raw / temperature / vector | macro-F1 raw / vector | NLL raw / T / vector | ECE raw / T / vector "
        "| temperature method ends with | vector method ends with (why) | vector vs raw |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in report["rows"]:
        raw, t, v, d = r["raw"], r["temperature"], r["vector"], r["vector_vs_raw"]
        lines.append(
            f"| {r['run']} | {raw['accuracy']:.3f} / {t['accuracy']:.3f} / {v['accuracy']:.3f} "
            f"| {raw['f1_macro']:.3f} / {v['f1_macro']:.3f} "
            f"| {raw['nll']:.3f} / {t['nll']:.3f} / {v['nll']:.3f} "
            f"| {raw['ece']:.3f} / {t['ece']:.3f} / {v['ece']:.3f} "
            f"| {t['used']} | {v['used']} ({v['reason']}) "
            f"| {d['difference']:+.3f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}], p = {d['p_value']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(render(json.loads(Path(args.report).read_text())))
        return 0
    if args.refit:
        rows = [measure(r["scores"]) for r in json.loads(Path(args.refit).read_text())["rows"]]
    elif args.runs:
        rows = [measure(scored(Path(run))) for run in args.runs]
    else:
        print("bench_scaling: give --runs RUN [RUN ...] (finished run folders), --refit or --report", file=sys.stderr)
        return 2
    report = {"meta": {"environment": environment(), "load_end": loadavg()}, "rows": rows}
    write_report(args.out, report)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
