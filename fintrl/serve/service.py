"""What `fintrl serve` serves: the request and answer schemas, the label set, version and calibration of a target,
how its scorer loads, and the `Service` behind the endpoints (scorer, micro-batcher, counters)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fintrl.errors import first_line
from fintrl.run_folder import ADAPTER_WEIGHTS
from fintrl.scoring.targets import Target, split_revision
from fintrl.serve.batcher import MicroBatcher

if TYPE_CHECKING:
    from fintrl.scoring.ensemble import Ensemble, EnsembleScorer
    from fintrl.scoring.inference import InferenceForm
    from fintrl.scoring.scorer import LabelScorer, ScoreResult

logger = logging.getLogger("fintrl.serve.app")

Calibrate = Callable[["ScoreResult"], "ScoreResult"]  # the scorer's result -> calibrated (`Target.calibrate`)
# The scorer (an ensemble's, for several adapters), and the form its model runs in
Loader = Callable[[Target], "tuple[LabelScorer | EnsembleScorer, InferenceForm | None]"]


class ClassifyRequest(BaseModel):
    """One text or a list of texts (not both)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="a text to classify", examples=["Operating profit rose to EUR 13.1 mn."])
    texts: list[str] | None = Field(None, description="several texts, answered in order", min_length=1)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("empty text; send at least one non-blank character")
        return v

    @field_validator("texts")
    @classmethod
    def _texts_not_blank(cls, v: list[str] | None) -> list[str] | None:
        blank = [i for i, t in enumerate(v or []) if not t.strip()]
        if blank:
            raise ValueError(f"empty text at position {blank[0]} ({len(blank)} in all); remove blank texts")
        return v

    @field_validator("text", "texts")
    @classmethod
    def _unicode(cls, v: str | list[str] | None) -> str | list[str] | None:
        from fintrl.data.texts import not_unicode

        bad = not_unicode([v] if isinstance(v, str) else v or [])
        if bad:
            raise ValueError(f"text {bad[0]} is not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('send either "text" (a string) or "texts" (a list of strings)')
        return self


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float] = Field(description="every label's probability, in label order; they sum to 1")
    truncated: bool = Field(description="the text was longer than max_length tokens and was cut before scoring")


class ClassifyResponse(BaseModel):
    model: str
    version: str | None
    calibrated: bool
    label: str | None = Field(None, description='for {"text": ...}')
    probabilities: dict[str, float] | None = Field(None, description='for {"text": ...}')
    truncated: bool | None = Field(None, description='for {"text": ...}')
    results: list[Prediction] | None = Field(None, description='for {"texts": [...]}, in order')


# -- what is served --------------------------------------------------------------------------------------------
def target_labels(target: Target) -> list[str]:
    return target.label_set("serve")


def load_scorer(target: Target, batch_size: int, *, exact_4bit: bool = False) -> tuple[LabelScorer, InferenceForm]:
    """The target as `fintrl predict` loads it (`load_inference`: its fastest form that agrees with the adapter), and
    a scorer whose one batch is one micro-batch."""
    from fintrl.scoring.inference import load_inference

    loaded = load_inference(target, exact_4bit=exact_4bit)
    return target.scorer(loaded.model, loaded.tokenizer, batch_size=batch_size), loaded.form


def calibration(target: Target) -> Calibrate | None:
    """The run's calibration when it has one (`Target.calibration`, applied by `Target.calibrate(result)` as
    `predict` applies it), else None: answers are then uncalibrated."""
    if getattr(target, "calibration", None) is None or not callable(getattr(target, "calibrate", None)):
        return None
    return target.calibrate


def _portable(name: str | None) -> str | None:
    """A Hub id or name as is; a local path by its folder name (no path of this machine in an answer)."""
    return Path(name).name if name and Path(name).expanduser().exists() else name


def adapter_version(target: Target) -> str | None:
    """The Hub revision asked for (org/name@v1.0.0), the commit of a downloaded snapshot, else the adapter weights'
    sha256 (first 12 hex digits: it changes whenever the run is retrained); the base's revision without adapter."""
    _, revision = split_revision(target.name)
    if revision:
        return revision
    if target.adapter is None:
        return target.recipe.model.revision
    folder = Path(target.adapter)
    if folder.parent.name == "snapshots":  # the Hub cache: snapshots/<commit>/
        return folder.name[:12]
    weights = folder / ADAPTER_WEIGHTS
    if weights.is_file():
        digest = hashlib.sha256()
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()[:12]
    return None


class Service:
    """The state behind the endpoints: target (an ensemble's first member, whose recipe and labels all share),
    scorer (None until loaded), batcher and counters."""

    def __init__(
        self,
        target: Target,
        *,
        loader: Loader,
        calibrate: Calibrate | None,
        batcher_args: dict[str, Any],
        ensemble: Ensemble | None = None,
    ) -> None:
        self.target, self.loader, self.calibrate, self.ensemble = target, loader, calibrate, ensemble
        self.labels = target_labels(target)
        self.scorer: LabelScorer | EnsembleScorer | None = None
        self.form: InferenceForm | None = None
        self.load_error: BaseException | None = None
        self.requests = 0
        self.batcher: MicroBatcher[Prediction] = MicroBatcher(self._score, **batcher_args)
        members = ensemble.members if ensemble else (target,)
        names = [split_revision(member.name)[0] for member in members]
        versions = [adapter_version(member) for member in members]
        self.model_id = " + ".join(_portable(name) or name for name in names)
        self.version = None if None in versions else "+".join(versions)
        if ensemble is not None and ensemble.source:  # one ensemble folder or repo: its name, its revision
            name, revision = split_revision(ensemble.source)
            self.model_id, self.version = _portable(name) or name, revision or self.version
        self.started = time.time()

    def _score(self, texts: list[str]) -> list[Prediction]:  # in the batcher's worker thread
        result = self.scorer.score(texts, progress=False)
        if self.calibrated:
            result = self.calibrate(result)
        truncated = result.truncated or [False] * len(texts)
        return [
            Prediction(
                label=self.labels[pred],
                probabilities={name: float(p) for name, p in zip(self.labels, probs)},
                truncated=bool(cut),
            )
            for pred, probs, cut in zip(result.predictions, result.probabilities, truncated)
        ]

    async def load(self, on_error: Callable[[BaseException], None] | None) -> None:
        """Load in a daemon thread (Ctrl-C during a long load is not held up by it)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(outcome: tuple[bool, Any]) -> None:
            if not done.done():
                done.set_result(outcome)

        def work() -> None:
            try:
                outcome = (True, self.loader(self.target))
            except BaseException as err:  # noqa: BLE001 - reported through /health and on_error
                outcome = (False, err)
            with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped meanwhile
                loop.call_soon_threadsafe(settle, outcome)

        start = time.perf_counter()
        threading.Thread(target=work, name="fintrl-load", daemon=True).start()
        ok, value = await done
        if ok:
            self.scorer, self.form = value
            logger.info("model loaded in %.1f s; ready (%s scoring)", time.perf_counter() - start, value.mode)
            return
        self.load_error = value
        logger.error("loading the model failed: %s: %s", type(value).__name__, first_line(value))
        if on_error is not None:
            on_error(value)

    @property
    def calibrated(self) -> bool:
        """Answers are calibrated: a calibration, fitted on this scoring mode's probabilities (when it says which);
        an ensemble's scorer calibrates each member that has one."""
        if self.ensemble is not None:
            return any(self.ensemble.record()["calibrated"])
        if self.calibrate is None:
            return False
        fitted = getattr(self.target, "calibration", None)
        applies_to = getattr(fitted, "applies_to", None)
        return applies_to is None or self.scorer is None or bool(applies_to(self.scorer.mode))

    def info(self) -> dict[str, Any]:
        recipe, stats = self.target.recipe, self.batcher.stats
        return {
            "model": self.model_id,
            "base_model": _portable(recipe.model.name_or_path),
            "adapter": self.model_id if self.target.adapter else None,
            "version": self.version,
            "labels": self.labels,
            "scoring_mode": self.scorer.mode if self.scorer else recipe.eval.mode,
            "max_length": self.scorer.max_length if self.scorer else recipe.eval.max_length,
            "calibrated": self.calibrated,
            "loaded": self.scorer is not None,
            "inference": self.form.record() if self.form else None,
            **({"ensemble": self.ensemble.record()} if self.ensemble else {}),
            "batching": {"max_batch_size": self.batcher.max_batch_size, "max_wait_ms": self.batcher.max_wait * 1000},
            "counters": {
                "requests": self.requests,
                "texts_scored": stats.texts,
                "batches": stats.batches,
                "failed_batches": stats.failed_batches,
                "largest_batch": stats.largest_batch,
                "mean_batch_size": round(stats.texts / stats.batches, 3) if stats.batches else None,
                "score_seconds": round(stats.score_seconds, 3),
            },
            "uptime_s": round(time.time() - self.started, 1),
        }

    def metrics(self) -> str:
        c = self.info()["counters"]
        rows = [
            ("fintrl_model_loaded", "gauge", "1 once the model is loaded", int(self.scorer is not None)),
            ("fintrl_requests_total", "counter", "classify requests accepted", c["requests"]),
            ("fintrl_texts_scored_total", "counter", "texts scored", c["texts_scored"]),
            ("fintrl_batches_total", "counter", "batches scored", c["batches"]),
            ("fintrl_failed_batches_total", "counter", "batches whose scoring failed", c["failed_batches"]),
            ("fintrl_largest_batch", "gauge", "most texts scored in one batch", c["largest_batch"]),
            ("fintrl_score_seconds_total", "counter", "seconds spent scoring", c["score_seconds"]),
        ]
        return "".join(f"# HELP {n} {h}\n# TYPE {n} {t}\n{n} {v}\n" for n, t, h, v in rows)
