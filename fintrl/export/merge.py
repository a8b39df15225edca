"""`fintrl export RUN --merged OUT`: the run's LoRA adapter merged into its base, as a plain transformers model folder.

The folder loads with `pipeline("text-generation", model=OUT)` alone: no PEFT, no `tokenizer=`, because it holds the
adapter's tokenizer and chat template and a generation config whose stop token ends the answer (greedy, at most the
longest label's tokens + 1). The base is loaded *unquantized* (in `--dtype`) for the merge: PEFT's `merge_and_unload`
cannot fold LoRA into 4-bit weights without rounding them again, so a QLoRA adapter is merged into the full-precision
base it was trained on top of. Its predictions can then differ from the adapter's (which was trained and scored on
the 4-bit base): the export scores the run's eval rows with both and reports how far apart they are. `--dequantize`
merges into the 4-bit base's own weights instead, dequantized to `--dtype`: the weights the adapter was trained
against, so the merged model answers as the adapter did (but its base weights carry the 4-bit rounding).

Besides the model, OUT holds the run's recipe, the merged model's own report on the eval rows (`metrics.json`,
`predictions.jsonl`), `fintrl_export.json` (what it was merged from, labels, prompt, stop tokens, agreement with the
adapter) and a model card; `fintrl publish OUT --merged --repo org/name` publishes it (`fintrl.hub.merged_card`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from fintrl import run_folder, transaction
from fintrl.errors import ModelError, RecipeError, RunFolderError, StorageError, first_line
from fintrl.model.peft_methods import PROMPT_TYPES
from fintrl.recipe.schema import ModelSection, label_names
from fintrl.run_folder import (
    ADAPTER_CONFIG,
    CARD,
    EXPORT_INFO,
    PREDICTIONS,
    RunFolder,
    prediction_rows,
    read_predictions,
    write_predictions,
)

if TYPE_CHECKING:
    from fintrl.recipe.schema import Recipe
    from fintrl.scoring.scorer import LabelScorer, ScoreResult
    from fintrl.scoring.targets import Target

logger = logging.getLogger(__name__)

DTYPES = get_args(ModelSection.model_fields["dtype"].annotation)  # auto, float32, bfloat16, float16


def check_output(out: Path, run_dir: Path, *, overwrite: bool) -> None:
    """Refuse, before anything loads, an OUT that is the run, inside it, a file, or an existing folder without
    --overwrite (and, even with it, a folder fintrl's export did not make)."""
    from fintrl.transaction import enclosing_run

    inside = enclosing_run(out.parent)
    if out.resolve() == run_dir.resolve() or inside is not None:
        raise RunFolderError(
            f"--merged {out}: the export goes outside the run folder {inside or run_dir}; choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise StorageError(f"--merged {out} is a file; the export is a folder (choose another path)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / EXPORT_INFO).is_file():
            raise RunFolderError(
                f"--merged {out} exists and is not a fintrl export; choose another folder (fintrl never replaces a "
                "folder it did not make)"
            )
        if not overwrite:
            raise RunFolderError(
                f"--merged {out} already holds an export; --overwrite replaces it once the new one is written, or "
                "choose another folder"
            )


def _stop_tokens(scorer: LabelScorer) -> list[int]:
    """The token(s) that end an answer: the last token of every label sequence, where the template ends the answer
    with a stop token (the scorer cuts each label there); else the model's own stop tokens."""
    stops = set(scorer.label_tokens.stop_ids)
    ends = {ids[-1] for ids in scorer.label_ids}
    return sorted(ends) if ends <= stops else sorted(stops - {None})


def generation_config(model: Any, tokenizer: Any, scorer: LabelScorer) -> Any:
    """Greedy, stops after the answer: eos = the end-of-answer token(s), at most the longest label + 1 tokens."""
    from transformers import GenerationConfig

    eos = _stop_tokens(scorer)
    return GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=max(map(len, scorer.label_ids)) + 1,
    )


def agreement(adapter: ScoreResult, merged: ScoreResult, gold: list[int]) -> dict[str, Any]:
    """How far the merged model's predictions are from the adapter's, on the same rows and scoring mode."""
    import numpy as np

    from fintrl.scoring.inference import agreement as measure

    found = measure(adapter, merged)
    return {
        "n": len(gold),
        "scoring_mode": merged.mode,
        "same_prediction": found["same_prediction"],
        **{key: round(found[key], 6) for key in ("agreement", "max_abs_dprob", "mean_abs_dprob")},
        "adapter_accuracy": round(float(np.mean(np.asarray(adapter.predictions) == np.asarray(gold))), 6),
        "merged_accuracy": round(float(np.mean(np.asarray(merged.predictions) == np.asarray(gold))), 6),
    }


def _eval_rows(run: RunFolder, labels: list[str]) -> tuple[list[str], list[int]]:
    """The eval rows the run was scored on (its predictions.jsonl): the same texts for adapter and merged model,
    without the data source (a Hub dataset may be out of reach where the export runs)."""
    rows = read_predictions(run.file(PREDICTIONS), labels)
    if rows is None:
        raise RunFolderError(f"{run.path} has no {PREDICTIONS}: rerun it with `fintrl run` to export it")
    return [r["text"] for r in rows], [labels.index(r["gold"]) for r in rows]


def _merged_report(
    run: RunFolder, recipe: Recipe, labels: list[str], gold: list[int], result: ScoreResult, record: dict[str, Any]
) -> dict[str, Any]:
    """The merged model's own report on the eval rows (metrics.json of the export): what `publish` and `versions`
    read; the data and model as the run's report names them (portable)."""
    from fintrl.evaluation.report import score_report
    from fintrl.hub.staging import portable_report

    source = portable_report(run.metrics())
    report = score_report(gold, result, labels, max_length=recipe.eval.max_length)
    report["model"] = source.get("model")
    report["data"] = source["data"]
    report["train"] = source.get("train", {})
    report["export"] = record
    return report


def _merged(target: Target, dtype: str, *, dequantize: bool) -> Any:
    """The adapter merged into its base loaded unquantized in `dtype`, or (`dequantize`) into the 4-bit base as the
    recipe quantizes it, dequantized to `dtype` (the merge `fintrl.scoring.inference` runs dense inference on)."""
    from fintrl.scoring.inference import merged_dense
    from fintrl.scoring.targets import load_for_inference

    if dequantize:
        return merged_dense(target, dtype)
    model_section = target.recipe.model.model_copy(update={"dtype": dtype})
    plain = target.recipe.model_copy(update={"quantization": None, "model": model_section})
    return load_for_inference(dataclasses.replace(target, recipe=plain))[0].merge_and_unload(progressbar=True)


def export_merged(
    run_dir: Path,
    out: Path,
    *,
    dtype: str = "auto",
    dequantize: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Merge a finished LoRA run into its base and write a self-contained model folder at `out`; returns the export
    record (also `out/fintrl_export.json`). Built aside (`.OUT.incomplete`) and swapped in only once complete.

    ```python
    info = export_merged(Path("runs/quickstart"), Path("runs/quickstart-merged"))
    info["agreement"]["agreement"], info["agreement"]["max_abs_dprob"]
    ```
    """
    from fintrl.model.loading import torch_dtype
    from fintrl.scoring.inference import free_memory
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.scoring.targets import load_for_inference, resolve_target

    run_dir, out = Path(run_dir), Path(out)
    if dtype not in DTYPES:
        raise RecipeError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    run = RunFolder(run_dir).require_finished("export")
    if not run.file(ADAPTER_CONFIG).is_file():
        raise RunFolderError(
            f"{run_dir} holds no adapter ({ADAPTER_CONFIG}): there is nothing to merge (a fully fine-tuned run "
            "is a model folder already)"
        )
    peft_type = json.loads(run.file(ADAPTER_CONFIG).read_text()).get("peft_type")
    if peft_type in PROMPT_TYPES:  # refused before anything loads: PEFT has nothing to merge for these
        raise ModelError(
            f"{run_dir}: a {peft_type.lower()} adapter learns virtual tokens, not weight changes, so it cannot be "
            "merged into the base; publish the adapter (`fintrl publish`) and load it with PEFT's "
            "AutoPeftModelForCausalLM, as its card shows"
        )
    check_output(out, run_dir, overwrite=overwrite)
    start = time.perf_counter()
    recipe = run.recipe()
    target = resolve_target(str(run_dir), trust_remote_code=trust_remote_code)
    labels = label_names(target.labels)
    texts, gold = _eval_rows(run, labels)
    builder = target.prompt_builder(labels)
    section = recipe.eval

    mode = "auto" if section.mode == "generate" else section.mode  # an exact mode: every row gets a label

    def scorer(model: Any, tokenizer: Any) -> LabelScorer:
        return LabelScorer.from_eval(model, tokenizer, builder, section, mode=mode)

    quantized = bool(recipe.quantization)
    if dequantize and not quantized:
        raise RecipeError(f"--dequantize: {run_dir} was not trained on a 4-bit base (its recipe has no quantization)")
    merged_dtype = str(torch_dtype(dtype)).removeprefix("torch.")
    if quantized:
        into = (
            f"its 4-bit weights dequantized to {merged_dtype}"
            if dequantize
            else f"the unquantized base ({merged_dtype})"
        )
        print(
            f"fintrl: the adapter was trained on a 4-bit base; the merged model is the adapter merged into {into}, "
            f"so its predictions can differ from the adapter's: both are scored on the run's {len(texts)} eval rows",
            file=sys.stderr,
        )
    logger.info("scoring the adapter (as eval and predict load it) on %d eval rows", len(texts))
    model, tokenizer = load_for_inference(target)
    adapter_result = scorer(model, tokenizer).score(texts)
    del model
    free_memory()

    logger.info("merging the adapter into the base (%s)", merged_dtype)
    try:
        merged = _merged(target, dtype, dequantize=dequantize)  # the tokenizer is the adapter's, as loaded above
    except (AttributeError, NotImplementedError, ValueError) as err:  # PEFT methods without merging (prompt tuning)
        raise ModelError(f"{run_dir}: its adapter cannot be merged into the base ({first_line(err)})") from None
    merged_scorer = scorer(merged, tokenizer)
    merged.generation_config = generation_config(merged, tokenizer, merged_scorer)
    logger.info("scoring the merged model on the same rows")
    merged_result = merged_scorer.score(texts)

    record = {
        "merged_from": {
            "run": transaction.run_name(run_dir),
            "base_model": recipe.publish.base_model or _portable(recipe.model.name_or_path),
            "adapter_repo": recipe.publish.repo_id,
            "trained_quantization": recipe.quantization,
            "method": "peft merge_and_unload" + (", into the dequantized 4-bit base" if dequantize else ""),
        },
        "dtype": merged_dtype,
        "labels": labels,
        "answers": builder.answers,
        "prompt": {
            "system": builder.system,
            "user_template": builder.user_message("{text}"),
            "example_messages": builder.messages("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."),
        },
        "generation": {
            "eos_token_id": merged.generation_config.eos_token_id,
            "max_new_tokens": merged.generation_config.max_new_tokens,
            "do_sample": False,
        },
        "agreement": agreement(adapter_result, merged_result, gold),
        "merged": {"dtype": merged_dtype, "unquantized_base": not dequantize, "trained_on_4bit_base": quantized},
    }
    from fintrl.hub.merged_card import render_merged_card

    with transaction.eval_output(out, overwrite=overwrite, kind="export", marker=EXPORT_INFO) as work:
        merged.save_pretrained(work)
        tokenizer.save_pretrained(work)
        folder = RunFolder(work)
        folder.write_recipe(recipe)
        folder.write_prompt(builder)  # the merged model is asked what the adapter was trained with
        rows = prediction_rows(texts, gold, labels, merged_result.predictions, merged_result.probabilities)
        write_predictions(folder.file(PREDICTIONS), rows)
        record["seconds"] = round(time.perf_counter() - start, 2)
        folder.write_metrics(_merged_report(run, recipe, labels, gold, merged_result, record))
        run_folder.write_atomic(folder.file(EXPORT_INFO), json.dumps(record, indent=2, ensure_ascii=False))
        run_folder.write_atomic(folder.file(CARD), render_merged_card(work))
    del merged
    free_memory()
    shown = record["agreement"]
    logger.info(
        "exported %s: merged and adapter agree on %d of %d eval rows (%.1f %%), max |dp| %.2g; accuracy %.3f "
        "(adapter %.3f)",
        out,
        shown["same_prediction"],
        shown["n"],
        100 * shown["agreement"],
        shown["max_abs_dprob"],
        shown["merged_accuracy"],
        shown["adapter_accuracy"],
    )
    return record


def _portable(name: str) -> str | None:
    from fintrl.hub.staging import portable_name

    return portable_name(name)
