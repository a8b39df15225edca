"""GPU check for the "Speed" issue: 7B QLoRA training and scoring throughput, and peak VRAM, on one GPU.

A Mistral-7B-shaped model (`MistralConfig()` defaults: 32 layers, hidden 4096, 32/8 heads, MLP 14336, vocab 32000)
gets random weights (nothing can be downloaded on the GPU box) and is quantized to 4-bit NF4 as it loads:
`MistralForCausalLM.from_pretrained(None, state_dict=<random bf16 tensors on the GPU>, quantization_config=...)`,
i.e. the same transformers/bitsandbytes loading path (and the same quantized model object) as
`fintrl.models.load_model` gives for a real checkpoint; the 14.5 GB of bf16 weights never leave the GPU and are freed
before anything is measured. Tokenizer: the real Mistral-7B one (fintrl's tiny-mistral files) with fintrl's default
[INST] chat template; data: the recipe's dataset (FPB all-agree) when carried, else the packaged quickstart sample.

Parts, each in its own subprocess (peak memory never mixes), under one time budget (--deadline-s):
- `trl_default`: TRL's `SFTTrainer` with `SFTConfig(output_dir, report_to="none", max_steps, per_device_train_batch_size)`
  only (TRL defaults: bf16, gradient checkpointing, random sampler), the recipe's LoRA config and batch size;
- `fintrl`: `fintrl.train.build_trainer` with recipes/mistral_qlora.yaml (batch 16, gradient checkpointing, bf16,
  LoRA r16 all-linear, fintrl's TRAIN_DEFAULTS under it);
- `scoring`: `LabelScorer` (first_token and trie, 3 labels; trie, 20 labels) on the 4-bit model with LoRA adapters
  attached (as fintrl evaluates after training) against one plain forward over the same prompts;
- `fintrl_nogc`: fintrl with gradient checkpointing off (FintrlSFTTrainer's own loss path), run last, if time is left.
Training tokens/s = non-padding tokens of the batches consumed after `--warmup-steps` steps / their time; peak VRAM =
`torch.cuda.max_memory_allocated()` over `trainer.train()` (model weights included; reset after loading).

    bash benchmarks/gpu_check.sh                      # on the GPU box (installs the carried wheels first)
    python benchmarks/gpu_check.py --tiny             # CPU logic check: 4-layer model, 3 steps, 32 prompts
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VRAM_TARGET_GB = 6.0  # the target for 7B QLoRA at the recipe's settings (GB = 1e9 bytes)
TINY_CONFIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=2048)
PARTS = ("trl_default", "fintrl", "scoring", "fintrl_nogc")
LABELS = {"trl_default": "trl_default", "fintrl": "fintrl (recipe)", "fintrl_nogc": "fintrl[gc=off]"}
MIN_SECONDS = {"trl_default": 75, "fintrl": 75, "scoring": 60, "fintrl_nogc": 75}  # don't start a part with less left


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU logic check: 4-layer model, 3 steps, 32 prompts")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per training variant (default 12; tiny 3)")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps left out of tokens/s (default 2; tiny 1)")
    p.add_argument("--batch-size", type=int, default=None, help="per-device batch size for every variant (default: the recipe's)")
    p.add_argument("--recipe", default=str(REPO / "recipes" / "mistral_qlora.yaml"))
    p.add_argument("--carry", default=str(REPO / ".gpu_check"), help="folder filled by gpu_check.sh --fetch-wheels")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <carry>/tokenizer, else tiny-mistral)")
    p.add_argument("--data-path", default=None, help="text,label CSV folder (default: <carry>/data/fpb_allagree, else "
                                                     "../shared/data/fpb_allagree, else the quickstart preset)")
    p.add_argument("--n-score", type=int, default=None, help="prompts to score (default 256; tiny 32)")
    p.add_argument("--score-batch", type=int, default=None, help="scoring batch size (default: the recipe's eval.batch_size)")
    p.add_argument("--repeats", type=int, default=None, help="timed scoring repeats, best kept (default 2; tiny 1)")
    p.add_argument("--only", default=",".join(PARTS), help=f"parts to run, in order (default {','.join(PARTS)})")
    p.add_argument("--deadline-s", type=float, default=450, help="time budget for everything; parts that would not "
                                                                  "fit are skipped, a running one is stopped")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in workers (tiny default 1)")
    p.add_argument("--out", default=None, help="results JSON (default $OUT/gpu_check.json, else runs/bench/gpu_check[_tiny].json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 12)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.tiny else 2)
    if args.warmup_steps >= args.steps:
        p.error("--warmup-steps must be below --steps")
    args.n_score = args.n_score or (32 if args.tiny else 256)
    args.repeats = args.repeats or (1 if args.tiny else 2)
    if args.threads is None and args.tiny:
        args.threads = 1
    if args.out is None:
        name = "gpu_check_tiny.json" if args.tiny else "gpu_check.json"
        args.out = str(Path(os.environ["OUT"]) / name) if os.environ.get("OUT") else str(REPO / "runs" / "bench" / name)
    return args


# ---------------------------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "tokenizers", "pyarrow"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    env["torch_threads"] = torch.get_num_threads()
    env["paths"] = {name: str(Path(sys.modules[name].__file__).parent.parent)  # carried (/tmp/gpu_check_site) or not
                    for name in ("transformers", "trl", "bitsandbytes", "datasets", "peft") if name in sys.modules}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   capability=f"{props.major}.{props.minor}")
    else:
        env["gpu"] = None
    return env


def load_setup(spec: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Recipe (with the check's overrides), tokenizer, labelled data and prompt builder, all through fintrl."""
    from fintrl.checks import check_library_fields
    from fintrl.data import PromptBuilder, load_labeled_data
    from fintrl.models import has_cuda, load_tokenizer
    from fintrl.recipe import load_recipe

    overrides = [f"model.name_or_path={spec['tokenizer']}", f"train.max_steps={spec['steps']}"]
    overrides += [f"data.path={spec['data_path']}"] if spec["data_path"] else ["data.preset=quickstart"]
    if spec.get("batch_size"):
        overrides.append(f"train.per_device_train_batch_size={spec['batch_size']}")
    if not has_cuda():  # CPU logic check: fp32 (bf16 is slow on CPU and TRL's bf16 default is off there anyway)
        overrides += ["model.dtype=auto", "quantization.bnb_4bit_compute_dtype=auto"]
    overrides += spec.get("overrides", [])
    recipe = load_recipe(spec["recipe"], overrides)
    check_library_fields(recipe)
    data = load_labeled_data(recipe.data)
    tokenizer = load_tokenizer(recipe.model, recipe.prompt.system)
    builder = PromptBuilder(recipe.prompt, data.labels, data.task)
    return recipe, tokenizer, data, builder


def build_model(recipe: Any, tiny: bool) -> tuple[Any, dict[str, Any]]:
    """Mistral-7B-shaped (or tiny) model, random weights, quantized as the recipe says while it loads."""
    import gc

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from fintrl.models import bnb_config, has_cuda, torch_dtype

    start = time.perf_counter()
    config = MistralConfig(**TINY_CONFIG) if tiny else MistralConfig()
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
        "config": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "parameters": n_params, "dtype": str(dtype).replace("torch.", ""),
        "quantization": recipe.quantization, "build_seconds": time.perf_counter() - start,
        "linear_class": type(model.model.layers[0].self_attn.q_proj).__module__ + "." +
                        type(model.model.layers[0].self_attn.q_proj).__name__,
        "memory_footprint_bytes": model.get_memory_footprint(),
    }
    if has_cuda():
        info["vram_after_build_bytes"] = torch.cuda.memory_allocated()
        info["peak_vram_during_build_bytes"] = torch.cuda.max_memory_allocated()
    return model, info


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from _shared import instrument, trl_default_trainer

    from fintrl.train import TRAIN_DEFAULTS, build_trainer

    recipe, tokenizer, data, builder = load_setup(spec)
    dataset = builder.sft_dataset(data.train)
    batch_size = {**TRAIN_DEFAULTS, **recipe.train}["per_device_train_batch_size"]
    model, model_info = build_model(recipe, spec["tiny"])

    with tempfile.TemporaryDirectory(prefix="fintrl-gpu-check-") as tmp:
        setup_start = time.perf_counter()
        if spec["part"] == "trl_default":
            trainer = trl_default_trainer(model, tokenizer, dataset, recipe.lora, batch_size, spec["steps"], tmp)
        else:
            trainer = build_trainer(recipe, model, tokenizer, dataset, Path(tmp))
        setup_s = time.perf_counter() - setup_start

        batches, step_ends = instrument(trainer)
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        args = trainer.args
        settings = {
            "trainer": type(trainer).__name__, "gradient_checkpointing": bool(args.gradient_checkpointing),
            "train_sampling_strategy": str(getattr(args, "train_sampling_strategy", "")), "bf16": bool(args.bf16),
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
            "max_length": getattr(args, "max_length", None), "padding_free": bool(getattr(args, "padding_free", False)),
            "adapter_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in trainable}),
            "trainable_params": sum(p.numel() for p in trainable),
        }
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        vram_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
        sync()
        start = time.perf_counter()
        output = trainer.train()
        sync()
        train_s = time.perf_counter() - start
        steps = trainer.state.global_step

    ga = settings["gradient_accumulation_steps"]
    used = batches[: steps * ga]  # the dataloader may collate ahead
    warm = spec["warmup_steps"]
    timed = used[warm * ga:]
    timed_s = step_ends[-1] - step_ends[warm - 1] if warm >= 1 and len(step_ends) > warm else None
    tokens = sum(b["tokens"] for b in used)
    padded = sum(b["padded_tokens"] for b in used)
    result = {
        "part": spec["part"], "overrides": spec.get("overrides", []), "settings": settings, "model": model_info,
        "steps": steps, "warmup_steps": warm, "examples": sum(b["examples"] for b in used), "tokens": tokens,
        "padded_tokens": padded, "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "loss_tokens": sum(b["loss_tokens"] for b in used),
        "train_seconds": train_s, "trainer_setup_seconds": setup_s,
        "all_steps": {"tokens_per_second": tokens / train_s, "examples_per_second": sum(b["examples"] for b in used) / train_s},
        "timed": None if timed_s is None else {
            "steps": steps - warm, "seconds": timed_s, "tokens": sum(b["tokens"] for b in timed),
            "tokens_per_second": sum(b["tokens"] for b in timed) / timed_s,
            "examples_per_second": sum(b["examples"] for b in timed) / timed_s,
        },
        "step_seconds": [b - a for a, b in zip([start, *step_ends], step_ends)],
        "train_loss": output.training_loss,
        "vram_before_train_bytes": vram_before,
        "peak_vram_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "peak_vram_reserved_bytes": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_train_rows": len(dataset),
    }
    return result


def score_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import get_peft_model

    from fintrl.data import TFN_TOPICS, PromptBuilder
    from fintrl.models import has_cuda, lora_config
    from fintrl.recipe import PromptSection
    from fintrl.scoring import LabelScorer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_scoring import forward_only  # the same plain-forward reference as bench_scoring.py

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
    builders = {"3": builder, "20": PromptBuilder(PromptSection(), list(TFN_TOPICS), "topic")}
    runs: list[tuple[str, str, Any, Any]] = []  # (labels, mode, full run, warm-up run)
    labels_info: dict[str, Any] = {}
    for n_labels, b in builders.items():
        ref = LabelScorer(model, tokenizer, b, mode="trie", batch_size=bs, max_length=recipe.eval.max_length)
        encoded, _ = ref.encode(texts)
        labels_info[n_labels] = {"answers": b.answers, "label_tokens": [len(s) for s in ref.label_ids],
                                 "distinct_first_tokens": len({s[0] for s in ref.label_ids}) == len(ref.label_ids),
                                 "prompt_tokens_mean": sum(map(len, encoded)) / len(encoded)}
        runs.append((n_labels, "forward", lambda e=encoded: forward_only(model, tokenizer, e, bs),
                     lambda e=encoded: forward_only(model, tokenizer, e[:bs], bs)))
        for mode in (("first_token", "trie") if n_labels == "3" else ("trie",)):
            try:
                scorer = LabelScorer(model, tokenizer, b, mode=mode, batch_size=bs, max_length=recipe.eval.max_length)
            except ValueError as err:
                labels_info[n_labels][f"{mode}_skipped"] = str(err)
                continue
            runs.append((n_labels, mode, lambda s=scorer: s.score(texts, progress=False),
                         lambda s=scorer: s.score(texts[:bs], progress=False)))
    for *_, warmup in runs:
        warmup()
    sync()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    vram_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
    times: dict[tuple[str, str], list[float]] = {(n, m): [] for n, m, *_ in runs}
    for _ in range(spec["repeats"]):  # round-robin, best kept
        for n_labels, mode, fn, _warm in runs:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[(n_labels, mode)].append(time.perf_counter() - start)
    rows = {}
    for (n_labels, mode), ts in times.items():
        best = min(ts)
        fwd = min(times[(n_labels, "forward")])
        rows[f"{n_labels}:{mode}"] = {"labels": int(n_labels), "mode": mode, "seconds": best, "all_seconds": ts,
                                      "examples_per_second": len(texts) / best, "x_forward": best / fwd}
    return {
        "part": "scoring", "model": model_info, "n": len(texts), "batch_size": bs, "repeats": spec["repeats"],
        "with_lora_adapters": recipe.lora is not None, "labels": labels_info, "rows": rows,
        "vram_before_bytes": vram_before,
        "peak_vram_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "peak_vram_reserved_bytes": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_worker(spec: dict[str, Any], result_path: str) -> None:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    result = score_worker(spec) if spec["part"] == "scoring" else train_worker(spec)
    result["environment"] = environment()
    Path(result_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# parent side: one subprocess per part, under the deadline
# ---------------------------------------------------------------------------------------------------------------
def resolve_inputs(args: argparse.Namespace, tmp: Path) -> tuple[str, str | None]:
    carry = Path(args.carry)
    tok = Path(args.tokenizer) if args.tokenizer else carry / "tokenizer"
    if tok.is_dir() and (tok / "tokenizer.json.gz").is_file() and not (tok / "tokenizer.json").is_file():
        unpacked = tmp / "tokenizer"
        shutil.copytree(tok, unpacked, ignore=shutil.ignore_patterns("*.gz"))
        with gzip.open(tok / "tokenizer.json.gz", "rb") as f, (unpacked / "tokenizer.json").open("wb") as g:
            shutil.copyfileobj(f, g)
        tokenizer = str(unpacked)
    elif tok.is_dir():
        tokenizer = str(tok.resolve())
    elif args.tokenizer:
        tokenizer = args.tokenizer  # an offline name or Hub id
    else:
        tokenizer = "tiny-mistral"  # built here from mistral-common (needs it installed)
    if args.data_path:
        data = str(Path(args.data_path).resolve())
    else:
        candidates = [carry / "data" / "fpb_allagree", REPO.parent / "shared" / "data" / "fpb_allagree"]
        data = next((str(c.resolve()) for c in candidates if (c / "train.csv").is_file()), None)
    return tokenizer, data


def run_part(part: str, spec: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--result", result_path]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env={**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group (it may have children)
            proc.wait()
            code = None
    wall = time.perf_counter() - start
    try:
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            why = f"stopped at the time budget after {wall:.0f} s" if code is None else f"exit {code}"
            print(f"[{part}] failed ({why}); last lines of its log:\n{tail}", file=sys.stderr)
            return {"part": part, "error": why, "process_seconds": wall}
        result = json.loads(Path(result_path).read_text())
    finally:
        Path(result_path).unlink(missing_ok=True)
    return {**result, "process_seconds": wall}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker), args.result)
        return 0
    start = time.monotonic()
    deadline = start + args.deadline_s
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--only: unknown parts {sorted(unknown)}; known: {PARTS}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    worker_log = out.with_name(out.stem + "_workers.log")
    report: dict[str, Any] = {
        "check": "gpu_check", "tiny": args.tiny,
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "result")},
        "parts": {}, "skipped": {},
    }
    with tempfile.TemporaryDirectory(prefix="fintrl-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        tokenizer, data = resolve_inputs(args, tmp)
        report.update(tokenizer=tokenizer, data=data or "preset quickstart (packaged sample)")
        print(f"gpu_check: {'tiny 4-layer' if args.tiny else 'Mistral-7B-shaped'} model, recipe {args.recipe}, "
              f"data {report['data']}, tokenizer {tokenizer}, {args.steps} steps ({args.warmup_steps} warm-up), "
              f"budget {args.deadline_s:.0f} s", file=sys.stderr)
        base = {"tiny": args.tiny, "recipe": str(Path(args.recipe).resolve()), "tokenizer": tokenizer, "data_path": data,
                "steps": args.steps, "warmup_steps": args.warmup_steps, "batch_size": args.batch_size,
                "n_score": args.n_score, "score_batch": args.score_batch, "repeats": args.repeats,
                "threads": args.threads}
        logs = []
        for part in parts:
            left = deadline - time.monotonic()
            need = 5 if args.tiny else MIN_SECONDS[part]
            if left < need:
                report["skipped"][part] = f"time budget: {left:.0f} s left, needs about {need} s"
                print(f"[{part}] skipped: {report['skipped'][part]}", file=sys.stderr)
                continue
            spec = {**base, "part": part}
            if part == "fintrl_nogc":
                spec["overrides"] = ["train.activation_checkpointing=false"]
            log = tmp / f"{part}.log"
            print(f"[{part}] starting ({left:.0f} s left)", file=sys.stderr)
            report["parts"][part] = run_part(part, spec, left - 2, log)
            logs.append((part, log))
            r = report["parts"][part]
            if "error" not in r:
                print(f"[{part}] done in {r['process_seconds']:.0f} s", file=sys.stderr)
            report["total_seconds"] = time.monotonic() - start
            finish(report)
            out.write_text(json.dumps(report, indent=2))  # after every part: a stopped run still leaves results
        with worker_log.open("w") as f:
            for part, log in logs:
                f.write(f"===== {part} =====\n{log.read_text(errors='replace')}\n")
    report["total_seconds"] = time.monotonic() - start
    finish(report)
    out.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nresults: {out}; worker logs: {worker_log}; {report['total_seconds']:.0f} s in all")
    failed = [p for p, r in report["parts"].items() if "error" in r]
    return 1 if failed or report["vram_target"].get("pass") is False else 0


def finish(report: dict[str, Any]) -> None:
    """Environment, ratios against trl_default and the VRAM target check, from what has run so far."""
    ok = {p: r for p, r in report["parts"].items() if "error" not in r}
    report["environment"] = next((r["environment"] for r in ok.values()), None)
    ref = ok.get("trl_default")
    for part, r in ok.items():
        if part == "scoring" or not ref or not r.get("timed") or not ref.get("timed"):
            continue
        r["x_trl_tokens_per_second"] = r["timed"]["tokens_per_second"] / ref["timed"]["tokens_per_second"]
        if r.get("peak_vram_bytes") and ref.get("peak_vram_bytes"):
            r["x_trl_peak_vram"] = r["peak_vram_bytes"] / ref["peak_vram_bytes"]
    fin = ok.get("fintrl")
    target: dict[str, Any] = {"target_gb": VRAM_TARGET_GB, "variant": "fintrl (recipes/mistral_qlora.yaml settings)"}
    if report["tiny"]:
        target["pass"] = None
        target["note"] = "tiny model: the 6 GB target applies to the 7B run only"
    elif fin and fin.get("peak_vram_bytes") is not None:
        target.update(peak_gb=fin["peak_vram_bytes"] / 1e9, peak_gib=fin["peak_vram_bytes"] / 2**30,
                      reserved_gb=fin["peak_vram_reserved_bytes"] / 1e9,
                      model_and_adapters_gb=fin["vram_before_train_bytes"] / 1e9,
                      **{"pass": fin["peak_vram_bytes"] <= VRAM_TARGET_GB * 1e9})
    else:
        target["pass"] = None
        target["note"] = "fintrl variant did not run on a GPU"
    report["vram_target"] = target


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def print_report(report: dict[str, Any]) -> None:
    env = report.get("environment") or {}
    parts = report["parts"]
    model = next((r["model"] for r in parts.values() if "model" in r), None)
    print()
    if model:
        c = model["config"]
        print(f"model: MistralForCausalLM {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, MLP "
              f"{c['intermediate_size']}, heads {c['num_attention_heads']}/{c['num_key_value_heads']}, vocab "
              f"{c['vocab_size']}; {model['parameters'] / 1e9:.2f} B params, random weights, {model['linear_class']}, "
              f"footprint {_gb(model['memory_footprint_bytes'])} GB, built in {model['build_seconds']:.0f} s")
    print(f"device: {env.get('gpu') or 'cpu'} (CUDA {env.get('cuda')}); torch {env.get('torch')}, transformers "
          f"{env.get('transformers')}, trl {env.get('trl')}, peft {env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}, "
          f"datasets {env.get('datasets')}; python {env.get('python')}")
    print(f"data: {report['data']}")
    train = [(p, r) for p, r in parts.items() if p != "scoring"]
    if train:
        any_ok = next((r for _, r in train if "error" not in r), None)
        warm = any_ok["warmup_steps"] if any_ok else "?"
        print(f"\ntraining: {report['args']['steps']} steps, tokens/s over steps {warm + 1 if any_ok else '?'}.."
              f"{report['args']['steps']} (after {warm} warm-up steps)\n")
        print("| variant            | tok/s | ex/s | tok/s all steps | pad % | peak VRAM GB | reserved GB | model+adapters GB "
              "| x TRL tok/s | x TRL VRAM | loss  | settings |")
        print("|--------------------|------:|-----:|----------------:|------:|-------------:|------------:|------------------:"
              "|------------:|-----------:|------:|----------|")
        for part, r in train:
            name = LABELS.get(part, part)
            if "error" in r:
                print(f"| {name:<18} | failed: {r['error']} |")
                continue
            t, s = r["timed"] or {}, r["settings"]
            settings = (f"{s['trainer']}, gc={'on' if s['gradient_checkpointing'] else 'off'}, "
                        f"sampler={s['train_sampling_strategy']}, batch {s['per_device_train_batch_size']}, "
                        f"bf16={s['bf16']}, adapters={'/'.join(s['adapter_dtypes'])}")
            x_t, x_v = r.get("x_trl_tokens_per_second"), r.get("x_trl_peak_vram")
            print(f"| {name:<18} | {t.get('tokens_per_second', 0):5.0f} | {t.get('examples_per_second', 0):4.1f} | "
                  f"{r['all_steps']['tokens_per_second']:15.0f} | {r['padding_fraction']:5.1%} | "
                  f"{_gb(r['peak_vram_bytes']):>12} | {_gb(r['peak_vram_reserved_bytes']):>11} | "
                  f"{_gb(r['vram_before_train_bytes']):>17} | {'-' if x_t is None else f'{x_t:.2f}':>11} | "
                  f"{'-' if x_v is None else f'{x_v:.2f}':>10} | {r['train_loss']:5.2f} | {settings} |")
        if not env.get("gpu"):
            print("(CPU: no VRAM numbers; peak RSS MB per variant: "
                  + ", ".join(f"{LABELS.get(p, p)} {r['peak_rss_mb']:.0f}" for p, r in train if "error" not in r) + ")")
    sc = parts.get("scoring")
    if sc:
        if "error" in sc:
            print(f"\nscoring: failed: {sc['error']}")
        else:
            info = sc["labels"]
            print(f"\nscoring: {sc['n']} prompts, batch {sc['batch_size']}, best of {sc['repeats']}, "
                  f"{'LoRA adapters attached' if sc['with_lora_adapters'] else 'base model'}; peak VRAM "
                  f"{_gb(sc['peak_vram_bytes'])} GB; mean prompt tokens: 3 labels {info['3']['prompt_tokens_mean']:.0f}, "
                  f"20 labels {info['20']['prompt_tokens_mean']:.0f}\n")
            print("| labels | mode        |   ex/s | x forward (time) |")
            print("|-------:|-------------|-------:|-----------------:|")
            for row in sc["rows"].values():
                print(f"| {row['labels']:>6} | {row['mode']:<11} | {row['examples_per_second']:6.1f} | "
                      f"{row['x_forward']:16.2f} |")
            for n, i in info.items():
                for key, val in i.items():
                    if key.endswith("_skipped"):
                        print(f"({n} labels: {key[:-8]} skipped: {val})")
    for part, why in report["skipped"].items():
        print(f"skipped {part}: {why}")
    t = report["vram_target"]
    if t.get("pass") is None:
        print(f"\nVRAM target (<= {t['target_gb']} GB, 7B QLoRA, recipe settings): not checked ({t.get('note')})")
    else:
        print(f"\nVRAM target: fintrl at the recipe's settings peaked at {t['peak_gb']:.2f} GB ({t['peak_gib']:.2f} GiB) "
              f"allocated, target <= {t['target_gb']} GB: {'PASS' if t['pass'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
