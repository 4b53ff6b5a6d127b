#!/usr/bin/env bash
# GPU check (issue 11). Not part of CI: run it by hand on a CUDA machine; it aims at under 10 minutes.
#
#   scripts/gpu_check.sh [OUT]        (OUT defaults to runs/gpu-check)
#
# 1. sets up the project (make setup), checks that onnxruntime sees the CUDA execution provider;
# 2. trains the `full` profile briefly (every network stopped after TRAIN_SECONDS, default 60 s);
# 3. exports it with KIND_GPU instance groups into OUT/model_repository;
# 4. serves that repository on the local Triton (the backend runs onnxruntime's CUDA provider for GPU
#    instances) with every service, runs `couturier bench --store both`, and writes OUT/bench/bench.json;
# 5. fails unless the Triton log shows every loaded model instance on CUDAExecutionProvider.
# Environment: TRAIN_SECONDS, BENCH_SECONDS (seconds per load level, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
TRAIN_SECONDS=${TRAIN_SECONDS:-60}
BENCH_SECONDS=${BENCH_SECONDS:-3}
BIN=.venv/bin
started=$(date +%s)
stage() { echo "== $(($(date +%s) - started)) s: $*"; }

stage "setup"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
make setup
$BIN/python - <<'EOF'
import onnxruntime, sys
providers = onnxruntime.get_available_providers()
print("onnxruntime", onnxruntime.__version__, providers)
sys.exit(0 if "CUDAExecutionProvider" in providers else "CUDAExecutionProvider missing: this is not a CUDA machine")
EOF
mkdir -p "$OUT"
stage "train the full profile for at most ${TRAIN_SECONDS} s per network"
$BIN/couturier train --profile full --runs "$OUT/runs" --data-dir "$OUT/data" --max-seconds "$TRAIN_SECONDS"
stage "export with KIND_GPU"
$BIN/couturier export --profile full --runs "$OUT/runs" --repo "$OUT/model_repository" --kind KIND_GPU \
  --user-vectors "$OUT/user_vectors"
stage "bench on the local Triton (CUDA provider), milvus-lite and the local Milvus server"
log_mark=$(date +%s)
$BIN/couturier bench --store both --repo-dir "$OUT/model_repository" --user-vectors-dir "$OUT/user_vectors" \
  --data-dir "$OUT/data" --out "$OUT/bench" --duration-s "$BENCH_SECONDS"
stage "check the providers Triton used"
logs=$(find var/triton/logs -name 'tritonserver-*.log' -newermt "@$log_mark")
cuda=$(grep -h "runs on CUDAExecutionProvider" $logs | wc -l)
cpu=$(grep -h "runs on CPUExecutionProvider" $logs | wc -l)
echo "model instances on CUDA: $cuda, on CPU: $cpu"
if [ "$cuda" -eq 0 ] || [ "$cpu" -ne 0 ]; then
  echo "error: expected every model instance on CUDAExecutionProvider (logs: $logs)" >&2
  exit 1
fi
stage "done: $OUT/bench/bench.json and bench.md"
