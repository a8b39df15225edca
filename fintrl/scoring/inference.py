"""How a target runs for inference: the fastest form that answers as the adapter does.

A QLoRA adapter was trained on a 4-bit base, and scoring it there is exact but slow: bitsandbytes dequantizes every
weight matrix on each forward. `load_inference` merges the adapter, in memory, into the base's own 4-bit weights
dequantized to a dense dtype (the `fintrl export --merged --dequantize` merge), so every forward is a plain dense one.
The dense form is used only where it has been measured to agree with the 4-bit adapter: on the run's eval rows (or
fintrl's packaged sample when the target has none), labels the same on at least `MIN_AGREEMENT` of the rows and no
probability further apart than `MAX_ABS_DPROB`. The check runs when a target first loads and is remembered in
`$FINTRL_HOME/inference-checks/` (keyed by the adapter's and base's identity, the quantization, the device and the
library versions), never in the run folder. bf16 is tried first where the device computes it fast, then fp32; where
neither agrees, the 4-bit adapter is kept, and the reason is said. Prompt-learning adapters, unquantized bases and
`exact_4bit=True` (`--exact-4bit`) keep the form they were trained in.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import RunFolderError, first_line
from fintrl.model.peft_methods import PROMPT_TYPES
from fintrl.run_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREDICTIONS, read_predictions, write_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fintrl.scoring.scorer import ScoreResult
    from fintrl.scoring.targets import Target

MIN_AGREEMENT = 0.995  # share of check rows whose label must be the 4-bit adapter's
MAX_ABS_DPROB = 1e-3  # largest allowed |p_dense - p_4bit| over every row and label
CHECK_ROWS = 200  # rows the check scores in both forms (a seeded sample of the run's eval rows when it has more)
CHECK_VERSION = 1  # bump when the check itself changes: older cached verdicts are then not reused
MEMORY_SHARE = 0.8  # the dense weights may take at most this share of the memory free when they load
SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "quickstart" / "validation.csv"

DENSE = "dense-merged"  # the adapter merged into the dequantized 4-bit weights
QUANTIZED = "4bit-adapter"  # the quantized base + the adapter, as trained
AS_LOADED = "as-trained"  # nothing to choose: an unquantized base, a prompt-learning adapter, a full fine-tune


@dataclass(frozen=True)
class InferenceForm:
    """What runs: `form` (DENSE, QUANTIZED or AS_LOADED), its dtype, why, and the agreement check behind it."""

    form: str
    dtype: str
    reason: str
    check: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """For eval's report (`inference`) and serve's /info."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for stderr."""
        return f"fintrl: inference: {self.form} ({self.dtype}): {self.reason}"


@dataclass
class Inference:
    """A loaded target: the model to score with, its tokenizer, and the form it runs in."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    form: InferenceForm


def load_inference(target: Target, *, exact_4bit: bool = False, labels: list[str] | None = None) -> Inference:
    """The target in its fastest form that answers as the adapter does (say which on stderr, once). `labels`: the
    label set to check with where the target has none of its own (a base model scored zero-shot on `eval`'s data).

    ```python
    loaded = load_inference(resolve_target("runs/quickstart"))
    loaded.form.form, loaded.form.check["agreement"]  # ("dense-merged", 1.0)
    scorer = target.scorer(loaded.model, loaded.tokenizer)
    ```
    """
    from fintrl.recipe.schema import label_names
    from fintrl.scoring.targets import announce, load_for_inference, target_tokenizer

    labels = target.labels or labels or label_names(target.recipe.data.labels)
    keep = _keeps_its_form(target) or (None if labels else "no label set to check a dense form with")
    if keep is not None or exact_4bit:
        model, tokenizer = load_for_inference(target)
        reason = keep or "--exact-4bit: the 4-bit base + adapter, as trained"
        form = InferenceForm(AS_LOADED if keep else QUANTIZED, _dtype_name(model), reason)
        print(form.line(), file=sys.stderr)
        return Inference(model, tokenizer, form)
    texts, source = check_texts(target)
    cache = _cache_file(target, texts, labels)
    verdict = _read_verdict(cache)
    if verdict is not None:
        if verdict["dtype"] is None:
            model, tokenizer = load_for_inference(target)
            form = InferenceForm(QUANTIZED, _dtype_name(model), verdict["reason"] + " (checked before)", verdict)
        elif (short := _no_room(verdict.get("dense_bytes", 0))) is not None:
            model, tokenizer = load_for_inference(target)
            form = InferenceForm(QUANTIZED, _dtype_name(model), f"the dense form does not fit: {short}", verdict)
        else:
            announce(target)
            model, tokenizer = merged_dense(target, verdict["dtype"]), target_tokenizer(target)
            form = InferenceForm(DENSE, verdict["dtype"], _agreed(verdict) + " (checked before)", verdict)
        print(form.line(), file=sys.stderr)
        return Inference(model, tokenizer, form)
    loaded = _check(target, texts, source, labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps(loaded.form.check, indent=2))
    print(loaded.form.line(), file=sys.stderr)
    return loaded


def _keeps_its_form(target: Target) -> str | None:
    """Why the target has no faster exact form (None: it may have one)."""
    if not target.recipe.quantization:
        return "the base is not quantized: it runs as trained"
    if target.adapter is not None:
        config = json.loads((Path(target.adapter) / ADAPTER_CONFIG).read_text())
        if config.get("peft_type") in PROMPT_TYPES:
            return f"a {config['peft_type'].lower()} adapter learns virtual tokens: nothing to merge"
    return None


def fast_bf16() -> bool:
    """The device computes bf16 faster than fp32: a GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU-feature probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def merged_dense(target: Target, dtype: str) -> PreTrainedModel:
    """The target's 4-bit base dequantized to `dtype` (the weights the adapter was trained against) with the adapter
    merged in: a plain transformers model (also `fintrl export --merged --dequantize`'s)."""
    from peft import PeftModel

    from fintrl.model.loading import load_model

    section = target.recipe.model.model_copy(update={"dtype": dtype})
    base = load_model(section, target.recipe.quantization).dequantize()
    if target.adapter is None:
        return base
    return PeftModel.from_pretrained(base, target.adapter).merge_and_unload()


def _check(target: Target, texts: list[str], source: str, labels: list[str]) -> Inference:
    """Score the check rows with the 4-bit adapter, then with each dense candidate; keep the first that agrees."""
    from fintrl.scoring.targets import load_for_inference

    start = time.perf_counter()
    model, tokenizer = load_for_inference(target)
    print(f"fintrl: checking the dense merged form against the 4-bit adapter on {source}", file=sys.stderr)
    reference = _score(target, model, tokenizer, texts, labels)
    record: dict[str, Any] = {
        "version": CHECK_VERSION,
        "rows": len(texts),
        "source": source,
        "thresholds": {"agreement": MIN_AGREEMENT, "max_abs_dprob": MAX_ABS_DPROB},
        "candidates": [],
        "dtype": None,
    }
    chosen: PreTrainedModel | None = None
    for dtype in (["bfloat16"] if fast_bf16() else []) + ["float32"]:
        need = dense_bytes(model, dtype)
        if (short := _no_room(need)) is not None:
            record["candidates"].append({"dtype": dtype, "error": short})
            continue
        try:
            dense = merged_dense(target, dtype)
        except (AttributeError, NotImplementedError, ValueError, RuntimeError) as err:
            record["candidates"].append({"dtype": dtype, "error": f"could not be merged ({first_line(err)})"})
            continue
        measured = {"dtype": dtype, **_measured(reference, _score(target, dense, tokenizer, texts, labels))}
        record["candidates"].append(measured)
        if measured["passed"]:
            chosen = dense
            record.update(dtype=dtype, agreement=measured["agreement"], max_abs_dprob=measured["max_abs_dprob"])
            record["dense_bytes"] = need
            break
        del dense
        free_memory()
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if chosen is None:
        record["reason"] = "the dense merged form did not agree with the 4-bit adapter: " + "; ".join(
            _shortfall(c) for c in record["candidates"]
        )
        return Inference(model, tokenizer, InferenceForm(QUANTIZED, _dtype_name(model), record["reason"], record))
    del model
    free_memory()
    record["reason"] = _agreed(record)
    return Inference(chosen, tokenizer, InferenceForm(DENSE, record["dtype"], record["reason"], record))


def dense_bytes(model: Any, dtype: str) -> int:
    """The bytes the model's weights take in `dtype`, counted on the loaded 4-bit model (a packed 4-bit weight by the
    shape it unpacks to)."""
    import math

    import torch

    size = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    numel = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        numel += math.prod(state.shape) if state is not None else param.numel()
    return numel * size


def _no_room(need: int) -> str | None:
    """Why `need` bytes of dense weights do not fit in the memory free now (the GPU's, else RAM), or None."""
    import psutil  # accelerate's own dependency
    import torch

    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else psutil.virtual_memory().available
    if need <= MEMORY_SHARE * free:
        return None
    where = "GPU" if torch.cuda.is_available() else "RAM"
    return f"it needs {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB of {where} are free"


def check_texts(target: Target) -> tuple[list[str], str]:
    """The rows the check scores, and how to name them: a seeded sample of the run's eval rows (its
    predictions.jsonl, downloaded with a published adapter too), else fintrl's packaged financial sentences."""
    import csv

    rows = None
    if target.adapter is not None and target.labels:
        try:
            rows = read_predictions(Path(target.adapter) / PREDICTIONS, target.labels)
        except RunFolderError as err:  # unusable rows only change which rows are checked
            print(f"fintrl: the check does not use {PREDICTIONS}: {err}", file=sys.stderr)
    if rows:
        texts = [row["text"] for row in rows]
        picked = sorted(random.Random(0).sample(range(len(texts)), min(CHECK_ROWS, len(texts))))
        return [texts[i] for i in picked], f"{len(picked)} of the run's {len(texts)} eval rows"
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:CHECK_ROWS]
    return texts, f"fintrl's {len(texts)} packaged sample sentences (the target has no eval rows)"


def _score(target: Target, model: Any, tokenizer: Any, texts: list[str], labels: list[str]) -> ScoreResult:
    mode = "auto" if target.recipe.eval.mode == "generate" else target.recipe.eval.mode  # exact: every row a label
    return target.scorer(model, tokenizer, mode=mode, labels=labels).score(texts, progress=False)


def agreement(reference: ScoreResult, other: ScoreResult) -> dict[str, Any]:
    """How far `other`'s answers are from `reference`'s on the same texts (unrounded): rows, rows with the same label,
    their share, and the largest and mean |dp| over every row and label. The dense-form check and the merged export's
    report both measure with it."""
    import numpy as np

    same = np.asarray(reference.predictions) == np.asarray(other.predictions)
    delta = np.abs(reference.probabilities - other.probabilities)
    return {
        "n": int(same.size),
        "same_prediction": int(same.sum()),
        "agreement": float(same.mean()),
        "max_abs_dprob": float(delta.max()),
        "mean_abs_dprob": float(delta.mean()),
    }


def _measured(reference: ScoreResult, dense: ScoreResult) -> dict[str, Any]:
    found = agreement(reference, dense)
    return {
        "same_prediction": found["same_prediction"],
        "agreement": round(found["agreement"], 6),
        "max_abs_dprob": float(f"{found['max_abs_dprob']:.3g}"),
        "passed": found["agreement"] >= MIN_AGREEMENT and found["max_abs_dprob"] <= MAX_ABS_DPROB,
    }


def _agreed(record: dict[str, Any]) -> str:
    return (
        f"the adapter merged into its dequantized 4-bit base agrees with the 4-bit adapter on "
        f"{record['agreement']:.1%} of {record['rows']} rows, max |dp| {record['max_abs_dprob']:.2g} "
        "(--exact-4bit keeps the 4-bit path)"
    )


def _shortfall(candidate: dict[str, Any]) -> str:
    if "error" in candidate:
        return f"{candidate['dtype']}: {candidate['error']}"
    return f"{candidate['dtype']} {candidate['agreement']:.1%} labels, max |dp| {candidate['max_abs_dprob']:.2g}"


def _cache_file(target: Target, texts: list[str], labels: list[str]) -> Path:
    """Where the verdict for this target on this machine is kept: every input that could change it is in the key."""
    from importlib.metadata import version

    import torch

    from fintrl.model.loading import fintrl_home

    adapter = Path(target.adapter) if target.adapter else None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    key = {
        "check": CHECK_VERSION,
        **{name: _sha256(adapter / name) if adapter else None for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)},
        "base": [target.recipe.model.name_or_path, target.recipe.model.revision, target.recipe.model.dtype],
        "quantization": target.recipe.quantization,
        "prompt": target.prompt_builder(labels).user_message("{text}"),
        "mode": target.recipe.eval.mode,
        "device": [device, fast_bf16()],
        "versions": [version(name) for name in ("torch", "transformers", "peft", "bitsandbytes")],
        "texts": hashlib.sha256("\0".join(texts).encode()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return fintrl_home() / "inference-checks" / f"{digest}.json"


def _sha256(path: Path) -> str | None:
    """None where the file is missing: loading the adapter then says what is wrong with it."""
    from fintrl.data.files import file_sha256

    return file_sha256(path) if path.is_file() else None


def _read_verdict(path: Path) -> dict[str, Any] | None:
    """A cached check, or None where there is none or it is not one this version wrote (then it is checked again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(record, dict)
        and record.get("version") == CHECK_VERSION
        and record.get("dtype") in (None, "bfloat16", "float32")
        and isinstance(record.get("reason"), str)
        and (record["dtype"] is None or _passes(record))
    )
    return record if ok else None


def _passes(record: dict[str, Any]) -> bool:
    agreement, delta = record.get("agreement"), record.get("max_abs_dprob")
    numbers = isinstance(agreement, (int, float)) and isinstance(delta, (int, float))
    return numbers and agreement >= MIN_AGREEMENT and 0 <= delta <= MAX_ABS_DPROB


def _dtype_name(model: Any) -> str:
    return str(getattr(model, "dtype", "")).removeprefix("torch.")


def free_memory() -> None:
    """Give back the memory of models just dropped (`del`), before the next one loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
