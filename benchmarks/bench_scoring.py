"""Scoring throughput: fintrl's LabelScorer modes against `pipeline("text-generation")` + parsing.

Everything in one run, on one model, one machine and the same texts:
- examples/second of `transformers.pipeline("text-generation")` + `fintrl.scoring.scorer.parse_answer` (the baseline)
  and of each `LabelScorer` mode (first_token, trie, loglik, generate), as ratios against the baseline;
- the invalid rate of each (constrained modes are valid by construction; generate/pipeline can say non-labels);
- the scorer's cost against one plain batched forward pass over the same length-sorted, left-padded prompt
  batches with `logits_to_keep=1` (tokenisation not included in the forward time; it is reported separately);
- the cost of 20 labels (fintrl.data.loading.TFN_TOPICS, task "topic") against 3 (negative/neutral/positive), same
texts.

The base model is used zero-shot (no adapter): fine for speed; accuracies are reported only as a sanity check.
Timing and the environment record are `benchmarks.harness`'s. From the repository root:

    python -m benchmarks.bench_scoring --quick --model tiny-mistral
    python -m benchmarks.bench_scoring --model smollm2-135m-instruct      # full: 200 examples, 2 repeats
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    SHARED_DATA,
    environment,
    loadavg,
    round_robin,
    setup_torch,
    stopwatch,
    warn_if_loaded,
    write_report,
)

PACKAGED_SAMPLE = REPO / "fintrl" / "resources" / "quickstart" / "validation.csv"
SENTIMENT = ["negative", "neutral", "positive"]
SCORER_MODES = ("first_token", "trie", "loglik", "generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_scoring", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="tiny-mistral", help="offline name (tiny-mistral, smollm2-135m-instruct), folder or Hub id"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: --n 48, 1 repeat")
    p.add_argument("--n", type=int, default=None, help="examples (default 200; quick 48)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per measurement, best kept (default 2; quick 1)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="a text,label CSV (default: ../shared/data/fpb_allagree/validation.csv "
        "if present, else the packaged quickstart sample)",
    )
    p.add_argument("--modes", default=",".join(SCORER_MODES), help="scorer modes to time (comma-separated)")
    p.add_argument("--no-20-labels", action="store_true", help="skip the 20-label (TFN topic) comparison")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", default="runs/bench/bench_scoring.json", help="results JSON")
    args = p.parse_args(argv)
    args.n = args.n or (48 if args.quick else 200)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


def load_texts(path: str | None, n: int) -> tuple[Path, list[str], list[str]]:
    """First n rows with non-empty text of a text,label CSV (cycled if the file is shorter than n)."""
    source = Path(path) if path else SHARED_DATA / "fpb_allagree" / "validation.csv"
    if not source.is_file():
        if path:
            raise SystemExit(f"--data {path}: no such file")
        source = PACKAGED_SAMPLE
    with source.open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f) if r["text"] and r["text"].strip()]
    if len(rows) < n:
        print(f"note: {source} has {len(rows)} rows; cycling them to reach --n {n}", file=sys.stderr)
        rows = rows * (n // len(rows) + 1)
    rows = rows[:n]
    return source, [t for t, _ in rows], [lbl for _, lbl in rows]


def accuracy(predictions: list[int], gold: list[int] | None) -> float | None:
    if gold is None:
        return None
    return sum(p == g for p, g in zip(predictions, gold)) / len(gold)


def shared_prefix(encoded: list[list[int]]) -> int:
    """Tokens every prompt starts with (template + instruction): what a prefix cache can skip."""
    length = 0
    while all(len(e) > length and e[length] == encoded[0][length] for e in encoded):
        length += 1
    return length


def forward_only(model: Any, tokenizer: Any, encoded: list[list[int]], batch_size: int) -> None:
    """One plain forward over the same length-sorted, left-padded batches as the scorer, last logits only."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = [encoded[i] for i in order[start : start + batch_size]]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    setup_torch(args.threads)

    from fintrl.data.presets import TFN_TOPICS
    from fintrl.errors import ScoringError
    from fintrl.model.loading import load_model, load_tokenizer
    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import ModelSection, PromptSection
    from fintrl.scoring.scorer import INVALID, LabelScorer, parse_answer

    load_at_start = loadavg()
    source, texts, gold_names = load_texts(args.data, args.n)
    gold = [SENTIMENT.index(g) for g in gold_names] if all(g in SENTIMENT for g in gold_names) else None
    section = ModelSection(name_or_path=args.model)
    with stopwatch() as load:
        model = load_model(section, None)
        tokenizer = load_tokenizer(section)
        model.eval()
    load_s = load.seconds
    bs, reps = args.batch_size, args.repeats
    warm_texts = texts[: min(bs, len(texts))]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(
        f"model {args.model} on {model.device} ({torch.get_num_threads()} threads), {len(texts)} texts from {source}, "
        f"batch {bs}, best of {reps}; loaded in {load_s:.1f} s",
        file=sys.stderr,
    )

    builders = {3: PromptBuilder.resolve(PromptSection(), SENTIMENT, "sentiment")}
    if not args.no_20_labels:
        builders[20] = PromptBuilder.resolve(PromptSection(), list(TFN_TOPICS), "topic")

    # Every measurement is warmed up once, then timed round-robin `repeats` times (best kept): on a shared
    # machine a burst of outside load then hits every variant alike instead of one of them.
    tasks: dict[tuple[int, str], tuple[Callable[[], Any], Callable[[], Any]]] = {}
    results: dict[str, Any] = {"labels": {}}
    for n_labels, builder in builders.items():
        ref = LabelScorer(model, tokenizer, builder, mode="trie", batch_size=bs)
        with stopwatch() as encoding:
            encoded, n_trunc = ref.encode(texts)
        encode_s = encoding.seconds
        results["labels"][str(n_labels)] = {
            "answers": builder.answers,
            "label_tokens": [len(s) for s in ref.label_ids],
            "distinct_first_tokens": len({s[0] for s in ref.label_ids}) == len(ref.label_ids),
            "prompt_tokens_mean": sum(map(len, encoded)) / len(encoded),
            "shared_prefix_tokens": shared_prefix(encoded),
            "n_truncated": n_trunc,
            "encode_s": encode_s,
            "modes": {},
        }
        tasks[(n_labels, "forward")] = (
            lambda enc=encoded: forward_only(model, tokenizer, enc, bs),
            lambda enc=encoded: forward_only(model, tokenizer, enc[:bs], bs),
        )
        for mode in modes:
            try:
                scorer = LabelScorer(model, tokenizer, builder, mode=mode, batch_size=bs)
            except ScoringError as err:  # first_token needs labels with distinct first tokens
                results["labels"][str(n_labels)]["modes"][mode] = {"skipped": str(err)}
                continue
            tasks[(n_labels, mode)] = (
                lambda sc=scorer: sc.score(texts, progress=False),
                lambda sc=scorer: sc.score(warm_texts, progress=False),
            )

    # Baseline: pipeline("text-generation") on the same model, chat messages in, parse_answer out, with the same
    # greedy budget as the `generate` mode (longest label + 4 new tokens). It keeps the input order (no length
    # sorting), as a user calling it would. Left padding is set only while it runs (the scorer pads by itself).
    builder = builders[3]
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    chats = [builder.messages(t) for t in texts]
    new_tokens = max(results["labels"]["3"]["label_tokens"]) + 4
    pipe_kwargs = dict(
        batch_size=bs,
        max_new_tokens=new_tokens,
        do_sample=False,
        return_full_text=False,
        pad_token_id=tokenizer.pad_token_id,
    )

    def run_pipeline(items: list[Any]) -> tuple[list[int], list[str]]:
        tokenizer.padding_side = "left"
        try:
            outs = pipe(items, **pipe_kwargs)
        finally:
            tokenizer.padding_side = "right"
        texts_out = [o[0]["generated_text"] for o in outs]
        return [parse_answer(t, builder.answers) for t in texts_out], texts_out

    tasks[(3, "pipeline")] = (lambda: run_pipeline(chats), lambda: run_pipeline(chats[:bs]))

    for _, warmup in tasks.values():
        warmup()
    times, outputs = round_robin(
        {key: fn for key, (fn, _) in tasks.items()},
        reps,
        on_time=lambda rep, key, s: print(
            f"repeat {rep + 1}/{reps} {key[0]} labels {key[1]}: {s:.2f} s", file=sys.stderr
        ),
    )

    for (n_labels, name), ts in times.items():
        entry = results["labels"][str(n_labels)]
        seconds = min(ts)
        row: dict[str, Any] = {"seconds": seconds, "all_seconds": ts, "examples_per_second": len(texts) / seconds}
        if name == "forward":
            entry["forward"] = row
            continue
        out = outputs[(n_labels, name)]
        preds = out[0] if name == "pipeline" else out.predictions
        raw = out[1] if name == "pipeline" else out.raw_outputs
        n_invalid = sum(p == INVALID for p in preds)
        row.update(
            n_invalid=n_invalid,
            invalid_rate=n_invalid / len(texts),
            x_forward=seconds / min(times[(n_labels, "forward")]),
            accuracy=accuracy(preds, gold) if n_labels == 3 else None,
        )
        if raw:  # what free generation said, for the invalid rate
            row["raw_output_samples"] = [{"output": raw[i], "parsed": preds[i]} for i in range(min(8, len(raw)))]
        if name == "pipeline":
            entry["pipeline"] = {**row, "max_new_tokens": new_tokens}
        else:
            entry["modes"][name] = row
    for entry in results["labels"].values():
        entry["modes"] = {m: entry["modes"][m] for m in modes if m in entry["modes"]}

    report = {
        "benchmark": "bench_scoring",
        "args": vars(args),
        "model": args.model,
        "data": str(source),
        "n": len(texts),
        "load_model_s": load_s,
        "environment": environment(dtype=str(model.dtype)),
        "loadavg_start_end": [load_at_start, loadavg()],
        **results,
    }
    print_tables(report)
    print(f"\nresults: {write_report(args.out, report)}")
    return 0


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_tables(report: dict[str, Any]) -> None:
    three = report["labels"]["3"]
    base = three["pipeline"]
    fwd = three["forward"]
    print(
        f"\nbench_scoring: {report['model']}, {report['n']} texts ({Path(report['data']).parent.name}/"
        f"{Path(report['data']).name}), batch {report['args']['batch_size']}, {report['environment']['device']}, "
        f"{report['environment']['torch_threads']} threads, best of {report['args']['repeats']}"
    )
    load = report["loadavg_start_end"]
    print(
        f"mean prompt {three['prompt_tokens_mean']:.1f} tokens ({three['shared_prefix_tokens']} shared by all); "
        f"tokenisation {three['encode_s']:.3f} s "
        f"(in scorer times, not in the forward time); load average {load[0][0]:.1f} -> {load[1][0]:.1f}\n"
    )
    print("| 3 labels                   |   ex/s | x pipeline | invalid | accuracy | x forward |")
    print("|----------------------------|-------:|-----------:|--------:|---------:|----------:|")
    rows = [("pipeline + parse_answer", base)]
    rows += [(f"LabelScorer {m}", r) for m, r in three["modes"].items()]
    for name, r in rows:
        if "skipped" in r:
            print(f"| {name:<26} | {'n/a':>6} | {'-':>10} | {'-':>7} | {'-':>8} | {'-':>9} |")
            continue
        ratio = r["examples_per_second"] / base["examples_per_second"]
        print(
            f"| {name:<26} | {r['examples_per_second']:6.1f} | {ratio:10.2f} | {r['invalid_rate']:7.1%} | "
            f"{_fmt(r['accuracy'], '8.3f')} | {r['x_forward']:9.2f} |"
        )
    ratio = fwd["examples_per_second"] / base["examples_per_second"]
    print(
        f"| {'plain forward (reference)':<26} | {fwd['examples_per_second']:6.1f} | {ratio:10.2f} | {'-':>7} | "
        f"{'-':>8} | {1:9.2f} |"
    )
    print(
        "x pipeline = throughput / pipeline throughput; x forward = scorer time / one forward pass "
        "(logits_to_keep=1) over the same full prompts\n(below 1 when the scorer skips work the plain forward does, "
        "e.g. the shared prompt prefix computed once)"
    )
    warn_if_loaded(load, report["environment"]["cpu_count"])

    twenty = report["labels"].get("20")
    if not twenty:
        return
    print(
        f"\n20 labels (TFN topics, task 'topic': label tokens {min(twenty['label_tokens'])}-"
        f"{max(twenty['label_tokens'])}, distinct first tokens: {twenty['distinct_first_tokens']}) vs 3 labels "
        f"(label tokens {max(three['label_tokens'])}), same texts; mean prompt {twenty['prompt_tokens_mean']:.1f} "
        f"vs {three['prompt_tokens_mean']:.1f} tokens (shared prefix {twenty['shared_prefix_tokens']} vs "
        f"{three['shared_prefix_tokens']})\n"
    )
    print("| mode           | 3 labels ex/s | 20 labels ex/s | time 20 / 3 | 20 labels x forward |")
    print("|----------------|--------------:|---------------:|------------:|--------------------:|")
    rows = [("forward", three["forward"], twenty["forward"])]
    rows += [(m, three["modes"].get(m, {}), r) for m, r in twenty["modes"].items()]
    for mode, a, b in rows:
        if "skipped" in b or "skipped" in a or not a:
            print(
                f"| {mode:<14} | {_fmt(a.get('examples_per_second'), '13.1f')} | {'n/a':>14} | {'-':>11} | {'-':>19} |"
            )
            continue
        x_fwd = 1.0 if mode == "forward" else b["x_forward"]
        print(
            f"| {mode:<14} | {a['examples_per_second']:13.1f} | {b['examples_per_second']:14.1f} | "
            f"{a['examples_per_second'] / b['examples_per_second']:11.2f} | {x_fwd:19.2f} |"
        )
    if twenty["modes"].get("generate", {}).get("invalid_rate") is not None:
        print(f"20-label generate invalid rate: {twenty['modes']['generate']['invalid_rate']:.1%}")


if __name__ == "__main__":
    sys.exit(main())
