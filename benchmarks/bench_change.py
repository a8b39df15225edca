"""What one change to a recipe does, proven by `fintrl compare`: each dataset's committed recipe trained as it is and
with the change (`--change train.objective=label_softmax`, repeatable), per seed, on validation; or the ensemble of
the recipe's seeds against each seed alone (`--ensemble`).

Printed per dataset and seed: both sides' accuracy and macro-F1, the paired verdict (the change against the recipe:
bootstrap interval of the accuracy difference and McNemar's test) and the training seconds of each side.

    python -m benchmarks.bench_change --datasets fpb_50agree --seeds 42 --change train.objective=label_softmax
    python -m benchmarks.bench_change --datasets fpb_50agree --seeds 42 7 --ensemble   # the seeds' runs averaged
    python -m benchmarks.bench_change --quick --datasets fpb_50agree --change train.objective=label_softmax  # smoke
    python -m benchmarks.bench_change --report runs/bench/change.json
    python -m benchmarks.bench_change --report runs/bench/change_s42.json runs/bench/change_s7.json  # pooled too

With two seeds or more of one dataset and change (in one call, or in the `--report` files together), a pooled row
follows: the seeds' pairs pooled by `fintrl compare A B A2 B2` (mean difference, its interval, McNemar's test on all
pairs' discordant rows).

The recipe's own runs are trained into RUNS/<dataset>-seed<seed>-recipe, unless `--recipe-runs PATTERN` names
finished ones (`{dataset}` and `{seed}` filled in, e.g. bench_calibration's `runs/bench/calibration/{dataset}-seed
{seed}-cal256`: the same overrides, so the same runs). Finished runs are reused; an interrupted one continues from its
last checkpoint when the same command runs again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.bench_calibration import QUICK
from benchmarks.harness import REPO, SHARED_DATA, dataset_bench

if TYPE_CHECKING:
    from fintrl.recipe.schema import Recipe

RECIPES = {name: f"{name}_smollm2" for name in ("fpb_50agree", "tfns", "fiqa", "tfn_topic")}  # issue 26's four


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_change", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 7])
    what = p.add_mutually_exclusive_group(required=False)
    what.add_argument("--change", action="append", default=[], metavar="KEY=VALUE", help="the recipe change")
    what.add_argument("--ensemble", action="store_true", help="the seeds' recipe runs averaged, against each alone")
    p.add_argument("--recipe-runs", metavar="PATTERN", help="finished runs of the recipe ({dataset}, {seed})")
    p.add_argument("--quick", action="store_true", help="tiny random model, 64 rows, 2 steps (numbers mean nothing)")
    p.add_argument("--runs-dir", default="runs/bench/change")
    p.add_argument("--out", default="runs/bench/change.json")
    p.add_argument(
        "--report", nargs="+", metavar="RESULTS.json", help="run nothing: print earlier results JSONs, seeds pooled"
    )
    args = p.parse_args(argv)
    if not args.report and not args.change and not args.ensemble:
        p.error("give --change KEY=VALUE (repeatable) or --ensemble")
    return args


def slug(changes: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "+".join(changes))[:80]


def recipe_for(dataset: str, seed: int, changes: list[str], out: Path, quick: bool) -> Recipe:
    """The dataset's committed recipe on the shared data, seeded, with `changes`, trained into `out`."""
    from fintrl.recipe.schema import load_recipe

    overrides = [
        f"data.path={SHARED_DATA / dataset}",
        f"seed={seed}",
        f"data.seed={seed}",
        "eval.baselines=false",
        *(QUICK if quick else []),
        *changes,
    ]
    return load_recipe(REPO / "recipes" / f"{RECIPES[dataset]}.yaml", overrides=overrides, output_dir=str(out))


def train(dataset: str, seed: int, changes: list[str], out: Path, quick: bool) -> None:
    """Train the recipe (with `changes`) into `out` unless it holds a finished run; an interrupted one (a long run
    stopped by Ctrl-C or the end of a session) continues from its last checkpoint instead of starting again."""
    from fintrl.run_folder import RunFolder
    from fintrl.runner import run
    from fintrl.transaction import work_folder

    if not RunFolder(out).is_finished:
        interrupted = work_folder(out).is_dir()
        if interrupted:
            print(f"bench_change: continuing the interrupted run in {work_folder(out)}", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):
            run(
                recipe_for(dataset, seed, changes, out, quick),
                resume=interrupted,
                overwrite=out.exists() and not interrupted,
            )


def recipe_run(dataset: str, seed: int, args: argparse.Namespace) -> Path:
    if args.recipe_runs:
        return Path(args.recipe_runs.format(dataset=dataset, seed=seed))
    out = Path(args.runs_dir) / f"{dataset}-seed{seed}-recipe"
    train(dataset, seed, [], out, args.quick)
    return out


def side(folder: Path) -> dict[str, Any]:
    from fintrl.run_folder import RunFolder

    report = RunFolder(folder).metrics()
    return {
        "run": str(folder),
        "accuracy": report["accuracy"],
        "f1_macro": report["f1_macro"],
        "train_seconds": report.get("timings", {}).get("train"),
    }


def verdict(a: Path, b: Path) -> dict[str, Any]:
    from fintrl.evaluation.compare import compare

    result = compare(str(a), str(b))
    accuracy = result["metrics"]["accuracy"]
    return {
        "difference": accuracy["difference"],
        "interval": accuracy["interval"],
        "mcnemar_p": result["mcnemar"]["p_value"],
        "verdict": result["verdict"],
    }


def change_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            base = recipe_run(dataset, seed, args)
            changed = Path(args.runs_dir) / f"{dataset}-seed{seed}-{slug(args.change)}"
            train(dataset, seed, args.change, changed, args.quick)
            rows.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "change": args.change,
                    "recipe": side(base),
                    "changed": side(changed),
                    "compare": verdict(base, changed),
                }
            )
    return rows


def ensemble_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per dataset: `fintrl eval` of the seeds' recipe runs together, compared with each seed's run alone."""
    from fintrl.cli.main import main as fintrl

    rows = []
    for dataset in args.datasets:
        members = [recipe_run(dataset, seed, args) for seed in args.seeds]
        out = Path(args.runs_dir) / (f"{dataset}-ensemble-" + "-".join(map(str, args.seeds)))
        if not (out / "metrics.json").is_file():
            with contextlib.redirect_stdout(sys.stderr):
                code = fintrl(["eval", *map(str, members), "--output-dir", str(out), "--overwrite"])
            if code:
                raise SystemExit(f"bench_change: fintrl eval of the ensemble failed (exit {code})")
        for seed, member in zip(args.seeds, members):
            rows.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "change": [f"ensemble of seeds {args.seeds}"],
                    "recipe": side(member),
                    "changed": side(out) | {"train_seconds": None},
                    "compare": verdict(member, out),
                }
            )
    return rows


def render(report: dict[str, Any]) -> str:
    lines = [
        "| dataset | seed | change | acc recipe -> changed | macro-F1 recipe -> changed | accuracy difference, 95 % CI "
        "| McNemar p | train s recipe / changed |",
        "|---|---:|---|---|---|---|---:|---|",
    ]
    for r in report["rows"]:
        a, b, c = r["recipe"], r["changed"], r["compare"]
        seconds = " / ".join("-" if s is None else f"{s:.0f}" for s in (a.get("train_seconds"), b.get("train_seconds")))
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {', '.join(r['change'])} | {a['accuracy']:.3f} -> {b['accuracy']:.3f} "
            f"| {a['f1_macro']:.3f} -> {b['f1_macro']:.3f} | {c['difference']:+.3f} [{c['interval'][0]:+.3f}, "
            f"{c['interval'][1]:+.3f}] | {c['mcnemar_p']:.3f} | {seconds} |"
        )
    return "\n".join(lines)


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset and change measured on two seeds or more: their pairs pooled (`fintrl compare A B A2 B2`)."""
    from fintrl.evaluation.compare import compare_pairs

    groups: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in rows:
        if isinstance(row["seed"], int):
            groups.setdefault((row["dataset"], tuple(row["change"])), []).append(row)
    pooled = []
    for (dataset, change), group in groups.items():
        if len({r["seed"] for r in group}) < 2:
            continue
        report = compare_pairs([(r["recipe"]["run"], r["changed"]["run"]) for r in group])["pooled"]
        metrics = report["metrics"]
        pooled.append(
            {
                "dataset": dataset,
                "seed": "+".join(str(r["seed"]) for r in group) + " pooled",
                "change": list(change),
                "recipe": {"accuracy": metrics["accuracy"]["a"], "f1_macro": metrics["f1_macro"]["a"]},
                "changed": {"accuracy": metrics["accuracy"]["b"], "f1_macro": metrics["f1_macro"]["b"]},
                "compare": {
                    "difference": metrics["accuracy"]["difference"],
                    "interval": metrics["accuracy"]["interval"],
                    "mcnemar_p": report["mcnemar"]["p_value"],
                    "verdict": report["verdict"],
                },
            }
        )
    return pooled


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = ensemble_rows(args) if args.ensemble else change_rows(args)
    return rows + pooled_rows(rows)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier results JSON (`--out`), or one line saying why it cannot be read."""
    try:
        return json.loads(path.read_text())["rows"]
    except OSError as err:
        raise SystemExit(f"bench_change: --report {path} cannot be read ({err.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"bench_change: --report {path} is not a bench_change results JSON (no rows)") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        rows = [r for path in args.report for r in read_rows(Path(path))]
        rows = [r for r in rows if isinstance(r["seed"], int)]
        print(render({"rows": rows + pooled_rows(rows)}))
        return 0
    return dataset_bench("bench_change", args, lambda: measure(args), render)


if __name__ == "__main__":
    sys.exit(main())
