"""`fintrl sweep`: the space is checked like a recipe before anything trains; trials are ordinary runs scored by the
exact scorer; the best is compared with the recipe's own run; a stopped sweep resumes; pruning stops trials
whose learning curve falls behind by more than its noise."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from fintrl.cli.main import main
from fintrl.sweep import study as sweep_study
from fintrl.sweep.pruning import FLOOR, MARGIN
from fintrl.sweep.settings import SweepSettings
from fintrl.sweep.space import check_space, load_space
from fintrl.sweep.study import sweep
from tests.helpers import tiny_recipe_dict


@pytest.fixture
def recipe(tmp_path: Path) -> str:
    raw = tiny_recipe_dict(tmp_path / "unused")
    raw["train"] |= {"max_steps": 2}
    raw["eval"] |= {"baselines": False, "calibration_samples": 0, "curve_points": 2}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty; give at least one recipe field and its values"),
        ("train.learning_rate: {log_uniform: [0, 1.0e-3]}", "a log scale needs low above 0"),
        ("train.learning_rate: {uniform: [1.0e-3, 1.0e-4]}", "low must be below high"),
        ("train.learning_rate: {normal: [0, 1]}", "give a list of values or one range"),
        ("train.num_train_epochs: {int: [1.5, 3]}", "give whole numbers"),
        ("lora.r: []", "an empty list"),
        ("lora.r: [8, 8]", "a value is listed twice"),
        ("learning_rate: [1.0e-4]", "give a recipe field as section.key"),
        ("train.learnig_rate: [1.0e-4]", "train.learnig_rate"),
        ("lora.r: [0, 8]", "lora.r = 0"),
    ],
)
def test_a_bad_space_is_one_line_before_anything_trains(
    recipe: str, tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", recipe, "--space", space(tmp_path, text), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fintrl: error: ") and "\n" not in err and message in err, err
    assert not out.exists()


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted((RECIPES / "spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_check_against_the_recipes_they_name(path: Path) -> None:
    model = path.stem.split("_")[0]  # spaces/<model>_<what>.yaml fits recipes/*_<model>.yaml
    recipes = sorted(RECIPES.glob(f"*_{model}.yaml"))
    assert recipes, f"{path.name}: no recipes/*_{model}.yaml to sweep"
    for recipe_path in recipes:
        check_space(load_space(path), str(recipe_path), [])


def test_a_recipe_with_seeds_is_refused(recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", recipe, "--space", space(tmp_path, "lora.r: [2, 4]"), "--output-dir", str(tmp_path / "s")]
    assert main([*argv, "--set", "seeds=[3, 4]"]) == 2
    assert "a sweep trains one run per trial" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_a_sweep_finds_its_best_trial_and_compares_it_with_the_recipes_own_run(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "sweep"
    text = "train.learning_rate: {log_uniform: [1.0e-3, 1.0e-2]}\nlora.r: [2, 4]\n"
    argv = ["sweep", recipe, "--space", space(tmp_path, text), "--trials", "3", "--output-dir", str(out)]
    tracked = ["--set", "train.report_to=trackio", "--set", "train.project=sweep-test"]
    assert main([*argv, *tracked]) == 0
    runs = SQLiteStorage.get_runs("sweep-test")  # each trial (and the baseline) a run of one trackio project
    assert sorted(r.rsplit("-", 2)[0] for r in runs) == ["baseline", "trial-000", "trial-001", "trial-002"]
    argv += tracked
    result = json.loads((out / "sweep.json").read_text())
    assert [t["state"] for t in result["trials"]] == ["complete"] * 3
    assert {tuple(t["params"]) for t in result["trials"]} == {("train.learning_rate", "lora.r")}
    study = optuna.load_study(study_name="fintrl", storage=f"sqlite:///{out / 'optuna.db'}")
    assert all(0 < t.user_attrs[MARGIN] < 1 for t in study.trials)  # each curve point's noise, for the pruner
    assert all(0 < t.user_attrs[FLOOR] < 1 for t in study.trials)  # and the majority answer's score
    best = result["best"]
    assert best["value"] == max(t["value"] for t in result["trials"]) and len(best["interval"]) == 2
    report = json.loads((Path(best["run"]) / "metrics.json").read_text())
    assert report["f1_macro"] == best["value"]
    recipe_used = yaml.safe_load((Path(best["run"]) / "recipe.yaml").read_text())
    assert recipe_used["lora"]["r"] == best["params"]["lora.r"]
    kept = sorted(p.name for p in (out / "trials").iterdir())
    assert kept == [f".{Path(best['run']).name}.lock", Path(best["run"]).name]  # --keep best
    assert (out / "baseline" / "metrics.json").is_file() and (out / "sweep.png").is_file()
    assert result["comparison"]["verdict"] and result["comparison"]["a"] == str(out / "baseline")
    base = result["baseline"]  # the recipe's own run, a row like a trial's: its values, score and interval
    baseline_report = json.loads((out / "baseline" / "metrics.json").read_text())
    assert base["run"] == str(out / "baseline") and base["value"] == baseline_report["f1_macro"]
    assert base["interval"] == baseline_report["intervals"]["f1_macro"]
    assert base["params"] == {"train.learning_rate": None, "lora.r": 4}  # the recipe leaves the rate to TRL
    shown = capsys.readouterr().out
    assert "| trial | train.learning_rate | lora.r | f1_macro |" in shown and "against the recipe's own" in shown
    assert f"| baseline | default | 4 | {base['value']:.4f} |" in shown

    assert main(argv) == 0  # all trials done: a rerun trains nothing more
    assert len(json.loads((out / "sweep.json").read_text())["trials"]) == 3
    other = space(tmp_path, "lora.r: [2, 8]\n")
    assert main(["sweep", recipe, "--space", other, "--trials", "3", "--output-dir", str(out), *tracked]) == 5
    assert "holds another sweep (space differ)" in capsys.readouterr().err


def test_a_stopped_sweep_resumes_without_its_interrupted_trial(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fintrl.runner

    out, calls, real = tmp_path / "sweep", [], fintrl.runner.run

    def interrupted(recipe, **kwargs):
        calls.append(recipe.output_dir)
        if len(calls) == 3:  # baseline, trial 0, then Ctrl-C in trial 1
            raise KeyboardInterrupt
        return real(recipe, **kwargs)

    settings = SweepSettings(trials=3)
    path = space(tmp_path, "lora.r: [2, 4]\n")
    monkeypatch.setattr(fintrl.runner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(recipe, path, out, settings=settings)
    monkeypatch.setattr(fintrl.runner, "run", real)
    result = sweep(recipe, path, out, settings=settings)
    states = [t["state"] for t in result["trials"]]
    assert states == ["complete", "fail", "complete", "complete"]  # the interrupted one discarded, 3 finished
    assert not (out / "trials" / "trial-001").exists()


def scripted_sweep(
    recipe: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scores: dict[float, tuple[float, float]],
    majority: float | None = None,
) -> list[tuple[float, str]]:
    """A sweep whose trials are scripted by their learning rate (no training): each scores `(value, half-width of
    its interval)` at every curve point, where answering the most common label scores `majority`. Returns (learning
    rate, state) of the trials judged once two had finished."""
    import fintrl.runner
    from fintrl.sweep import results

    def scripted(recipe, *, on_curve_point=None, **_kwargs):
        score, half = scores[recipe.train["learning_rate"]]
        point = {"f1_macro": score, "accuracy": score, "intervals": {"f1_macro": [score - half, score + half]}}
        if majority is not None:
            point["majority"] = {"f1_macro": majority, "accuracy": majority}
        for step in (0, 1, 2):
            on_curve_point(step, point)
        return {"f1_macro": score, "intervals": {}}

    monkeypatch.setattr(fintrl.runner, "run", scripted)
    baseline = tmp_path / "baseline"  # the recipe's own run, as far as sweep.json and its plot read it
    baseline.mkdir()
    report = {"f1_macro": 0.5, "intervals": {"f1_macro": [0.4, 0.6]}, "data": {"labels": ["down", "up"]}}
    (baseline / "metrics.json").write_text(json.dumps(report))
    shutil.copy(recipe, baseline / "recipe.yaml")
    monkeypatch.setattr(sweep_study, "_baseline", lambda *args: baseline)
    monkeypatch.setattr(results, "finish", lambda out, spec, study, dims, baseline, keep: study)
    rates = ", ".join(f"{rate:.1e}" for rate in scores)
    path = space(tmp_path, f"train.learning_rate: [{rates}]\n")
    study = sweep(recipe, path, tmp_path / "s", settings=SweepSettings(trials=8))
    done, judged = 0, []
    for t in study.trials:  # the pruner judges a trial once two have finished
        if done >= 2:
            judged.append((t.params["train.learning_rate"], t.state.name))
        done += t.state.name == "COMPLETE"
    return judged


def test_pruning_stops_a_trial_whose_curve_falls_behind_beyond_its_noise(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    judged = scripted_sweep(recipe, tmp_path, monkeypatch, {1e-3: (0.9, 0.05), 2e-3: (0.8, 0.05), 3e-3: (0.1, 0.05)})
    assert {state for rate, state in judged if rate == 3e-3} == {"PRUNED"}
    assert {state for rate, state in judged if rate != 3e-3} <= {"COMPLETE"}
    said = re.findall(
        r"pruned: f1_macro 0\.100 ± 0\.050 at step 1, below the finished trials' median (\S+) by",
        capsys.readouterr().out,
    )
    assert said and all(float(median) > 0.1 + 0.05 for median in said)  # the median it trailed beyond its noise


def test_a_trial_behind_the_median_by_less_than_its_noise_is_not_pruned(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.85 against a median of 0.875 or 0.9, with a point's interval of +-0.06: noise, so it trains to the end."""
    judged = scripted_sweep(recipe, tmp_path, monkeypatch, {1e-3: (0.9, 0.06), 2e-3: (0.9, 0.06), 3e-3: (0.85, 0.06)})
    assert 3e-3 in {rate for rate, _state in judged}
    assert judged and {state for _rate, state in judged} == {"COMPLETE"}


@pytest.mark.parametrize(("majority", "state"), [(0.27, "COMPLETE"), (0.1, "PRUNED")])
def test_a_trial_is_not_pruned_on_the_majority_plateau_a_finished_trial_shared(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, majority: float, state: str
) -> None:
    """0.27 +- 0.013 against a median of 0.585 or more is far behind, unless 0.27 is what answering the most common
    label scores and a finished trial sat there too (as all-`neutral` TFNS trials did): that point says nothing of
    the end. (The seeded sampler's first two trials are 2e-3 and 3e-3: one finished trial on each side.)"""
    scores = {1e-3: (0.9, 0.05), 2e-3: (0.9, 0.05), 3e-3: (0.27, 0.013)}
    judged = scripted_sweep(recipe, tmp_path, monkeypatch, scores, majority=majority)
    assert {s for rate, s in judged if rate == 3e-3} == {state}


def test_without_optuna_a_sweep_is_one_line_saying_what_to_install(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    import fintrl.sweep

    for name in ("study", "pruning"):  # imported afresh, as a first `fintrl sweep` does; the originals put back after
        monkeypatch.setattr(fintrl.sweep, name, getattr(fintrl.sweep, name))
        monkeypatch.delitem(sys.modules, f"fintrl.sweep.{name}")
    argv = ["sweep", recipe, "--space", space(tmp_path, "lora.r: [2, 4]\n"), "--output-dir", str(tmp_path / "s")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "fintrl: error: fintrl sweep needs Optuna, which is not installed: pip install 'fintrl[sweep]'"
    )
