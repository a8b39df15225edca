"""The resolved prompt (`fintrl.model.prompts`): one constructor per source, stored in the run folder, and the same
instruction string in every step that asks the adapter something after training.

The invariant, for every kind of data source and both PEFT families: `fintrl eval RUN` reproduces the run's own
predictions.jsonl, and predict, serve, Ray's actors and the merged export ask with the very instruction training used.
A recipe without `prompt.task` over data that is not sentiment is the case that once went wrong (the run's dumped
recipe said `task: sentiment`, so every later step asked about the sentiment of a topic-trained adapter).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fintrl.errors import RecipeError
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import PromptSection
from fintrl.run_folder import PREDICTIONS, PROMPT, RunFolder
from tests.helpers import tiny_recipe_dict


def _sample(tmp_path: Path) -> Path:
    from fintrl.data.presets import PRESETS

    return Path(shutil.copytree(PRESETS["quickstart"].source, tmp_path / "fin-news"))


def _source(kind: str, tmp_path: Path) -> dict:
    folder = _sample(tmp_path)
    if kind == "preset":
        return {"preset": "quickstart"}
    if kind == "folder":
        return {"preset": None, "path": str(folder), "labels": ["negative", "neutral", "positive"]}
    if kind == "file":
        return {"preset": None, "path": str(folder / "train.csv"), "labels": ["negative", "neutral", "positive"]}
    assert kind == "mixture"
    return {
        "preset": None,
        "mixture": [{"path": str(folder), "name": "a"}, {"path": str(folder / "train.csv"), "name": "b"}],
        "labels": ["negative", "neutral", "positive"],
    }


def _recipe(out: Path, source: dict, method: str) -> dict:
    raw = tiny_recipe_dict(out)
    raw["data"] = {**raw["data"], **source}
    raw["data"] = {k: v for k, v in raw["data"].items() if v is not None}
    if "mixture" in raw["data"]:
        raw["data"].pop("max_eval_samples")
    raw["quantization"] = None  # the invariant is about prompts; unquantized trains fastest on CPU
    raw["train"] |= {"max_steps": 1}
    raw["eval"] |= {"baselines": False, "calibration_samples": 0}
    if method == "prompt_tuning":
        raw["peft"] = {"method": "prompt_tuning", "num_virtual_tokens": 4}
    return raw


EXPECTED_TASK = {"preset": "sentiment", "folder": "class", "file": "class", "mixture": "class"}


def _check_invariant(run_dir: Path, task: str, tmp_path: Path) -> None:
    from fintrl.cli.main import main
    from fintrl.scoring.targets import resolve_target
    from fintrl.serve.service import load_scorer

    stored = json.loads((run_dir / PROMPT).read_text())
    assert stored["task"] == task and f"Classify the {task} of" in stored["instruction"]
    target = resolve_target(str(run_dir))
    assert target.prompt_builder().instruction == stored["instruction"]  # predict, Ray's actors, compare
    assert load_scorer(target, batch_size=4)[0].builder.instruction == stored["instruction"]  # serve

    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--output-dir", str(out)]) == 0
    before = [json.loads(line) for line in (run_dir / PREDICTIONS).read_text().splitlines()]
    again = [json.loads(line) for line in (out / PREDICTIONS).read_text().splitlines()]
    assert [r["prediction"] for r in again] == [r["prediction"] for r in before]
    for a, b in zip(again, before):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


@pytest.mark.parametrize("kind", ["preset", "folder", "file", "mixture"])
def test_eval_reproduces_the_run_with_its_own_prompt(kind: str, tmp_path: Path) -> None:
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    run_dir = tmp_path / "run"
    run(recipe_from_dict(_recipe(run_dir, _source(kind, tmp_path), "lora")))
    _check_invariant(run_dir, EXPECTED_TASK[kind], tmp_path)


def test_a_prompt_learning_adapter_keeps_its_prompt_too(tmp_path: Path) -> None:
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    run_dir = tmp_path / "run"
    run(recipe_from_dict(_recipe(run_dir, _source("folder", tmp_path), "prompt_tuning")))
    _check_invariant(run_dir, "class", tmp_path)


def test_merged_export_and_card_ask_what_training_asked(tmp_path: Path) -> None:
    from fintrl.export.merge import export_merged
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.run_folder import EXPORT_INFO
    from fintrl.runner import run

    run_dir = tmp_path / "run"
    run(recipe_from_dict(_recipe(run_dir, _source("folder", tmp_path), "lora")))
    prompt = RunFolder(run_dir).prompt()
    assert prompt is not None and prompt.task == "class"
    assert prompt.instruction in (run_dir / "README.md").read_text()  # the card's snippet
    export_merged(run_dir, tmp_path / "merged")
    info = json.loads((tmp_path / "merged" / EXPORT_INFO).read_text())
    assert prompt.instruction in json.dumps(info, ensure_ascii=False)


def test_a_hub_dataset_run_stores_its_prompt(tmp_path: Path, local_hub) -> None:  # noqa: ANN001
    from huggingface_hub import HfApi

    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    folder = _sample(tmp_path)
    api = HfApi()
    api.create_repo("fintrl-test/fin-news", repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id="fintrl-test/fin-news", repo_type="dataset")
    source = {"preset": None, "source": "fintrl-test/fin-news", "labels": ["negative", "neutral", "positive"]}
    run_dir = tmp_path / "run"
    run(recipe_from_dict(_recipe(run_dir, source, "lora")))
    _check_invariant(run_dir, "class", tmp_path)


def test_resolve_and_record_round_trip() -> None:
    builder = PromptBuilder.resolve(PromptSection(verbalizers={"up": "bullish"}), ["down", "up"], "market move")
    assert builder.instruction == "Classify the market move of this financial text. Answer with one of: down, bullish."
    assert PromptBuilder.from_record(builder.record(), "prompt.json") == builder
    assert PromptBuilder.resolve(PromptSection(task="topic"), ["a", "b"], "sentiment").task == "topic"  # recipe wins
    assert PromptBuilder.resolve(PromptSection(), ["a", "b"]).task == "class"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": "{text.__class__} {instruction}"}, "unknown placeholder {text.__class__}"),
        ({"template": "{instruction} {text!r}"}, "unknown placeholder {text!r}"),
        ({"template": "{instruction}"}, "must contain the {text} placeholder"),
        ({"answers": ["a", "a"]}, "distinct"),
        ({"labels": "ab"}, "labels must be a list of strings"),
        ({"system": 3}, "system must be a string"),
        ({"extra": 1}, "not a fintrl prompt record"),
    ],
)
def test_a_stored_prompt_is_checked_like_a_recipe(change: dict, message: str) -> None:
    record = PromptBuilder.resolve(PromptSection(), ["a", "b"]).record() | change
    with pytest.raises(RecipeError, match=message.replace("{", r"\{").replace("}", r"\}").replace("!", "!")):
        PromptBuilder.from_record(record, "run/prompt.json")
