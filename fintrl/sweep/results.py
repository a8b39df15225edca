"""What a sweep leaves: `sweep.json` (the baseline and every trial: values, score, interval, state and run folder;
the best; the verdict of the best against the baseline), `sweep.png` (score by trial and by each field, the baseline's
score across each) and a printed table.
Rewritten after every trial, so a stopped sweep still shows what it found."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.run_folder import RunFolder, write_atomic

if TYPE_CHECKING:
    import optuna

    from fintrl.sweep.space import Dimension

logger = logging.getLogger(__name__)

RESULTS = "sweep.json"
PLOT = "sweep.png"


def trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"trial-{number:03d}"


def remove_run(run_dir: Path) -> None:
    """A trial's run folder, the work folder a stopped run leaves beside it, and its lock file."""
    from fintrl.transaction import lock_path, work_folder

    for path in (run_dir, work_folder(run_dir)):
        shutil.rmtree(path, ignore_errors=True)
    lock_path(run_dir).unlink(missing_ok=True)


def trial_rows(study: optuna.Study, out: Path, metric: str) -> list[dict[str, Any]]:
    """One row per trial, in order: number, state, values, score, its interval (from the trial's report), run
    folder (while it is kept), seconds."""
    rows = []
    for t in study.trials:
        folder = RunFolder(trial_dir(out, t.number))
        report = folder.metrics() if t.state.name == "COMPLETE" and folder.is_finished else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "interval": (report or {}).get("intervals", {}).get(metric),
                "run": str(folder.path) if report else None,
                "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                "pruned_at_step": t.last_step if t.state.name == "PRUNED" else None,
            }
        )
    return rows


def best_row(study: optuna.Study, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        return None
    return next(r for r in done if r["number"] == study.best_trial.number)


def baseline_row(baseline: Path, dims: list[Dimension], metric: str) -> dict[str, Any]:
    """The recipe's own run as a row like a trial's (its values of the swept fields, read from its resolved recipe;
    its score and interval), so the table and the plot show what every trial is measured against."""
    from fintrl.recipe.yaml_io import read_field

    folder = RunFolder(baseline)
    report = folder.metrics()
    recipe = folder.recipe().model_dump()
    return {
        "number": "baseline",
        "state": "complete",
        "params": {dim.field: read_field(recipe, dim.field) for dim in dims},
        "value": report.get(metric),
        "interval": report.get("intervals", {}).get(metric),
        "run": str(folder.path),
        "seconds": round(sum(report.get("timings", {}).values()), 1) or None,
    }


def write_results(
    out: Path, spec: dict[str, Any], study: optuna.Study, dims: list[Dimension], *, baseline: Path
) -> dict[str, Any]:
    rows = trial_rows(study, out, spec["metric"])
    base = baseline_row(baseline, dims, spec["metric"])
    result = {**spec, "baseline": base, "trials": rows, "best": best_row(study, rows)}
    write_atomic(out / RESULTS, json.dumps(result, indent=2, default=str))
    plot(out / PLOT, rows, dims, spec["metric"], baseline=base)
    return result


def finish(
    out: Path, spec: dict[str, Any], study: optuna.Study, dims: list[Dimension], baseline: Path, *, keep: str
) -> dict[str, Any]:
    """The final results: the best trial compared with the baseline (paired tests on the same eval rows), the other
    trials' folders removed unless `keep` is "all", the table and the verdict printed."""
    from fintrl.errors import RunFolderError
    from fintrl.evaluation.compare import compare
    from fintrl.metrics.paired import render

    result = write_results(out, spec, study, dims, baseline=baseline)
    best = result["best"]
    if best is None:
        raise RunFolderError(f"{out}: no trial finished (all pruned or failed); see {out / RESULTS}")
    comparison = compare(str(baseline), best["run"])
    result["comparison"] = comparison
    if keep == "best":
        for row in result["trials"]:
            if row["number"] != best["number"] and row["run"]:
                remove_run(trial_dir(out, row["number"]))
                row["run"] = None
    write_atomic(out / RESULTS, json.dumps(result, indent=2, default=str))
    print(table([result["baseline"], *result["trials"]], dims, spec["metric"]))
    print(f"\nbest: trial {best['number']} ({best['run']}), {spec['metric']} {best['value']:.4f}")
    print(f"against the recipe's own settings ({baseline}):")
    print(render(comparison))
    print(f"\nfintrl: sweep results in {out / RESULTS}, plot {out / PLOT}")
    return result


def table(rows: list[dict[str, Any]], dims: list[Dimension], metric: str) -> str:
    """The rows (the baseline's, then each trial's) as a Markdown table: one column per field, the score with its
    interval, the state."""
    fields = [d.field for d in dims]
    lines = ["| trial | " + " | ".join(fields) + f" | {metric} | 95 % interval | state |"]
    lines.append("|---:|" + "---|" * len(fields) + "---:|---|---|")
    for r in rows:
        values = [fmt_value(r["params"].get(f)) for f in fields]
        score = "" if r["value"] is None else f"{r['value']:.4f}"
        interval = f"[{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]" if r["interval"] else ""
        lines.append(f"| {r['number']} | " + " | ".join(values) + f" | {score} | {interval} | {r['state']} |")
    return "\n".join(lines)


def fmt_value(value: Any) -> str:
    """A field's value in a table or a line; None is a field the recipe leaves to the library's default."""
    if value is None:
        return "default"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot(
    path: Path, rows: list[dict[str, Any]], dims: list[Dimension], metric: str, *, baseline: dict[str, Any]
) -> None:
    """Score by trial (each with its 95 % interval, the best so far as a line) and score against each field's value,
    side by side, the recipe's own score dashed across each: a glance shows which trials stand clear of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [r for r in rows if r["value"] is not None]
    fig, axes = plt.subplots(1, 1 + len(dims), figsize=(4 * (1 + len(dims)), 3.2), squeeze=False)
    ax = axes[0][0]
    ax.errorbar(
        [r["number"] for r in done],
        [r["value"] for r in done],
        yerr=[
            [r["value"] - r["interval"][0] if r["interval"] else 0 for r in done],
            [r["interval"][1] - r["value"] if r["interval"] else 0 for r in done],
        ],
        fmt="o",
        color="tab:blue",
        ecolor="lightsteelblue",
        capsize=3,
        label="trial (95 % interval)",
    )
    if done:
        maximize = metric not in ("nll", "ece", "brier")
        best, running = [], None
        for r in done:
            running = r["value"] if running is None else (max if maximize else min)(running, r["value"])
            best.append(running)
        ax.step([r["number"] for r in done], best, where="post", color="tab:orange", label="best so far")
    for each in axes[0]:
        if baseline["value"] is not None:
            each.axhline(baseline["value"], color="gray", linestyle="--", label="the recipe's own settings")
    ax.legend(loc="best", fontsize="small")
    ax.set(xlabel="trial", ylabel=metric, title="score by trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, dim in zip(axes[0][1:], dims):
        xs = [r["params"].get(dim.field) for r in done]
        if dim.kind == "choice":
            labels = [json.dumps(c) for c in dim.choices]
            ax.scatter([labels.index(json.dumps(x)) for x in xs], [r["value"] for r in done], color="tab:blue")
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter(xs, [r["value"] for r in done], color="tab:blue")
            if dim.kind.startswith("log"):
                ax.set_xscale("log")
        ax.set(xlabel=dim.field, title=f"{metric} by {dim.field}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
