"""Quality on real financial benchmarks: simple baselines, the base model zero-shot and the fine-tuned model.

For each dataset (local copies in ../shared/data/<name>: train.csv, validation.csv) it trains on train and reports on
validation, every method on the same rows:
- `majority`, `tfidf_logreg`: `fintrl.metrics.classification.baselines` (majority class; TF-IDF 1-2 grams + logistic
regression);
- `zero_shot`: the base model, no adapter, through the exact label scorer (`fintrl.evaluation.report.evaluate`);
- `fine_tuned`: `fintrl.runner.run` with the dataset's recipe `recipes/<dataset>_smollm2.yaml` and
  `--set data.path=../shared/data/<dataset>`, run folder `runs/bench/quality/<dataset>`;
- `mixture`: `recipes/mixture_smollm2.yaml` (FPB 50 % + FiQA + TFNS, one sentiment label set) trained once and
  scored on each source's validation split (`fine_tuned_mixture` rows) and on all of them (`mixture` / `all`).
Accuracy, macro-F1 and weighted-F1, with training time and examples/second. Results go to `--out` (JSON) and a bar
chart beside it (`.png`: accuracy and macro-F1 per dataset and method); `--compare OLD.json` prints the deltas against
an earlier run, and for each model row the validation rows that flipped either way, with McNemar's exact p-value.
From the repository root:

    python -m benchmarks.bench_quality --quick --datasets fpb_allagree          # smoke, tiny random model: seconds
    python -m benchmarks.bench_quality --quick --model smollm2-135m-instruct    # smoke with a real model: minutes
    python -m benchmarks.bench_quality                                          # full: the recipes as they are (hours)
    python -m benchmarks.bench_quality --datasets fiqa --set train.num_train_epochs=2 \\
        --compare runs/bench/quality.json --out runs/bench/quality_fiqa_2ep.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, SHARED_DATA, environment, loadavg, setup_torch, stopwatch, write_report
from benchmarks.quality_report import DATASETS, METRICS, MIXTURE, QUICK_MODEL, plot_results, print_compare, print_table

QUICK = [
    "data.max_train_samples=32",
    "data.max_eval_samples=256",  # 256: every topic keeps an eval row
    "train.max_steps=4",
    "train.logging_steps=1",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: --model {QUICK_MODEL} (unless --model is given) and " + " ".join(f"--set {o}" for o in QUICK),
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=[*DATASETS, MIXTURE],
        choices=[*DATASETS, MIXTURE],
        metavar="NAME",
        help=f"subset of {', '.join(DATASETS)}, {MIXTURE} (default: all)",
    )
    p.add_argument(
        "--model", help="base model for every recipe (offline name, folder or Hub id; default: the recipes')"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for every run, after --quick's (e.g. --set train.num_train_epochs=2)",
    )
    p.add_argument("--skip-zero-shot", action="store_true", help="no zero-shot scoring of the base model")
    p.add_argument("--data-dir", default=str(SHARED_DATA), help="folder of <dataset>/train.csv, validation.csv")
    p.add_argument("--runs-dir", default="runs/bench/quality", help="run folders (<dataset>, zero_shot/<dataset>)")
    p.add_argument("--out", default="runs/bench/quality.json", help="results JSON")
    p.add_argument("--compare", metavar="OLD.json", help="print deltas against an earlier results JSON")
    p.add_argument(
        "--report",
        metavar="RESULTS.json",
        help="run nothing: print the table of an existing results JSON (with --compare: its deltas)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.quick and not args.model:
        args.model = QUICK_MODEL
    return args


# -- recipes ----------------------------------------------------------------------------------------------------
def recipe_for(name: str, args: argparse.Namespace) -> Any:
    """The dataset's shipped recipe, pointed at the local data, with --quick / --model / --set applied in that order."""
    from fintrl.recipe.schema import load_recipe

    path = REPO / "recipes" / f"{name}_smollm2.yaml"
    data_dir = Path(args.data_dir).resolve()
    if name == MIXTURE:
        entries = load_recipe(path).data.mixture or []
        overrides = [f"data.mixture.{i}.path={data_dir / e.preset}" for i, e in enumerate(entries) if e.preset]
    else:
        overrides = [f"data.path={data_dir / name}"]
    overrides += QUICK if args.quick else []
    overrides += [f"model.name_or_path={args.model}"] if args.model else []
    overrides += args.overrides
    return load_recipe(path, overrides=overrides, output_dir=str(Path(args.runs_dir) / name))


def missing_data(recipe: Any) -> list[str]:
    sources = recipe.data.mixture or [recipe.data]
    return [str(s.path) for s in sources if not (s.path and (Path(s.path) / "train.csv").is_file())]


def row(dataset: str, method: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"dataset": dataset, "method": method, **{k: metrics[k] for k in METRICS}, **extra}


# -- one dataset ------------------------------------------------------------------------------------------------
def bench_dataset(name: str, recipe: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from fintrl.data.loading import load_labeled_data
    from fintrl.evaluation.report import evaluate
    from fintrl.metrics.classification import baselines
    from fintrl.model.prompts import PromptBuilder
    from fintrl.runner import run
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.scoring.targets import Target, load_for_inference

    data = load_labeled_data(recipe.data)
    sizes = {"n_train": len(data.train), "n_eval": len(data.eval)}
    rows = []
    for method, metrics in baselines(
        data.train["text"], data.train["label"], data.eval["text"], data.eval["label"], data.labels, seed=recipe.seed
    ).items():
        rows.append(row(name, method, metrics, **sizes))
    if not args.skip_zero_shot:
        model, tokenizer = load_for_inference(Target(recipe, None, None, recipe.model.name_or_path))
        builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
        out_dir = Path(args.runs_dir) / "zero_shot" / name
        section = recipe.eval.model_copy(update={"baselines": False})
        scorer = LabelScorer.from_eval(model, tokenizer, builder, section)
        metrics = evaluate(scorer, data, section, out_dir, recipe.model.name_or_path)
        rows.append(
            row(
                name,
                "zero_shot",
                metrics,
                **sizes,
                score_examples_per_second=metrics["scoring"]["examples_per_second"],
                invalid_rate=metrics["invalid_rate"],
                run_dir=str(out_dir),
            )
        )
        del model
        gc.collect()
    metrics = run(recipe, overwrite=True)
    extra = (
        {"by_agreement": fpb_agreement(Path(recipe.output_dir), Path(args.data_dir))} if name == "fpb_50agree" else {}
    )
    rows.append(
        row(
            name,
            "fine_tuned",
            metrics,
            **sizes,
            **train_speed(metrics),
            run_dir=recipe.output_dir,
            learning_curve=metrics.get("learning_curve"),
            **extra,
        )
    )
    return rows


def bench_mixture(recipe: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train the mixture once; one row per source (its validation split) and one for all of them together."""
    from fintrl.runner import run

    metrics = run(recipe, overwrite=True)
    n_train = metrics["data"]["n_train"]
    speed = train_speed(metrics)
    rows = [
        row(source, "fine_tuned_mixture", m, n_train=n_train, n_eval=m["n"], **speed, run_dir=recipe.output_dir)
        for source, m in metrics.get("per_source", {}).items()
    ]
    for r in rows:
        if r["dataset"] == "fpb_50agree":
            r["by_agreement"] = fpb_agreement(Path(recipe.output_dir), Path(args.data_dir))
    rows.append(
        row(
            MIXTURE,
            "all",
            metrics,
            n_train=n_train,
            n_eval=metrics["n"],
            **speed,
            run_dir=recipe.output_dir,
            learning_curve=metrics.get("learning_curve"),
            sources={p["name"]: {k: p[k] for k in ("weight", "n_train", "n_eval")} for p in metrics["data"]["mixture"]},
        )
    )
    return rows


def train_speed(metrics: dict[str, Any]) -> dict[str, Any]:
    """Training time without the learning curve's scoring (it runs inside the Trainer's clock)."""
    train = metrics.get("train", {})
    runtime = train.get("train_runtime")
    if runtime is None:
        return {"score_examples_per_second": metrics["scoring"]["examples_per_second"]}
    seconds = runtime - train.get("learning_curve_seconds", 0.0)
    return {
        "train_seconds": round(seconds, 1),
        "train_examples_per_second": round(train["train_samples_per_second"] * runtime / seconds, 3),
        "learning_curve_seconds": train.get("learning_curve_seconds"),
        "score_examples_per_second": metrics["scoring"]["examples_per_second"],
    }


def fpb_agreement(run_dir: Path, data_dir: Path) -> dict[str, dict[str, Any]] | None:
    """Accuracy of a run's FPB predictions by annotator agreement: how much of the error is label ambiguity."""
    from benchmarks.bench_audit import accuracy_by_level, agreement_levels, missing_levels
    from fintrl.run_folder import PREDICTIONS, read_predictions

    rows = read_predictions(run_dir / PREDICTIONS)
    if not rows or missing_levels(data_dir):
        return None
    levels = accuracy_by_level(rows, agreement_levels(data_dir))["by_level"]
    return {f"{level}%": v for level, v in levels.items() if v["n"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        print_table(report)
        chart = plot_results(report, Path(args.report).with_suffix(".png"))
        print(f"\nchart: {chart}")
        if args.compare:
            print_compare(report, json.loads(Path(args.compare).read_text()), args.compare)
        return 0
    if not Path(args.data_dir).is_dir():
        print(
            f"bench_quality: skipped, no data folder {args.data_dir} (the datasets live in ../shared/data next to the "
            "repository; see its README.md)"
        )
        return 0
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    setup_torch(args.threads)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass

    load_at_start = loadavg()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in [d for d in (*DATASETS, MIXTURE) if d in args.datasets]:
        recipe = recipe_for(name, args)
        absent = missing_data(recipe)
        if absent:
            skipped[name] = f"no train.csv in {', '.join(absent)}"
            print(f"bench_quality: skipping {name}: {skipped[name]}", file=sys.stderr)
            continue
        with stopwatch() as clock:
            try:  # the trainer prints its log lines to stdout: keep stdout for the table
                with contextlib.redirect_stdout(sys.stderr):
                    rows += bench_mixture(recipe, args) if name == MIXTURE else bench_dataset(name, recipe, args)
            except Exception as err:  # one dataset failing should not lose the others' numbers
                traceback.print_exc()
                rows.append({"dataset": name, "method": "-", "error": f"{type(err).__name__}: {err}"})
        print(f"bench_quality: {name} done in {clock.seconds:.0f} s", file=sys.stderr)

    model = args.model or ", ".join(sorted({recipe_for(n, args).model.name_or_path for n in args.datasets}))
    report = {
        "meta": {
            "quick": args.quick,
            "model": model,
            "overrides": args.overrides,
            "datasets": args.datasets,
            "skip_zero_shot": args.skip_zero_shot,
            "data_dir": str(Path(args.data_dir).resolve()),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "environment": environment(),
            "loadavg_start_end": [load_at_start, loadavg()],
        },
        "rows": rows,
        "skipped": skipped,
    }
    out = write_report(args.out, report)
    print_table(report)
    if args.compare:
        print_compare(report, json.loads(Path(args.compare).read_text()), args.compare)
    chart = plot_results(report, out.with_suffix(".png"))
    print(f"\nresults: {out}, chart {chart}; run folders under {args.runs_dir}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
