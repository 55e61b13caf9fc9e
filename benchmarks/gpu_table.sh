#!/usr/bin/env bash
# Run ON the GPU machine (device tool), after benchmarks/gpu_prepare.sh here, carrying .gpu:
#   run(command="bash benchmarks/gpu_table.sh", carry=[".gpu"], timeout_s=600)
# The GPU figures of README "Speed", most important first; each stage writes its log and JSON to
# $OUT (or ./gpu-bench), row by row, so a stage stopped at its time limit keeps the rows it finished.
# The limits (240 + 100 + 60 + 170 s) keep the whole script under the device tool's 10 minutes.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-bench}
mkdir -p "$OUT"
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:core PYTHONUNBUFFERED=1 SAM2VOLUME_BENCH_CT=.gpu/ct.npz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
stage() {
  local name=$1; shift
  echo "== $name: $*"
  timeout "${STAGE_S:-170}" "$PY" -W ignore "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  echo "   exit $?"
  grep -v -e 'it/s\]' -e '^ *$' "$OUT/$name.log" | tail -25
}
# 1. every model at 1024 px on a 300-slice volume, upstream and ours, plain (the FPS goals)
STAGE_S=240 stage plain_1024 benchmarks/bench_engine.py --device cuda --models tiny small base+ large --sizes 1024 \
  --time-slices 300 --repeats 2 --memory-slices
# 2. MedSAM2's setting: tiny at 512 px (goal above 150 slices/s), and the time to the first mask
STAGE_S=100 stage plain_512 benchmarks/bench_engine.py --device cuda --models tiny --sizes 512 --time-slices 300 --repeats 3 --memory-slices
# 3. batched encoding per batch size (picks ENCODE_BATCH_DEFAULT for CUDA)
STAGE_S=60 stage encode_batch benchmarks/bench_encode_batch.py --device cuda --sizes 512 1024 --batches 1 2 4 8 --repeats 3
# 4. compiled, tiny (upstream's vos_optimized against ours), with the warm-up cost
stage compiled_tiny benchmarks/bench_engine.py --device cuda --models tiny --sizes 1024 --time-slices 300 --repeats 2 \
  --compile --memory-slices
