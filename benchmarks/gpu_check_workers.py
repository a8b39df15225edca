"""gpu_check's workers, each run in its own process by `benchmarks.gpu_check` (through `harness.run_worker`).

`train(spec)` measures one training part (`trl_default`, `fintrl` and its variants), `score(spec)` the `scoring` part
and `score_forms(spec)` the `dense_scoring` part, all on a Mistral-7B-shaped model (or, with `spec["tiny"]`, a 4-layer
one) with random weights, quantized to 4-bit NF4 while it loads, exactly as `fintrl.model.loading.load_model`
quantizes a real checkpoint. See gpu_check.py.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_scoring import forward_only  # the same plain-forward reference as bench_scoring
from benchmarks.harness import (
    peak_memory,
    reset_peak_memory,
    round_robin,
    stopwatch,
    sync,
)
from benchmarks.training import build_bench_trainer, measure_training


def load_setup(spec: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Recipe (with the check's overrides), tokenizer, labelled data and prompt builder, all through fintrl."""
    from fintrl.checks.library_fields import check_library_fields
    from fintrl.data.loading import load_labeled_data
    from fintrl.model.loading import has_cuda, load_tokenizer
    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import load_recipe

    overrides = [f"model.name_or_path={spec['tokenizer']}", f"train.max_steps={spec['steps']}"]
    overrides += [f"data.path={spec['data_path']}"] if spec["data_path"] else ["data.preset=quickstart"]
    if spec.get("batch_size"):
        overrides.append(f"train.per_device_train_batch_size={spec['batch_size']}")
    if not has_cuda():  # CPU logic check: fp32 (bf16 is slow on CPU and TRL's bf16 default is off there anyway)
        overrides += ["model.dtype=auto", "quantization.bnb_4bit_compute_dtype=auto"]
    overrides += spec.get("overrides", [])
    recipe = load_recipe(spec["recipe"], overrides=overrides)
    check_library_fields(recipe)
    data = load_labeled_data(recipe.data)
    tokenizer = load_tokenizer(recipe.model, recipe.prompt.system)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    return recipe, tokenizer, data, builder


def build_model(recipe: Any, tiny: bool) -> tuple[Any, dict[str, Any]]:
    """Mistral-7B-shaped (or tiny) model, random weights, quantized as the recipe says while it loads."""
    import gc

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from fintrl.model.loading import TINY_MISTRAL, bnb_config, has_cuda, torch_dtype

    start = time.perf_counter()
    config = MistralConfig(**TINY_MISTRAL) if tiny else MistralConfig()
    dtype = torch_dtype(recipe.model.dtype)
    device = "cuda" if has_cuda() else "cpu"
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in MistralForCausalLM(config).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            state[key] = torch.ones(shape, dtype=dtype, device=device)
        else:
            state[key] = torch.randn(shape, generator=gen, dtype=dtype, device=device).mul_(config.initializer_range)
    n_params = sum(t.numel() for t in state.values())
    kwargs: dict[str, Any] = {"config": config, "state_dict": state, "dtype": dtype}
    quant = bnb_config(recipe.quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if has_cuda():
        kwargs["device_map"] = {"": 0}
    model = MistralForCausalLM.from_pretrained(None, **kwargs)
    del state, kwargs
    gc.collect()
    if has_cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    info = {
        "config": {
            k: getattr(config, k)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
            )
        },
        "parameters": n_params,
        "dtype": str(dtype).replace("torch.", ""),
        "quantization": recipe.quantization,
        "build_seconds": time.perf_counter() - start,
        "linear_class": type(model.model.layers[0].self_attn.q_proj).__module__
        + "."
        + type(model.model.layers[0].self_attn.q_proj).__name__,
        "memory_footprint_bytes": model.get_memory_footprint(),
    }
    if has_cuda():
        info["vram_after_build_bytes"] = torch.cuda.memory_allocated()
        info["peak_vram_during_build_bytes"] = torch.cuda.max_memory_allocated()
    return model, info


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """One training part (`trl_default`, `fintrl` and its variants): build the model and trainer, measure training."""
    import torch

    torch.manual_seed(0)
    recipe, tokenizer, data, builder = load_setup(spec)
    model, model_info = build_model(recipe, spec["tiny"])

    with tempfile.TemporaryDirectory(prefix="fintrl-gpu-check-") as tmp:
        with stopwatch() as setup:
            trainer = build_bench_trainer(spec["part"], recipe, model, tokenizer, builder, data.train, tmp)
        measured = measure_training(trainer, warmup_steps=spec["warmup_steps"])

    return training_result(spec, model_info, measured, setup.seconds, len(data.train))


def training_result(
    spec: dict[str, Any], model_info: dict[str, Any], measured: dict[str, Any], setup_seconds: float, n_rows: int
) -> dict[str, Any]:
    """One training part's JSON: the timed steps after warm-up apart from all steps' rates."""
    timed = measured.pop("after_warmup")
    all_steps = {key: measured.pop(key) for key in ("tokens_per_second", "examples_per_second")}
    return {
        "part": spec["part"],
        "overrides": spec.get("overrides", []),
        "model": model_info,
        **measured,
        "warmup_steps": spec["warmup_steps"],
        "trainer_setup_seconds": setup_seconds,
        "all_steps": all_steps,
        "timed": timed,
        "n_train_rows": n_rows,
    }


def score(spec: dict[str, Any]) -> dict[str, Any]:
    """The `scoring` part: LabelScorer modes on the 4-bit model with LoRA adapters, against one plain forward."""
    import torch
    from peft import get_peft_model

    from fintrl.data.presets import TFN_TOPICS
    from fintrl.errors import ScoringError
    from fintrl.model.loading import has_cuda, lora_config
    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import PromptSection
    from fintrl.scoring.scorer import LabelScorer

    torch.manual_seed(0)
    recipe, tokenizer, data, builder = load_setup(spec)
    model, model_info = build_model(recipe, spec["tiny"])
    if recipe.lora is not None:  # fintrl scores the trained PeftModel; B=0 adapters cost the same compute
        model = get_peft_model(model, lora_config(recipe.lora))
        if has_cuda():  # as TRL leaves QLoRA adapters
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
    model.eval()
    texts = list(data.eval["text"])
    texts = (texts * (spec["n_score"] // len(texts) + 1))[: spec["n_score"]]
    bs = spec["score_batch"] or recipe.eval.batch_size
    builders = {"3": builder, "20": PromptBuilder.resolve(PromptSection(), list(TFN_TOPICS), "topic")}
    runs: list[tuple[str, str, Any, Any]] = []  # (labels, mode, full run, warm-up run)
    labels_info: dict[str, Any] = {}
    for n_labels, b in builders.items():
        ref = LabelScorer(model, tokenizer, b, mode="trie", batch_size=bs, max_length=recipe.eval.max_length)
        encoded, _ = ref.encode(texts)
        labels_info[n_labels] = {
            "answers": b.answers,
            "label_tokens": [len(s) for s in ref.label_ids],
            "distinct_first_tokens": len({s[0] for s in ref.label_ids}) == len(ref.label_ids),
            "prompt_tokens_mean": sum(map(len, encoded)) / len(encoded),
        }
        runs.append(
            (
                n_labels,
                "forward",
                lambda e=encoded: forward_only(model, tokenizer, e, bs),
                lambda e=encoded: forward_only(model, tokenizer, e[:bs], bs),
            )
        )
        for mode in ("first_token", "trie") if n_labels == "3" else ("trie",):
            try:
                scorer = LabelScorer(model, tokenizer, b, mode=mode, batch_size=bs, max_length=recipe.eval.max_length)
            except ScoringError as err:  # first_token needs labels with distinct first tokens
                labels_info[n_labels][f"{mode}_skipped"] = str(err)
                continue
            runs.append(
                (
                    n_labels,
                    mode,
                    lambda s=scorer: s.score(texts, progress=False),
                    lambda s=scorer: s.score(texts[:bs], progress=False),
                )
            )
    for *_, warmup in runs:
        warmup()
    sync()
    vram_before = reset_peak_memory()
    times, _ = round_robin({(n, m): fn for n, m, fn, _warm in runs}, spec["repeats"])  # best kept
    rows = {}
    for (n_labels, mode), ts in times.items():
        best = min(ts)
        fwd = min(times[(n_labels, "forward")])
        rows[f"{n_labels}:{mode}"] = {
            "labels": int(n_labels),
            "mode": mode,
            "seconds": best,
            "all_seconds": ts,
            "examples_per_second": len(texts) / best,
            "x_forward": best / fwd,
        }
    return {
        "part": "scoring",
        "model": model_info,
        "n": len(texts),
        "batch_size": bs,
        "repeats": spec["repeats"],
        "with_lora_adapters": recipe.lora is not None,
        "labels": labels_info,
        "rows": rows,
        "vram_before_bytes": vram_before,
        **peak_memory(),
    }


def score_forms(spec: dict[str, Any]) -> dict[str, Any]:
    """The `dense_scoring` part: the 4-bit model + LoRA (perturbed, so merging matters) against the same adapter merged
    into the dequantized 4-bit weights, as `fintrl.scoring.inference.merged_dense` builds it (`dequantize()`, then
    PEFT's merge; here on the random model, which has no checkpoint to load from): examples/s on every prompt at the
    recipe's batch size, single-prompt latency, labels and probabilities compared, peak VRAM of each."""
    import gc

    import numpy as np
    import torch
    from peft import PeftModel, get_peft_model

    from fintrl.model.loading import has_cuda, lora_config
    from fintrl.scoring.scorer import LabelScorer

    recipe, tokenizer, data, builder = load_setup(spec)
    texts = list(data.eval["text"])
    texts = (texts * (spec["n_score"] // len(texts) + 1))[: spec["n_score"]]
    bs = spec["score_batch"] or recipe.eval.batch_size

    def measure(model: Any) -> dict[str, Any]:
        scorer = LabelScorer.from_eval(model, tokenizer, builder, recipe.eval, batch_size=bs, keep_prefix=True)
        scorer.score(texts[:bs], progress=False)  # warm-up
        reset_peak_memory()
        times, results = round_robin({"all": lambda: scorer.score(texts, progress=False)}, spec["repeats"])
        single = []
        for text in texts[:16]:
            with stopwatch() as clock:
                scorer.score([text], progress=False)
            single.append(clock.seconds * 1000)
        result = results["all"]
        return {
            "examples_per_second": len(texts) / min(times["all"]),
            "single_ms_median": float(np.median(single)),
            "predictions": list(result.predictions),
            "probabilities": result.probabilities,
            **peak_memory(),
        }

    torch.manual_seed(0)
    model, model_info = build_model(recipe, spec["tiny"])
    model = get_peft_model(model, lora_config(recipe.lora))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    quantized = measure(model)
    adapter = Path(tempfile.mkdtemp(prefix="gpu_check_adapter_"))
    model.save_pretrained(adapter)
    del model
    gc.collect()
    if has_cuda():
        torch.cuda.empty_cache()
    with stopwatch() as merge:
        base, _ = build_model(recipe, spec["tiny"])  # the same random weights, quantized the same way
        dense_model = PeftModel.from_pretrained(base.dequantize(), adapter).merge_and_unload().eval()
    dense = measure(dense_model)
    same = np.asarray(dense["predictions"]) == np.asarray(quantized["predictions"])
    delta = float(np.abs(dense.pop("probabilities") - quantized.pop("probabilities")).max())
    return {
        "part": "dense_scoring",
        "model": model_info,
        "n": len(texts),
        "batch_size": bs,
        "dense_dtype": str(dense_model.dtype).removeprefix("torch."),
        "merge_seconds": merge.seconds,
        "quantized": {k: v for k, v in quantized.items() if k != "predictions"},
        "dense": {k: v for k, v in dense.items() if k != "predictions"},
        "agreement": {"n": int(same.size), "same_label": int(same.sum()), "max_abs_dprob": delta},
        "throughput_dense_over_4bit": dense["examples_per_second"] / quantized["examples_per_second"],
        "single_latency_4bit_over_dense": quantized["single_ms_median"] / dense["single_ms_median"],
    }


def fsdp_launch_env(config_file: str) -> dict[str, str]:
    """The variables `accelerate launch --config_file CONFIG --num_processes 1` gives its process, from accelerate's
    own launcher code (its argument parser, config merge and `prepare_multi_gpu_env`), plus the process group's."""
    import socket

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "--num_processes", "1", "gpu_check"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    process = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    return {
        **{k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))},
        **process,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def fsdp_train(spec: dict[str, Any]) -> dict[str, Any]:
    """The `fsdp_qlora` part: recipes/mistral_fsdp_qlora.yaml (4-bit weights stored as bf16) trained under
    recipes/accelerate/fsdp_qlora.yaml with one process, as `accelerate launch` would run it, then the adapter saved
    through FSDP's state-dict gather (`fintrl.train.save_adapter`). Peak VRAM beside the plain QLoRA part's."""
    import os

    env = fsdp_launch_env(spec["accelerate_config"])
    os.environ.update(env)  # before the Trainer's accelerator reads them

    import torch

    from fintrl.checks.launch import launch_from_env, launch_problems
    from fintrl.model.loading import has_cuda
    from fintrl.run_folder import ADAPTER_CONFIG
    from fintrl.train import save_adapter

    if not has_cuda():
        raise SystemExit("fsdp_qlora needs a GPU (bitsandbytes' CPU backend stores 4-bit weights as uint8 only)")
    torch.manual_seed(0)
    recipe, tokenizer, data, builder = load_setup(spec)
    problems = launch_problems(recipe, launch_from_env())  # fintrl's FSDP-QLoRA rules, against the launch's variables
    if problems:
        raise SystemExit("; ".join(problems))
    model, model_info = build_model(recipe, spec["tiny"])
    with tempfile.TemporaryDirectory(prefix="fintrl-gpu-check-") as tmp:
        with stopwatch() as setup:
            trainer = build_bench_trainer("fintrl", recipe, model, tokenizer, builder, data.train, tmp)
        fsdp = trainer.is_fsdp_enabled
        measured = measure_training(trainer, warmup_steps=spec["warmup_steps"])
        with stopwatch() as saving:
            save_adapter(trainer, Path(tmp))
        adapter = sorted(p.name for p in Path(tmp).iterdir() if p.is_file() and p.name.startswith("adapter_"))
        saved = (Path(tmp) / ADAPTER_CONFIG).is_file()
    return {
        **training_result(spec, model_info, measured, setup.seconds, len(data.train)),
        "fsdp": {
            "enabled": fsdp,
            "launch_env": {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))},
            "quant_storage": (recipe.quantization or {}).get("bnb_4bit_quant_storage"),
            "adapter_saved": saved,
            "adapter_files": adapter,
            "save_seconds": saving.seconds,
        },
    }
