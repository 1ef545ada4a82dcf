#!/usr/bin/env bash
# One GPU-machine session: GPU tests, then the linear benchmark. Logs and CSVs go to $OUT (or runs/).
# Usage: SLOPE_GIT_SHA=<commit> SLOPE_GIT_DIRTY=False bash performance_experiments/gpu_check.sh [bench preset]
# (the GPU machine gets the tree without .git: pass the commit so every result row names it)
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SLOPE_CACHE_DIR=${SLOPE_CACHE_DIR:-$out}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import slope.kernels.cusparselt as c; import time; t=time.time(); c.load_extension(); print(f'extension built in {time.time()-t:.0f}s, cuSPARSELt {c.load_extension().version()}')" 2>&1 | tail -20
python3 -m pytest -m gpu -q -p no:cacheprovider -x 2>&1 | tee "$out/gpu_tests.log" | tail -25
python3 -m performance_experiments.bench_linear --preset "${1:-h100}" --output "$out/bench_linear.csv" 2>&1 | tee "$out/bench.log" | tail -80
