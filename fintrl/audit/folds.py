"""Where `fintrl audit` gets each row's probabilities: scores no model was trained on (out-of-sample), when it can.

- eval rows: the run's own `predictions.jsonl` (its adapter never trained on them; calibrated when the run was);
- train rows, `--folds K` (K >= 2): k-fold cross-fitting. The train split (as the run loaded it, calibration rows
  included) is cut into K stratified, seeded folds; for each fold a fresh adapter is trained with the run's own recipe
  (model, quantization, LoRA, train settings) on the other K-1 folds and scores the held-out one with the run's
  scorer. Everything is built in a temporary folder: a finished run is never changed;
- train rows, `--folds 0`: scored by the run's final adapter, which trained on them (in-sample: biased toward the gold
  label, so it flags fewer rows); rows the run held out for calibration are out-of-sample even then, and say so.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fintrl.errors import DataError, RunFolderError
from fintrl.run_folder import PREDICTIONS, RunFolder, read_predictions

if TYPE_CHECKING:
    from fintrl.data.loading import LabeledData
    from fintrl.recipe.schema import Recipe

logger = logging.getLogger(__name__)

EVAL_SCORED = "out-of-sample: the run's adapter (its predictions.jsonl)"
FOLD_SCORED = "out-of-sample: fold {fold} of {folds} (an adapter trained on the other folds)"
IN_SAMPLE = "in-sample: the run's adapter trained on this row (biased toward the gold label)"
HELD_OUT = "out-of-sample: the run's adapter (a calibration row, held out of its training)"


@dataclass
class SplitScores:
    """One split's rows as the audit sees them: text, gold and the probabilities of a model, with how it scored."""

    split: str  # "train" or "eval"
    texts: list[str]
    gold: np.ndarray  # [n] label ids
    probabilities: np.ndarray  # [n, labels]
    predictions: list[int]  # the scorer's label per row (-1: none, `generate` mode only)
    scored: list[str]  # per row: how it was scored (EVAL_SCORED, FOLD_SCORED, IN_SAMPLE, HELD_OUT)
    fold: list[int | None] = field(default_factory=list)  # per row: its fold (1..K), None outside cross-fitting


def eval_scores(run: RunFolder, labels: list[str]) -> SplitScores:
    """The eval rows and probabilities the run wrote: nothing is scored again."""
    rows = read_predictions(run.file(PREDICTIONS), labels)  # validated: labels, finite probabilities
    if rows is None:
        raise RunFolderError(f"{run.path} has no {PREDICTIONS} to audit its eval rows; audit --split train only")
    index = {name: i for i, name in enumerate(labels)}
    texts = [r["text"] for r in rows]
    gold = [index[r["gold"]] for r in rows]
    probs = [[r["probabilities"][name] for name in labels] for r in rows]
    preds = [index[r["prediction"]] if r.get("prediction") is not None else -1 for r in rows]
    n = len(texts)
    return SplitScores(
        "eval",
        texts,
        np.asarray(gold, dtype=int),
        np.asarray(probs).reshape(n, len(labels)),
        preds,
        [EVAL_SCORED] * n,
        [None] * n,
    )


def check_folds(folds: int, gold: np.ndarray | None = None, labels: list[str] | None = None) -> None:
    """K-fold needs K >= 2 (0: in-sample) and, stratified, at least K rows of every label present (one per fold)."""
    from fintrl.errors import RecipeError

    if folds == 1 or folds < 0:
        raise RecipeError(f"--folds {folds}: give 0 (train rows scored in-sample) or K >= 2 (k-fold cross-fitting)")
    if not folds or gold is None or labels is None:
        return
    if folds > len(gold):
        raise DataError(f"--folds {folds}: the train split has only {len(gold)} rows")
    counts = np.bincount(gold, minlength=len(labels))
    short = {labels[i]: int(c) for i, c in enumerate(counts) if 0 < c < folds}
    if short:
        raise DataError(
            f"--folds {folds}: the train split has fewer than {folds} rows of {short}; "
            "every fold needs one of each label (use fewer folds)"
        )


def cross_fit(recipe: Recipe, data: LabeledData, folds: int, seed: int) -> SplitScores:
    """Out-of-sample probabilities for every train row: K adapters, each trained on K-1 folds, scoring the last.

    Each fold trains as a run does (the recipe's loaders, its resolved prompt, `fintrl.train`, the eval section's
    scorer) without the learning curve, the calibration hold-out and checkpoints, which change nothing it scores."""
    from sklearn.model_selection import StratifiedKFold

    from fintrl.model.loading import load_model, load_tokenizer
    from fintrl.model.prompts import PromptBuilder
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.train import build_trainer, train

    gold = np.asarray(data.train["label"])
    check_folds(folds, gold, data.labels)
    texts = list(data.train["text"])
    fold_recipe = recipe.model_copy(update={"train": {**recipe.train, "save_strategy": "no"}})
    tokenizer = load_tokenizer(recipe.model, recipe.prompt.system)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    probabilities = np.zeros((len(texts), len(data.labels)))
    predictions, fold_of = [-1] * len(texts), [0] * len(texts)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with tempfile.TemporaryDirectory(prefix="fintrl-audit-") as tmp:
        for k, (fit_rows, held_rows) in enumerate(splitter.split(np.zeros(len(gold)), gold), 1):
            start = time.perf_counter()
            logger.info(
                "fold %d/%d: training on %d rows, then scoring its %d held-out rows",
                k,
                folds,
                len(fit_rows),
                len(held_rows),
            )
            model = load_model(recipe.model, recipe.quantization)
            fit = data.train.select(fit_rows)
            trainer = build_trainer(fold_recipe, model, tokenizer, builder, fit, Path(tmp) / f"fold{k}")
            with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines: stdout is the report's
                train(trainer, Path(tmp) / f"fold{k}", resume=False)
            scorer = LabelScorer.from_eval(trainer.model, tokenizer, builder, recipe.eval)
            result = scorer.score([texts[i] for i in held_rows])
            probabilities[held_rows] = result.probabilities
            for row, pred in zip(held_rows, result.predictions):
                predictions[row], fold_of[row] = pred, k
            right = float(np.mean(np.asarray(result.predictions) == gold[held_rows]))
            logger.info(
                "fold %d/%d done in %.0f s: accuracy %.3f on its held-out rows",
                k,
                folds,
                time.perf_counter() - start,
                right,
            )
            del trainer, model, scorer
            gc.collect()
    scored = [FOLD_SCORED.format(fold=f, folds=folds) for f in fold_of]
    return SplitScores("train", texts, gold, probabilities, predictions, scored, list(fold_of))


def in_sample(run: RunFolder, data: LabeledData) -> SplitScores:
    """The run's adapter scores the train rows it trained on (calibrated as `eval` would); cheap, and biased."""
    from fintrl.scoring.calibration import hold_out
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.scoring.targets import load_for_inference, resolve_target

    target = resolve_target(str(run.path))
    recipe = target.recipe
    model, tokenizer = load_for_inference(target)
    scorer = LabelScorer.from_eval(model, tokenizer, target.prompt_builder(data.labels), recipe.eval)
    texts = list(data.train["text"])
    logger.info("scoring the %d train rows in-sample with the run's adapter (--folds 0)", len(texts))
    result = scorer.score(texts)
    _, held = hold_out(data, recipe.eval, recipe.data.seed)  # the rows the run did not train on
    held_texts = set(held["text"]) if held is not None else set()
    scored = [HELD_OUT if t in held_texts else IN_SAMPLE for t in texts]
    result = target.calibrate(result)
    gold = np.asarray(data.train["label"])
    return SplitScores("train", texts, gold, result.probabilities, result.predictions, scored, [None] * len(texts))
