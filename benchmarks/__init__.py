"""fintrl's benchmarks, run from the repository root as modules: `python -m benchmarks.bench_train --help`.

- `bench_train`: training tokens/s and peak memory, fintrl against TRL's `SFTTrainer` defaults;
- `bench_scoring`: scorer examples/s per mode against `pipeline("text-generation")` + parsing;
- `bench_quality`: accuracy and F1 on the financial datasets against TF-IDF and the base model zero-shot;
- `gpu_check` (with `gpu_check.sh`): 7B QLoRA training, scoring and peak VRAM on one GPU.

`harness` holds what they share: `environment()`, `run_worker()` (a function in a fresh Python process), timing
and memory helpers, and the TRL-defaults baseline trainer. See benchmarks/README.md.
"""
