"""Named datasets (presets): where each lives on the Hub, how its columns and labels read, and its caveats.

A recipe names one with `data.preset`; `data.path` then points the same layout at local files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fintrl.recipe.schema import DataSection, MixtureSource

DEFAULT_TASK = "class"  # the task of data that does not name one ("Classify the class of ...")


@dataclass(frozen=True)
class Preset:
    """A named dataset: where it lives on the Hub, how its columns and labels read there, and what a reader of its
    scores must know (`caveat`, shown on the model card)."""

    source: str
    labels: tuple[str, ...]
    task: str
    license: str
    config_name: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    score_thresholds: tuple[float, float] | None = None  # float scores -> negative / neutral / positive
    caveat: str = ""


_FPB = dict(
    source="takala/financial_phrasebank",
    labels=("negative", "neutral", "positive"),
    task="sentiment",
    license="cc-by-nc-sa-3.0",
    text_column="sentence",
)
_FPB_CAVEAT = (
    "English financial news sentences; this config keeps those on which {} of the annotators agreed (higher "
    "agreement, easier sentences). The Hub dataset has no evaluation split of its own. Non-commercial licence."
)
_TWEETS = "English finance tweets: short, informal, and from a limited period."
TFN_TOPICS = (
    "Analyst Update",
    "Fed | Central Banks",
    "Company | Product News",
    "Treasuries | Corporate Debt",
    "Dividend",
    "Earnings",
    "Energy | Oil",
    "Financials",
    "Currencies",
    "General News | Opinion",
    "Gold | Metals | Materials",
    "IPO",
    "Legal | Regulation",
    "M&A | Investments",
    "Macro",
    "Markets",
    "Politics",
    "Personnel Change",
    "Stock Commentary",
    "Stock Movement",
)  # id order of the dataset card (LABEL_0 .. LABEL_19)

PRESETS: dict[str, Preset] = {
    **{
        f"fpb_{level}": Preset(
            config_name=f"sentences_{level}",
            **_FPB,
            caveat=_FPB_CAVEAT.format("all" if level == "allagree" else f"at least {level[:2]} %"),
        )
        for level in ("allagree", "75agree", "66agree", "50agree")
    },
    # Card order: LABEL_0 Bearish, LABEL_1 Bullish, LABEL_2 Neutral (some forks swap 1 and 2).
    "tfns": Preset(
        source="zeroshot/twitter-financial-news-sentiment",
        labels=("bearish", "bullish", "neutral"),
        task="sentiment",
        license="mit",
        caveat=_TWEETS,
    ),
    "tfn_topic": Preset(
        source="zeroshot/twitter-financial-news-topic",
        labels=TFN_TOPICS,
        task="topic",
        license="mit",
        caveat=_TWEETS + " Some of the 20 topics are rare: their per-class scores are noisy.",
    ),
    "fiqa": Preset(
        source="pauri32/fiqa-2018",
        labels=("negative", "neutral", "positive"),
        task="sentiment",
        license="unknown",
        text_column="sentence",
        label_column="score",
        score_thresholds=(-0.1, 0.1),
        caveat="FiQA-2018 task 1 headlines and posts: scores in [-1, 1] binned into three classes at +-0.1 by "
        "fintrl (as in FinGPT's evaluation), not by the authors. The data's licence is not stated.",
    ),
    "quickstart": Preset(
        source=str(Path(__file__).resolve().parents[1] / "resources" / "quickstart"),
        labels=("negative", "neutral", "positive"),
        task="sentiment",
        license="apache-2.0",
        caveat="A tiny hand-written sample for fintrl's quickstart: illustrative, not a benchmark. Its "
        "sentiment is deliberately unambiguous: scores on it say little about real financial text.",
    ),
}


def data_task(section: DataSection | MixtureSource) -> str:
    """What the data classifies, as the prompt's `{task}` says it unless the recipe names one: a preset's task, `class`
    for other sources, a mixture's common task (else `class`). Known without reading the data."""
    if getattr(section, "mixture", None):
        tasks = {data_task(entry) for entry in section.mixture}
        return tasks.pop() if len(tasks) == 1 else DEFAULT_TASK
    preset = PRESETS.get(section.preset) if section.preset else None
    return preset.task if preset else DEFAULT_TASK
