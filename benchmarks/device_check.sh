#!/usr/bin/env bash
# The prepared GPU check (issue 22): one NVIDIA GPU, at most about 8 minutes, one summary file.
#
# Run from the repository root on a machine with a CUDA GPU and a python3 that has torch,
# torchvision (and timm / transformers for their rows) installed; nothing is downloaded:
#
#     OUT=/some/folder bash benchmarks/device_check.sh      # default OUT: ./device_check
#
# Steps, each with its own time limit (a step that fails or runs out is recorded, and the next
# one runs): the environment and `adact info`; the CUDA tests; the size sweep at fp32 and bf16;
# the whole-model table on CUDA (eager); a one-epoch `adact search` on CUDA; a one-GPU `torchrun`
# (NCCL) training run. $OUT/summary.md collects the tail of every step's log; the full logs lie
# beside it. Copy the numbers into docs/PERFORMANCE.md with the GPU's name and the date.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ADACT_CACHE_DIR="$OUT/cache"
start_all=$(date +%s)

echo "# adact device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$SUMMARY"

step() {  # step NAME SECONDS TAIL_LINES COMMAND...
  local name=$1 limit=$2 lines=$3
  shift 3
  local t0 rc
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  {
    echo
    echo "## $name (exit $rc$([ "$rc" = 124 ] && echo ", stopped at its ${limit} s limit"), $(( $(date +%s) - t0 )) s)"
    echo '```'
    tail -n "$lines" "$OUT/$name.log"
    echo '```'
  } >> "$SUMMARY"
  echo "$name: exit $rc"
}

step environment 90 40 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  $PY -c 'import torch, sys; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", \
  torch.version.cuda, torch.cuda.get_device_name(0))'; $PY -m adact info"
step cuda_tests 150 25 "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda" tests/test_fused.py
step sweep_fp32 60 14 "$PY" benchmarks/bench_adact.py --sweep --device cuda --dtype float32 --quick --glibc-defaults
step sweep_bf16 60 14 "$PY" benchmarks/bench_adact.py --sweep --device cuda --dtype bfloat16 --quick --glibc-defaults
step models_cuda 120 12 "$PY" benchmarks/bench_models.py --device cuda --rounds 5
step search_cuda 60 12 "$PY" -m adact search --model torchvision:resnet18 --dataset digits --image-size 32 --epochs 1 \
  --seeds 0 --device cuda --quiet --out "$OUT/search"
step torchrun_nccl 60 8 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m adact train --dataset digits \
  --epochs 1 --device cuda --quiet --out "$OUT/torchrun"

echo >> "$SUMMARY"
echo "total: $(( $(date +%s) - start_all )) s" >> "$SUMMARY"
echo "wrote $SUMMARY"
