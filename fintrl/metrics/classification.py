"""Classification metrics (scikit-learn) and the simple baselines a report sets them against."""

from __future__ import annotations

from typing import Any

import numpy as np

from fintrl.metrics.stats import expected_calibration_error

INVALID = -1  # the prediction of a text that got no label (`generate` mode only)


def classification_metrics(
    y_true: list[int], y_pred: list[int], labels: list[str], probabilities: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, P/R/F1 (macro, weighted, micro, per class), MCC, confusion matrix, invalid rate; with probabilities,
    ECE, NLL and Brier score."""
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
        from fintrl.metrics.stats import brier, nll

        out["ece"] = expected_calibration_error(probabilities, true)
        out["nll"], out["brier"] = nll(probabilities, true), brier(probabilities, true)
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
