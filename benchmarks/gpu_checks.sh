#!/usr/bin/env bash
# GPU checks (issue 14), one run of under 5 minutes on a machine with a CUDA GPU, from the repository root:
#   1. the test suite's CUDA-marked tests (pytest -m cuda);
#   2. benchmarks/bench_speed.py on CUDA: encoder per 256² slice in fp32, auto (bf16 there) and bf16, several
#      slices per pass, a 300×512×512 volume embedded end to end, a click on a cached embedding, peak memory;
#   3. benchmarks/tuning_gain.py on CUDA with bf16 (if the file is there): one phantom volume, 2 labelled slices;
#   4. a 2-process torchrun tuning run over nccl, only if the machine has two GPUs or more.
# Goals on an H100/H200-class GPU (issue 14): <= 5 ms per slice, <= 5 ms per click, 300 slices in <= 3 s.
# Every figure goes to $OUT/gpu_checks.txt (and JSON beside it) when OUT is set, else to ./gpu_checks_out/.
#
# The GPU machine has its own Python and torch and no package registry. What it lacks travels as wheels in .whl/,
# made beforehand on a machine that reaches PyPI:
#   bash benchmarks/gpu_checks.sh prepare
# LiteMedSAM's weights (a 39 MB wheel) do not fit in what travels, so there the timings use random weights of
# the same architecture (times do not depend on the values; bench_speed says which weights it ran).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl segment-anything==1.0
    exit $?
fi

DIR="${OUT:-gpu_checks_out}"
mkdir -p "$DIR"
LOG="$DIR/gpu_checks.txt"
: > "$LOG"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "installing .whl/ failed" | tee -a "$LOG"; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

say() { echo "$*" | tee -a "$LOG"; }
# step NAME SECONDS COMMAND...: runs it under a time limit, output into the log, and records its exit status.
step() {
    local name=$1 limit=$2
    shift 2
    say "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || FAILED="$FAILED $name"
}
FAILED=""

say "gpu_checks $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'gpus', torch.cuda.device_count())" 2>&1 | tee -a "$LOG"
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -lt 1 ]; then
    say "no CUDA GPU visible: nothing to check"
    exit 1
fi

# 1. CUDA-marked tests (only the files that have some: the others import napari, which a GPU machine may lack)
CUDA_TESTS=$(grep -l "mark.cuda" tests/test_*.py)
step "cuda tests" 60 python3 -m pytest -q -m cuda -p no:cacheprovider -o addopts="" $CUDA_TESTS

# 2. speed: auto is bf16 on a GPU with bf16 (Ampere and later)
step "bench_speed" 130 python3 benchmarks/bench_speed.py --device cuda --repeats 20 --batches 8,32 \
    --volume-slices 300 --volume-cache memory --out "$DIR/bench_speed.json"

# 3. tuning on the GPU in bf16 (NAPARI_MSA_PRECISION=bf16 makes every model of the run bf16)
if [ -f benchmarks/tuning_gain.py ]; then
    step "tuning_gain" 70 env NAPARI_MSA_PRECISION=bf16 python3 benchmarks/tuning_gain.py --model demo \
        --device cuda --seeds 9001 --k 2 --out "$DIR/tuning_gain.jsonl"
fi

# 4. two GPUs: the same tuning under torchrun, one process per GPU, gradients over nccl
if [ "$GPUS" -ge 2 ]; then
    python3 - "$DIR" <<'EOF'
import sys

import numpy as np

from napari_msa.demo.phantoms import phantom_volume

hu, labels, _ = phantom_volume(9001, shape=(8, 256, 256))
np.save(f"{sys.argv[1]}/ddp_image.npy", hu)
np.save(f"{sys.argv[1]}/ddp_labels.npy", labels.astype(np.int32))
EOF
    step "torchrun nccl (2 GPUs)" 60 python3 -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m napari_msa.cli tune "$DIR/ddp_image.npy" "$DIR/ddp_labels.npy" --model demo --steps 20 \
        --device cuda --batch-size 2 -o "$DIR/ddp_adapter.safetensors"
else
    say "== torchrun nccl: skipped ($GPUS GPU; it needs two)"
fi

say "gpu_checks done in $SECONDS s; failed:${FAILED:- none}"
[ -z "$FAILED" ]
