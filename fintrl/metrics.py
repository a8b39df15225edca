"""Classification metrics (scikit-learn), simple baselines and the plots a report shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fintrl.scoring import INVALID


def _confidence_bins(
    probabilities: np.ndarray, y_true: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label confidence, whether it was right, and its bin index (equal-width bins over [0, 1])."""
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == np.asarray(y_true)
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return confidence, correct, which


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: |accuracy - confidence| per confidence bin, weighted by bin size (none in sklearn for this)."""
    confidence, correct, which = _confidence_bins(probabilities, y_true, bins)
    return float(
        sum(
            abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins)
            if (which == b).any()
        )
    )


def classification_metrics(
    y_true: list[int], y_pred: list[int], labels: list[str], probabilities: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, P/R/F1 (macro, weighted, micro, per class), MCC, confusion matrix, ECE, invalid rate."""
    from sklearn.metrics import accuracy_score, confusion_matrix, matthews_corrcoef, precision_recall_fscore_support

    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(
            f"need as many predictions as gold labels, and at least one (got {len(y_pred)} / {len(y_true)})"
        )
    ids = list(range(len(labels)))
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    out: dict[str, Any] = {"n": len(true), "accuracy": float(accuracy_score(true, pred))}
    for avg in ("macro", "weighted", "micro"):
        p, r, f, _ = precision_recall_fscore_support(true, pred, labels=ids, average=avg, zero_division=0)
        out |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=ids, average=None, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(labels)
    }
    out["mcc"] = float(matthews_corrcoef(true, pred))
    invalid = pred == INVALID
    out["invalid_rate"] = float(invalid.mean())
    out["confusion_matrix"] = {
        "labels": labels + (["<invalid>"] if invalid.any() else []),
        "matrix": confusion_matrix(true, pred, labels=ids + ([INVALID] if invalid.any() else [])).tolist(),
    }
    if probabilities is not None:
        out["ece"] = expected_calibration_error(probabilities, true)
    return out


def baselines(
    train_texts: list[str],
    train_labels: list[int],
    eval_texts: list[str],
    eval_labels: list[int],
    labels: list[str],
    seed: int = 42,
) -> dict[str, dict[str, Any]]:
    """Majority class and TF-IDF + logistic regression on the same splits: how far above simple is the LLM?"""
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    models = {
        "majority": DummyClassifier(strategy="most_frequent"),
        "tfidf_logreg": make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
            LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced", random_state=seed),
        ),
    }
    out = {}
    for name, clf in models.items():
        clf.fit(train_texts, train_labels)
        proba = np.zeros((len(eval_texts), len(labels)))
        proba[:, clf.classes_] = clf.predict_proba(eval_texts)
        full = classification_metrics(eval_labels, clf.predict(eval_texts).tolist(), labels, proba)
        out[name] = {
            k: full[k] for k in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "mcc")
        }
    return out


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


def plot_reliability(probabilities: np.ndarray, y_true: list[int], path: Path, bins: int = 10) -> Path:
    plt = pyplot()
    _, correct, which = _confidence_bins(probabilities, y_true, bins)
    centers = (np.arange(bins) + 0.5) / bins
    acc = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    counts = [(which == b).sum() for b in range(bins)]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(centers, acc, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy in bin")
    for c, a, n in zip(centers, acc, counts):
        if n:
            ax.annotate(str(n), (c, a), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {expected_calibration_error(probabilities, np.asarray(y_true), bins):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left")
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
