"""bench_quality's report: its table, its chart, and its comparison with an earlier report, row by row.

The report's shape lives here (its datasets, methods and metrics, in the order the table shows them), so that
`python -m benchmarks.bench_quality --report OLD.json` reads an earlier run's JSON without training anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATASETS = ("fpb_allagree", "fpb_50agree", "tfns", "tfn_topic", "fiqa")
MIXTURE = "mixture"
METHODS = ("majority", "tfidf_logreg", "zero_shot", "fine_tuned", "fine_tuned_mixture")
METRICS = ("accuracy", "f1_macro", "f1_weighted")
QUICK_MODEL = "tiny-mistral"  # random weights: --quick checks that everything runs; its scores mean nothing


def _order(r: dict[str, Any]) -> tuple[int, int]:
    names = [*DATASETS, MIXTURE]
    methods = [*METHODS, "all"]
    return (
        names.index(r["dataset"]) if r["dataset"] in names else len(names),
        methods.index(r["method"]) if r["method"] in methods else len(methods),
    )


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(
        f"\nbench_quality ({'quick' if meta['quick'] else 'full'}): model {meta['model']}, "
        f"overrides {meta['overrides'] or '-'}; "
        f"{describe_device(meta['environment'])}, load average {meta['loadavg_start_end'][0][0]:.1f} -> "
        f"{meta['loadavg_start_end'][1][0]:.1f}\n"
    )
    print(
        "| dataset      | method             | train rows | eval rows | accuracy | macro-F1 | weighted-F1 | train s "
        "| train ex/s | score ex/s |"
    )
    print(
        "|--------------|--------------------|-----------:|----------:|---------:|---------:|------------:|--------:|-----------:|-----------:|"
    )
    for r in sorted(report["rows"], key=_order):
        if "error" in r:
            print(f"| {r['dataset']:<12} | {r['method']:<18} | failed: {r['error']} |")
            continue
        print(
            f"| {r['dataset']:<12} | {r['method']:<18} | {r['n_train']:>10} | {r['n_eval']:>9} "
            f"| {r['accuracy']:8.3f} | "
            f"{r['f1_macro']:8.3f} | {r['f1_weighted']:11.3f} | {_num(r.get('train_seconds'), '7.1f'):>7} | "
            f"{_num(r.get('train_examples_per_second'), '10.2f'):>10} "
            f"| {_num(r.get('score_examples_per_second'), '10.1f'):>10} |"
        )
    for r in sorted(report["rows"], key=_order):
        if r.get("by_agreement"):
            print(
                f"{r['dataset']} {r['method']}, accuracy by annotator agreement: "
                + ", ".join(f"{level} {v['accuracy']:.3f} (n={v['n']})" for level, v in r["by_agreement"].items())
            )
        if r.get("learning_curve") and r["method"] in ("fine_tuned", "all"):  # earlier JSONs repeat it per source
            print(
                f"{r['dataset']} {r['method']}, learning curve (step: accuracy / macro-F1 on "
                f"{r['learning_curve'][0]['curve_samples']} validation rows): "
                + ", ".join(
                    f"{p['step']}: {p['curve_accuracy']:.3f}/{p['curve_f1_macro']:.3f}" for p in r["learning_curve"]
                )
            )
    for name, reason in report.get("skipped", {}).items():
        print(f"skipped {name}: {reason}")
    if meta["model"] == QUICK_MODEL:
        print(f"({QUICK_MODEL} has random weights: these rows show that the pipeline runs, not how good it is)")


def print_compare(report: dict[str, Any], old: dict[str, Any], old_path: str) -> None:
    before = {(r["dataset"], r["method"]): r for r in old.get("rows", []) if "error" not in r}
    print(f"\nchange against {old_path} (new - old):\n")
    for key in ("quick", "model", "overrides"):
        if old.get("meta", {}).get(key) != report["meta"].get(key):
            print(f"note: {key} differs: {old.get('meta', {}).get(key)!r} then, {report['meta'].get(key)!r} now")
    print(
        "| dataset      | method             | eval rows old -> new | accuracy | macro-F1 | weighted-F1 "
        "| train s old -> new "
        "| rows +/-, McNemar p |"
    )
    print(
        "|--------------|--------------------|---------------------:|---------:|---------:|------------:|-------------------:"
        "|--------------------:|"
    )
    for r in sorted(report["rows"], key=_order):
        o = before.get((r["dataset"], r["method"]))
        if o is None or "error" in r:
            continue
        acc, f1m, f1w = (r[k] - o[k] for k in METRICS)
        times = f"{_num(o.get('train_seconds'), '.0f')} -> {_num(r.get('train_seconds'), '.0f')}"
        sizes = f"{o['n_eval']} -> {r['n_eval']}"
        flips = (
            paired_flips(Path(o["run_dir"]), Path(r["run_dir"]))
            if r["method"] in PAIRED_METHODS and o.get("run_dir") and r.get("run_dir")
            else None
        )
        paired = f"+{flips['gained']} / -{flips['lost']}, {flips['p_value']:.2f}" if flips else "-"
        print(
            f"| {r['dataset']:<12} | {r['method']:<18} | {sizes:>20} | {acc:+8.3f} | {f1m:+8.3f} | "
            f"{f1w:+11.3f} | {times:>18} | {paired:>19} |"
        )
    print(
        "rows +/-: validation rows the new run gets right and the old one wrong (+), and the reverse (-); "
        "McNemar's exact "
        "two-sided p-value on them (-: a run folder's predictions are missing or not the same rows)"
    )
    new_only = sorted({(r["dataset"], r["method"]) for r in report["rows"]} - set(before))
    if new_only:
        print("not in the old results: " + ", ".join(f"{d}/{m}" for d, m in new_only))


PAIRED_METHODS = (
    "zero_shot",
    "fine_tuned",
    "all",
)  # rows whose run folder's predictions.jsonl is exactly their eval rows


def paired_flips(old_run: Path, new_run: Path) -> dict[str, Any] | None:
    """Rows one run gets right and the other wrong, with McNemar's exact p-value (`fintrl.metrics.paired.flips`, what
    `fintrl compare` reports). On a few hundred validation rows a 0.01 accuracy gap is often noise; only the rows that
    flipped can tell, as both runs score the same rows. None unless both runs hold predictions on the same rows."""
    from fintrl.metrics.paired import flips, same_rows
    from fintrl.run_folder import PREDICTIONS, read_predictions

    old, new = read_predictions(old_run / PREDICTIONS), read_predictions(new_run / PREDICTIONS)
    return flips(old, new) if same_rows(old, new) else None


def plot_results(report: dict[str, Any], path: Path) -> Path | None:
    """Accuracy and macro-F1 as grouped bars, one group per dataset: the table is easier to compare by eye."""
    import numpy as np

    from fintrl.metrics.plots import pyplot

    plt = pyplot()
    rows = [r for r in sorted(report["rows"], key=_order) if "error" not in r]
    if not rows:
        return None
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    value = {(r["dataset"], r["method"], m): r[m] for r in rows for m in METRICS}
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(datasets) + 2), 7), sharex=True)
    x, width = np.arange(len(datasets)), 0.8 / len(methods)
    for ax, metric, title in zip(axes, ("accuracy", "f1_macro"), ("accuracy", "macro-F1"), strict=True):
        for i, method in enumerate(methods):
            ax.bar(
                x + (i - (len(methods) - 1) / 2) * width,
                [value.get((d, method, metric), np.nan) for d in datasets],
                width,
                label=method,
            )
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"validation {title}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"bench_quality: {report['meta']['model']}")
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.955),
        ncol=len(methods),
        fontsize="small",
        frameon=False,
    )
    axes[1].set_xticks(x, datasets, rotation=20)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe_device(env: dict[str, Any]) -> str:
    """The GPU's name, or "CPU xN (T threads)" (results written before the shared environment() hold it as is)."""
    device = env.get("device", "?")
    return f"CPU x{env['cpu_count']} ({env['torch_threads']} threads)" if device == "cpu" else device
