"""Temperature against vector scaling on finished runs, without training again.

Each run's calibration rows (rebuilt from its recipe: the same seeded hold-out the run made) and its validation rows
are scored once, raw, with its adapter as the run scored them; each method is then fitted and checked on the
calibration rows exactly as `fintrl run` does (`calibrate_rows`) and applied to the validation rows. Printed per run:
whether the check kept each map and why, validation accuracy / macro-F1 / NLL / ECE raw and with each map, and the
vector map's labels against the raw ones by `fintrl compare`'s paired test (temperature scaling never moves a label).

    python -m benchmarks.bench_scaling --runs runs/bench/calibration/*-cal256     # ~2-5 min per run on 2 CPU cores
    python -m benchmarks.bench_scaling --report runs/bench/scaling.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import environment, loadavg, stopwatch, write_report

METHODS = ("temperature", "vector")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN", help="finished run folders with calibration rows")
    p.add_argument("--out", default="runs/bench/scaling.json")
    p.add_argument("--report", metavar="RESULTS.json", help="run nothing: print an earlier results JSON")
    return p.parse_args(argv)


def scored(run: Path) -> dict[str, Any]:
    """The run's calibration and validation rows, scored raw with its adapter (as `fintrl run` scored them)."""
    import numpy as np

    from fintrl.data.loading import load_labeled_data
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
    return {
        "labels": data.labels,
        "seed": recipe.data.seed,
        "calibration": (calibration_rows, np.asarray(held["label"])),
        "validation": (validation, list(data.eval["label"]), list(data.eval["text"])),
        "score_seconds": round(clock.seconds, 1),
    }


def row(run: Path) -> dict[str, Any]:
    from fintrl.evaluation.report import headline
    from fintrl.metrics.paired import compare_rows
    from fintrl.run_folder import read_json
    from fintrl.scoring.calibration import calibrate_rows

    s = scored(run)
    (held, held_gold), (raw, gold, texts) = s["calibration"], s["validation"]
    labels = s["labels"]
    out: dict[str, Any] = {"run": run.name, "n_calibration": len(held_gold), "n_validation": len(gold)}
    out["raw"] = headline(gold, raw, labels)
    out["run_accuracy"] = read_json(run / "metrics.json")["accuracy"]  # raw labels are the run's: a sanity check
    for method in METHODS:
        calibration = calibrate_rows(held.probabilities, held_gold, held.mode, s["seed"], method)
        result = calibration.apply_result(raw)
        check = calibration.check or {}
        out[method] = headline(gold, result, labels) | {
            "kept": check.get("kept"),
            "reason": check.get("reason"),
            "fitted": check.get("fitted") or {"temperature": check.get("fitted_temperature")},
            "labels_changed": sum(a != b for a, b in zip(raw.predictions, result.predictions)),
        }
        if method == "vector":
            rows = [
                [{"text": t, "gold": labels[g], "prediction": labels[p]} for t, g, p in zip(texts, gold, r.predictions)]
                for r in (raw, result)
            ]
            verdict = compare_rows(*rows, labels, names=("raw", "vector"))
            accuracy = verdict["metrics"]["accuracy"]
            out["vector_vs_raw"] = {
                "difference": accuracy["difference"],
                "interval": accuracy["interval"],
                "p_value": verdict["mcnemar"]["p_value"],
                "verdict": verdict["verdict"],
            }
    out["score_seconds"] = s["score_seconds"]
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        "| run | acc raw / temperature / vector | macro-F1 raw / vector | NLL raw / T / vector | ECE raw / T / vector "
        "| T kept? | vector kept? (why) | vector vs raw |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in report["rows"]:
        raw, t, v, d = r["raw"], r["temperature"], r["vector"], r["vector_vs_raw"]
        why = "" if v["kept"] else f" ({v['reason']})"
        lines.append(
            f"| {r['run']} | {raw['accuracy']:.3f} / {t['accuracy']:.3f} / {v['accuracy']:.3f} "
            f"| {raw['f1_macro']:.3f} / {v['f1_macro']:.3f} "
            f"| {raw['nll']:.3f} / {t['nll']:.3f} / {v['nll']:.3f} "
            f"| {raw['ece']:.3f} / {t['ece']:.3f} / {v['ece']:.3f} "
            f"| {'kept' if t['kept'] else 'not kept'} | {'kept' if v['kept'] else 'not kept'}{why} "
            f"| {d['difference']:+.3f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}], p = {d['p_value']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import json

    args = parse_args(argv)
    if args.report:
        print(render(json.loads(Path(args.report).read_text())))
        return 0
    if not args.runs:
        print("bench_scaling: give --runs RUN [RUN ...] (finished run folders) or --report", file=sys.stderr)
        return 2
    rows = [row(Path(run)) for run in args.runs]
    report = {"meta": {"environment": environment(), "load_end": loadavg()}, "rows": rows}
    write_report(args.out, report)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
