#!/usr/bin/env bash
# GPU check for the "Speed" issue: 7B QLoRA training tokens/s + peak VRAM (fintrl vs TRL defaults) and scorer
# examples/s, on an H100/H200 box without internet; plus a 1-GPU FSDP-QLoRA smoke step (part `fsdp_qlora`:
# recipes/mistral_fsdp_qlora.yaml under recipes/accelerate/fsdp_qlora.yaml, one process) whose peak VRAM is
# reported beside the plain QLoRA one. Only that step: bash benchmarks/gpu_check.sh --only fintrl,fsdp_qlora. Two steps:
#
#   here (with internet):  bash benchmarks/gpu_check.sh --fetch-wheels
#       fills $GPU_CHECK_DIR (default .gpu_check/, must be git-ignored) with what the box lacks:
#         wheels/     trl, datasets, bitsandbytes (slimmed to its CUDA 13 libraries), transformers, peft and the
#                     pure-Python pieces they need that the box has not (dill, multiprocess, pydantic, ...), at the
#                     versions installed here, for CPython 3.12 / manylinux x86_64 (the box's python3)
#         tokenizer/  the real Mistral-7B tokenizer (fintrl's tiny-mistral files; tokenizer.json gzipped)
#         data/       ../shared/data/fpb_allagree (the recipe's dataset), when present here
#       and prints the total that will travel (limit 64 MiB, working tree included).
#
#   on the box (repo root; $OUT collects the results):  bash benchmarks/gpu_check.sh [benchmarks.gpu_check options]
#       installs the wheels into /tmp/gpu_check_site (no index, no deps), puts it and the repo on PYTHONPATH
#       (fintrl is not pip-installed there) and runs `python3 -m benchmarks.gpu_check` under a time budget
#       (GPU_CHECK_BUDGET_S, default 450 s for everything, install included), writing
#       $OUT/gpu_check.json and $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${GPU_CHECK_DIR:-.gpu_check}
SITE=/tmp/gpu_check_site
# Versions of these are taken from this machine (pip download --no-deps). The box already has torch, accelerate,
# numpy, pandas, pyarrow, fsspec, xxhash, huggingface_hub, tokenizers, safetensors, jinja2, pyyaml, tqdm, psutil,
# regex, typer, sentencepiece, protobuf (see .library/device/KINDS.md).
PACKAGES=(trl datasets bitsandbytes transformers peft dill multiprocess pydantic pydantic_core annotated-types
          typing-inspection typing_extensions)
# bitsandbytes ships libraries for every CUDA/ROCm/XPU version (43 MB); the box's torch is cu130. "all" keeps them.
BNB_CUDA=${GPU_CHECK_BNB_CUDA:-"130 132"}

fetch() {
    rm -rf "$CARRY/wheels" "$CARRY/tokenizer" "$CARRY/data"
    mkdir -p "$CARRY/wheels" "$CARRY/tokenizer"
    local specs=()
    for name in "${PACKAGES[@]}"; do
        specs+=("$name==$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    echo "downloading: ${specs[*]}"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$CARRY/wheels" "${specs[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    if [ "$BNB_CUDA" != "all" ]; then
        python3 - "$CARRY/wheels" $BNB_CUDA <<'EOF'
"""Drop bitsandbytes' native libraries for CUDA versions other than the box's (and ROCm/XPU) from the wheel."""
import re, sys, zipfile
from pathlib import Path
folder, keep = Path(sys.argv[1]), {f"libbitsandbytes_cuda{v}.so" for v in sys.argv[2:]} | {"libbitsandbytes_cpu.so"}
wheel = next(folder.glob("bitsandbytes-*.whl"))
drop = lambda name: re.fullmatch(r"bitsandbytes/libbitsandbytes_\w+\.so", name) and name.split("/")[-1] not in keep
before = wheel.stat().st_size
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if drop(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l for l in data.decode().splitlines(True) if not drop(l.split(",")[0])).encode()
        dst.writestr(info, data)
slim.replace(wheel)
print(f"bitsandbytes wheel slimmed to {sorted(keep)}: {before / 2**20:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB")
EOF
    fi
    # The real Mistral-7B tokenizer, as fintrl's tiny-mistral model folder holds it (built once from mistral-common).
    python3 - "$CARRY/tokenizer" <<'EOF'
import gzip, shutil, sys
from pathlib import Path
from fintrl.model.loading import resolve_model_path
src, dst = Path(resolve_model_path("tiny-mistral")), Path(sys.argv[1])
for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
    if (src / name).is_file():
        shutil.copy(src / name, dst / name)
with (src / "tokenizer.json").open("rb") as f, gzip.open(dst / "tokenizer.json.gz", "wb", compresslevel=9) as g:
    shutil.copyfileobj(f, g)
EOF
    if [ -d ../shared/data/fpb_allagree ]; then
        mkdir -p "$CARRY/data/fpb_allagree"
        cp ../shared/data/fpb_allagree/train.csv ../shared/data/fpb_allagree/validation.csv "$CARRY/data/fpb_allagree/"
    else
        echo "note: ../shared/data/fpb_allagree not found; the box will use the packaged quickstart sample"
    fi
    ls -l "$CARRY"/wheels
    python3 - "$CARRY" <<'EOF'
import subprocess, sys
from pathlib import Path
carry = Path(sys.argv[1]).resolve()
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                       text=True, check=True).stdout.split("\0")
tree = sum(Path(f).stat().st_size for f in files
           if f and Path(f).is_file() and carry not in Path(f).resolve().parents)
carried = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
total = tree + carried
print(f"\ncarry {carry.name}: {carried / 2**20:.2f} MiB; working tree without it: {tree / 2**20:.2f} MiB; "
      f"total {total / 2**20:.2f} MiB of the 64 MiB limit")
ignored = subprocess.run(["git", "check-ignore", "-q", str(carry)], capture_output=True).returncode == 0
if not ignored:
    print(f"warning: {carry.name}/ is not git-ignored: add '/{carry.name}/' to .gitignore or .git/info/exclude "
          "(it still travels, but would show in git status)")
if total > 64 * 2**20:
    sys.exit("error: over the 64 MiB limit")
EOF
}

if [ "${1:-}" = "--fetch-wheels" ]; then
    fetch
    exit 0
fi

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-450}
OUTDIR=${OUT:-runs/bench}
mkdir -p "$OUTDIR"
if ! ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
    echo "no wheels in $CARRY/wheels: run 'bash benchmarks/gpu_check.sh --fetch-wheels' here first and carry $CARRY" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$CARRY"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export FINTRL_HOME=${FINTRL_HOME:-/tmp/fintrl_home}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
LEFT=$((BUDGET - ($(date +%s) - START)))
echo "installed in $(( $(date +%s) - START )) s; benchmarks.gpu_check gets ${LEFT} s"
set -o pipefail
python3 -m benchmarks.gpu_check --deadline-s "$LEFT" --carry "$CARRY" --out "$OUTDIR/gpu_check.json" "$@" 2>&1 \
    | tee "$OUTDIR/gpu_check.log"
