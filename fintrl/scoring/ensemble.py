"""Ensembles of adapters: several adapters of one base, each scored with its own prompt and calibration, their label
probabilities averaged (the predicted label is the average's most probable).

The base is loaded once; PEFT holds the adapters side by side in one `PeftModel` and `set_adapter` switches the
active one between passes, so an ensemble of k adapters costs k scoring passes but one base in memory. Members must
share the base (name, revision, quantization) and the label set, and each runs in its trained 4-bit form.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fintrl.errors import RecipeError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from fintrl.scoring.inference import InferenceForm
    from fintrl.scoring.scorer import LabelScorer, ScoreResult
    from fintrl.scoring.targets import Target

FORM = "4-bit + adapters (ensemble)"
REASON = "an ensemble's members run as trained, on one base"


@dataclass(frozen=True)
class Ensemble:
    members: tuple[Target, ...]
    source: str | None = None  # the ensemble folder or repo it was resolved from, if one

    @property
    def name(self) -> str:
        return self.source or " + ".join(member.name for member in self.members)

    @property
    def labels(self) -> list[str] | None:
        return self.members[0].labels

    def record(self) -> dict[str, Any]:
        """What a report says of it: its members, and whether each has a calibration it applies."""
        return {
            **({"source": self.source} if self.source else {}),
            "members": [m.name for m in self.members],
            "calibrated": [m.calibration is not None and not m.calibration.scaling.identity for m in self.members],
            "combine": "mean of the members' (calibrated) label probabilities",
        }


def resolve_scored(targets: list[str], **options: Any) -> Target | Ensemble:
    """What `eval`, `predict` and `serve` score: one target, or an ensemble - several targets, or one ensemble folder
    or repo (`resolve_targets`); `options` as `resolve_target`'s."""
    from fintrl.scoring.targets import resolve_targets

    members = [member for target in targets for member in resolve_targets(target, **options)]
    if len(members) == 1:
        return members[0]
    return checked_ensemble(members, source=targets[0] if len(targets) == 1 else None)


def resolve_ensemble(targets: list[str], **options: Any) -> Ensemble:
    """The ensemble of several targets (each may be an ensemble folder or repo, whose members join it)."""
    resolved = resolve_scored(targets, **options)
    if not isinstance(resolved, Ensemble):
        raise RecipeError(f"{targets[0]} is one adapter: an ensemble needs two or more")
    return resolved


def checked_ensemble(members: list[Target], *, source: str | None = None) -> Ensemble:
    """The members, checked to be averageable: adapters of one base on one label set, each once."""
    names = [member.name for member in members]
    if len(set(names)) != len(names):
        raise RecipeError(f"an ensemble lists {names}: each adapter once")
    first = members[0]
    for member in members:
        if member.adapter is None:
            raise RecipeError(f"{member.name} is not an adapter: an ensemble averages adapters of one base model")
        base, quantization = member.recipe.model, member.recipe.quantization
        if (base.name_or_path, base.revision) != (first.recipe.model.name_or_path, first.recipe.model.revision):
            raise RecipeError(
                f"{member.name} was trained on {base.name_or_path}, {first.name} on "
                f"{first.recipe.model.name_or_path}: an ensemble's adapters share one base model"
            )
        if quantization != first.recipe.quantization:
            raise RecipeError(f"{member.name} and {first.name} load their base with other quantization settings")
        if member.labels != first.labels:
            raise RecipeError(f"label sets differ: {first.name} has {first.labels}, {member.name} has {member.labels}")
    return Ensemble(tuple(members), source)


def load_ensemble(ensemble: Ensemble) -> tuple[PeftModel, list[PreTrainedTokenizerBase]]:
    """The base, loaded once, with every member's adapter (named member0, member1, ...), and each member's tokenizer
    (its own chat template)."""
    from peft import PeftModel

    from fintrl.model.loading import load_model
    from fintrl.scoring.targets import misfit_error, require_safetensors, target_tokenizer

    first = ensemble.members[0]
    print(
        f"fintrl: loading base model {first.recipe.model.name_or_path} once with {len(ensemble.members)} adapters: "
        f"{ensemble.name}",
        file=sys.stderr,
    )
    model = load_model(first.recipe.model, first.recipe.quantization)
    for i, member in enumerate(ensemble.members):
        require_safetensors(member)
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, member.adapter, adapter_name="member0")
            else:
                model.load_adapter(member.adapter, adapter_name=f"member{i}")
        except RuntimeError as err:
            raise misfit_error(err, member) from None
    return model, [target_tokenizer(member) for member in ensemble.members]


class EnsembleScorer:
    """Scores texts with each member in turn (its adapter active, its prompt, its calibration unless `calibrated` is
    False) and averages the label probabilities. `member_results` keeps the last call's per-member results."""

    def __init__(
        self,
        model: PeftModel,
        tokenizers: list[PreTrainedTokenizerBase],
        ensemble: Ensemble,
        *,
        labels: list[str],
        mode: str | None = None,
        calibrated: bool = True,
        batch_size: int | None = None,
    ) -> None:
        self.model, self.ensemble, self.labels, self.calibrated = model, ensemble, labels, calibrated
        self.scorers: list[LabelScorer] = []
        for member, tokenizer in zip(ensemble.members, tokenizers):
            self.scorers.append(member.scorer(model, tokenizer, mode=mode, labels=labels, batch_size=batch_size))
        self.member_results: list[ScoreResult] = []

    @property
    def mode(self) -> str:
        """The members' scoring mode (joined with + where they differ)."""
        modes = sorted({scorer.mode for scorer in self.scorers})
        return modes[0] if len(modes) == 1 else "+".join(modes)

    @property
    def max_length(self) -> int:
        return min(scorer.max_length for scorer in self.scorers)

    def score(self, texts: list[str], progress: bool = True) -> ScoreResult:
        """The ensemble's result for these texts, in this process (`predict`, `serve`)."""
        return self._combine(texts, progress, sharded=False)

    def score_sharded(self, texts: list[str], progress: bool = True) -> ScoreResult:
        """The same, a shard per process under a launcher (`evaluate`)."""
        return self._combine(texts, progress, sharded=True)

    def _combine(self, texts: list[str], progress: bool, sharded: bool) -> ScoreResult:
        from fintrl.scoring.scorer import ScoreResult

        results, probabilities = [], []
        for i, (member, scorer) in enumerate(zip(self.ensemble.members, self.scorers)):
            self.model.set_adapter(f"member{i}")
            score = scorer.score_sharded if sharded else scorer.score
            result = score(texts, progress=progress)
            results.append(result)
            probabilities.append((member.calibrate(result) if self.calibrated else result).probabilities)
        self.member_results = results
        mean = np.mean(probabilities, axis=0)
        return ScoreResult(
            predictions=mean.argmax(-1).tolist(),
            probabilities=mean,
            mode=self.mode,
            n_truncated=results[0].n_truncated,
            truncated=results[0].truncated,
        )


def ensemble_scorer(
    ensemble: Ensemble,
    *,
    labels: list[str] | None = None,
    mode: str | None = None,
    calibrated: bool = True,
    batch_size: int | None = None,
) -> EnsembleScorer:
    """The scorer of an ensemble, as `eval`, `predict` and `serve` build it: the base loaded once with every adapter
    (`load_ensemble`); `labels` default to the members' own. Example:

        scorer = ensemble_scorer(resolve_ensemble(["runs/fpb-seed42", "runs/fpb-seed7"]))
        result = scorer.score(["Operating profit rose 12 %."])  # mean of the members' calibrated probabilities
    """
    model, tokenizers = load_ensemble(ensemble)
    labels = labels or ensemble.members[0].label_set("an ensemble")
    return EnsembleScorer(
        model, tokenizers, ensemble, labels=labels, mode=mode, calibrated=calibrated, batch_size=batch_size
    )


def inference_form() -> InferenceForm:
    """What an ensemble runs in, for eval's report (`inference`) and serve's /info."""
    from fintrl.scoring.inference import InferenceForm

    return InferenceForm(FORM, dtype="as trained", reason=REASON)
