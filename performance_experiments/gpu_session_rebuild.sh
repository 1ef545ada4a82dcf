#!/usr/bin/env bash
# GPU session script for the dot form's prmt rebuild (`slope.kernels.sparse_gemv.REBUILD`): logs and CSVs in $OUT.
# Usage: SLOPE_GIT_SHA=<commit> SLOPE_GIT_DIRTY=False bash performance_experiments/gpu_session_rebuild.sh [check|tests]
#   check: the rebuild's GPU tests, then prmt against select in one process (sweep_sparse_gemv, CUDA-graph replay)
#   tests: the few-token kernel's and the inference layer's GPU tests
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SLOPE_CACHE_DIR=${SLOPE_CACHE_DIR:-/tmp/slc}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "${1:-check}" in
check)
  timeout ${TESTS_S:-120} python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_sparse_gemv.py \
      -k "prmt_rebuild or rebuild_mode" 2>&1 | tee "$out/gpu_tests_rebuild.log" | tail -8
  timeout ${SWEEP_S:-300} python3 -m performance_experiments.sweep_sparse_gemv --output "$out/sweep_rebuild.csv" \
      --shapes ${SHAPES:-opt-13b.fc1,opt-13b.fc2,llama-3-8b.up} --tokens ${TOKENS:-8,32} --words true \
      --rebuilds prmt,select --targets 528 --dtypes ${DTYPES:-bfloat16} 2>&1 | tail -20
  ;;
tests)
  python3 -c "import slope.kernels.cusparselt as c; import time; t=time.time(); c.load_extension(); print(f'extension built in {time.time()-t:.0f}s')" 2>&1 | tail -3
  timeout ${TESTS_S:-400} python3 -m pytest -m gpu -q -p no:cacheprovider -n ${WORKERS:-8} tests/test_sparse_gemv.py \
      tests/test_inference.py 2>&1 | tee "$out/gpu_tests.log" | tail -15
  pkill -f -- "-m pytest" 2>/dev/null; true
  ;;
esac
