"""The run folder as a transaction: late failures keep the finished run, resumable leftovers, whole checkpoints only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fintrl.cli.main import main
from fintrl.errors import RunFolderError
from fintrl.recipe.schema import recipe_from_dict
from fintrl.run_folder import METRICS, RunFolder
from fintrl.runner import run
from fintrl.transaction import last_checkpoint, recipe_differences, work_folder
from tests.helpers import tiny_recipe_dict, tree_hash


def tiny(out: Path, **train) -> dict:
    raw = tiny_recipe_dict(out)
    raw["train"] |= {"max_steps": 2, "save_steps": 2, **train}
    raw["eval"]["baselines"] = False
    return raw


def test_incomplete_checkpoints_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    run(recipe_from_dict(tiny(out)))
    good = out / "checkpoints" / "checkpoint-2"
    for step, damage in ((4, "adapter_model.safetensors"), (6, "optimizer.pt"), (8, "trainer_state.json")):
        bad = Path(shutil.copytree(good, out / "checkpoints" / f"checkpoint-{step}"))
        data = (bad / damage).read_bytes()
        (bad / damage).write_bytes(data[: len(data) // 2])  # a full disk cut the save short
    assert last_checkpoint(out) == str(good)
    assert caplog.text.count("skipping incomplete checkpoint") == 3


def test_recipe_differences_name_the_keys() -> None:
    a = recipe_from_dict(tiny(Path("x")))
    b = recipe_from_dict({**tiny(Path("y")), "lora": {"r": 8, "lora_alpha": 8, "target_modules": "all-linear"}})
    assert recipe_differences(a, b) == ["lora.r: 4 -> 8"]  # output_dir may change between attempts


def test_a_late_failure_keeps_the_finished_run_and_the_attempt_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(recipe_from_dict(tiny(out)))
    before = tree_hash(out)

    import fintrl.runner

    real_evaluate = fintrl.runner.evaluate

    def crash(*args, **kwargs):
        raise RuntimeError("scoring died")

    monkeypatch.setattr(fintrl.runner, "evaluate", crash)
    with pytest.raises(RuntimeError):  # after training: the attempt has a checkpoint
        run(recipe_from_dict(tiny(out, max_steps=4)), overwrite=True)
    assert tree_hash(out) == before  # --overwrite replaces only once the new run succeeds
    work = work_folder(out)
    assert (work / "checkpoints" / "checkpoint-4").is_dir()

    monkeypatch.setattr(fintrl.runner, "evaluate", real_evaluate)
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        run(recipe_from_dict(tiny(out, max_steps=4)))
    metrics = run(recipe_from_dict(tiny(out, max_steps=4)), resume=True)
    assert metrics["train"]["resumed_from"].endswith("checkpoint-4") and not work.exists()
    assert json.loads((out / "metrics.json").read_text())["train"]["resumed_from"].endswith("checkpoint-4")
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_an_unfinished_first_run_is_reported_then_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fintrl.runner

    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(tiny(out)))  # JSON is YAML
    real_evaluate = fintrl.runner.evaluate

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fintrl.runner, "evaluate", interrupt)
    assert main(["run", str(recipe)]) == 130
    assert "--resume" in capsys.readouterr().err and not out.exists() and work_folder(out).is_dir()
    monkeypatch.setattr(fintrl.runner, "evaluate", real_evaluate)
    assert main(["run", str(recipe)]) == 5
    assert "unfinished run" in capsys.readouterr().err
    assert main(["run", str(recipe), "--resume"]) == 0
    assert (out / "metrics.json").is_file() and not work_folder(out).exists()


def test_a_run_folder_named_by_a_string_reads_like_one_named_by_a_path(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text(json.dumps({"accuracy": 0.5, "data": {"labels": ["a", "b"]}}))
    assert RunFolder(str(tmp_path)).metrics()["accuracy"] == 0.5
    assert RunFolder(str(tmp_path)) == RunFolder(tmp_path)


def test_a_run_its_caller_stops_leaves_nothing_to_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sweep prunes a trial by raising from `on_curve_point`: no `--resume` advice for a run it then deletes."""

    class Pruned(Exception):
        pass

    def prune(step: int, metrics: dict) -> None:
        if step >= 4:  # after the checkpoint at step 3, which would make the run resumable
            raise Pruned

    out = tmp_path / "trial"
    raw = tiny_recipe_dict(out)
    raw["eval"] |= {"baselines": False, "curve_points": 3, "curve_samples": 4}
    with pytest.raises(Pruned):
        run(recipe_from_dict(raw), on_curve_point=prune)
    assert not out.exists() and not work_folder(out).exists()
    assert "unfinished run is kept" not in caplog.text
