"""The plots a report shows: confusion matrix, reliability diagram, risk-coverage and the training curve (matplotlib,
headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fintrl.metrics.stats import confidence_bins, expected_calibration_error


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend: plots are drawn on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(metrics: dict[str, Any], path: Path, title: str = "Confusion matrix") -> Path:
    plt = pyplot()
    cm = np.asarray(metrics["confusion_matrix"]["matrix"])
    names = metrics["confusion_matrix"]["labels"]
    size = max(4.5, 0.45 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 5 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(
    probabilities: np.ndarray, y_true: list[int], path: Path, bins: int = 10, before: np.ndarray | None = None
) -> Path:
    """Accuracy per confidence bin against the diagonal; with `before` (the raw probabilities of a calibrated report),
    the raw bins too, so the diagram shows what calibration changed."""
    plt = pyplot()
    true = np.asarray(y_true)
    centers = (np.arange(bins) + 0.5) / bins
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    series = [("raw", before, "tab:grey", -1), ("calibrated", probabilities, "tab:blue", 1)]
    if before is None:
        series = [("accuracy in bin", probabilities, "tab:blue", 0)]
    width = 1 / bins / len(series)
    titles = []
    for name, probs, color, side in series:
        _, correct, which = confidence_bins(probs, true, bins)
        acc = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
        at = centers + side * width / 2
        ax.bar(at, acc, width=width, edgecolor="black", alpha=0.7, color=color, label=name)
        for c, a, n in zip(at, acc, [(which == b).sum() for b in range(bins)]):
            if n:
                ax.annotate(str(n), (c, a), ha="center", va="bottom", fontsize=7 - len(series) + 1)
        ece = expected_calibration_error(probs, true, bins)
        titles.append(f"{name} {ece:.3f}" if before is not None else f"{ece:.3f}")
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {', '.join(titles)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_coverage(coverage: dict[str, Any], path: Path) -> Path:
    """Risk-coverage: accuracy on the most confident rows against the share of rows kept (`stats.risk_coverage`)."""
    plt = pyplot()
    curve, table = coverage["curve"], coverage["table"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker=".", color="tab:blue")
    lines = [f"{p['coverage']:>4.0%}: accuracy {p['accuracy']:.3f}, P >= {p['min_confidence']:.3f}" for p in table]
    box = {"facecolor": "white", "alpha": 0.85, "edgecolor": "lightgrey"}
    ax.text(0.02, 0.03, "\n".join(lines), transform=ax.transAxes, fontsize=8, family="monospace", bbox=box)
    ax.scatter([p["coverage"] for p in table], [p["accuracy"] for p in table], color="tab:red", zorder=3)
    ax.set_xlabel("coverage (share of rows answered, most confident first)")
    ax.set_ylabel("accuracy on the rows answered")
    ax.set_title("Risk-coverage: abstain below a confidence")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curve(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against steps; with a learning curve (`curve_accuracy` entries), validation accuracy and macro-F1
    on a second axis, so where the model stops improving is visible at a glance."""
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    curve = [(h["step"], h["curve_accuracy"], h["curve_f1_macro"]) for h in log_history if "curve_accuracy" in h]
    if not points and not curve:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    if points:
        ax.plot(*zip(*points), marker=".", color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("Training loss" + (" and validation learning curve" if curve else ""))
    ax.grid(alpha=0.3)
    if curve:
        steps, acc, f1 = zip(*curve)
        right = ax.twinx()
        right.plot(steps, acc, marker="o", color="tab:green", label="val accuracy")
        right.plot(steps, f1, marker="s", color="tab:orange", label="val macro-F1")
        right.set_ylabel("validation score")
        right.set_ylim(0, 1)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        right.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
