#!/usr/bin/env bash
# GPU session script for the dot form's prmt rebuild (`slope.kernels.sparse_gemv.REBUILD`): logs and CSVs in $OUT.
# Usage: SLOPE_GIT_SHA=<commit> SLOPE_GIT_DIRTY=False bash performance_experiments/gpu_session_rebuild.sh \
#   [check|tests|e2e|fma|profiled]
#   check: the rebuild's GPU tests, then prmt against select in one process (sweep_sparse_gemv, CUDA-graph replay)
#   tests: the few-token kernel's, the inference layer's and the timing helpers' GPU tests
#   e2e:   OPT-13B decode (8 blocks, bf16), dense and SLoPe with merged adapters, with the GPU busy time split by
#          kernel family (eager and CUDA-graph replay), then prmt against select on the sweep's shapes
#   fma:   the FMA form's products (`sparse_gemv.FMA_PRODUCTS`) kept against positions at one token, values and
#          words, on OPT-13B's shapes; then OPT-13B decode (8 blocks, bf16, b=1 and 8), dense and SLoPe, eager and
#          CUDA graph, without the profiler (the default products)
#   profiled: OPT-13B decode (8 blocks, bf16, b=1 and 8) with the profiler's split by kernel family (the timings
#          after the first profiler session come out flagged: `timing.TIMED_AFTER_PROFILER`)
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
  python3 -c "import slope.kernels.cusparselt as c, time; t = time.time(); c.load_extension(); \
print(f'extension built in {time.time() - t:.0f}s')" 2>&1 | tail -3
  timeout ${TESTS_S:-400} python3 -m pytest -m gpu -q -p no:cacheprovider -n ${WORKERS:-8} tests/test_sparse_gemv.py \
      tests/test_inference.py tests/test_timing.py 2>&1 | tee "$out/gpu_tests.log" | tail -15
  pkill -f -- "-m pytest" 2>/dev/null; true
  ;;
e2e)
  timeout ${E2E_S:-400} python3 -m performance_experiments.speedup --models opt-13b --dtypes bfloat16 \
      --sections decode --max-blocks 8 --decode-fallback 0 --decode-cusparselt-too false --cslt-search-budget-s 8 \
      --time-budget-s ${E2E_BUDGET_S:-300} --variants dense,slope --adapter-ranks ${RANKS:-0,1.56%} \
      --adapter-modes merged --decode-kernel-time true --separate-mask true --output-dir "$out/e2e" 2>&1 | tail -40
  timeout ${SWEEP_S:-150} python3 -m performance_experiments.sweep_sparse_gemv --output "$out/sweep_rebuild.csv" \
      --shapes ${SHAPES:-opt-13b.attn,opt-13b.fc1} --tokens ${TOKENS:-8,32} --words true --rebuilds prmt,select \
      --targets 528 --dtypes bfloat16 2>&1 | tail -20
  ;;
fma)
  timeout ${SWEEP_S:-200} python3 -m performance_experiments.sweep_sparse_gemv --output "$out/sweep_fma.csv" \
      --shapes ${SHAPES:-opt-13b.attn,opt-13b.fc1,opt-13b.fc2} --tokens 1 --words false,true --rebuilds prmt \
      --fma-products kept,positions --targets 528 --dtypes bfloat16 2>&1 | tail -8
  timeout ${E2E_S:-330} python3 -m performance_experiments.speedup --models opt-13b --dtypes bfloat16 \
      --sections decode --max-blocks 8 --decode-fallback 0 --decode-cusparselt-too false --cslt-search-budget-s 8 \
      --time-budget-s ${E2E_BUDGET_S:-240} --variants dense,slope --adapter-ranks 0 --decode-batches 1,8 \
      --decode-kernel-time false --separate-mask true --output-dir "$out/e2e" 2>&1 | tail -30
  ;;
profiled)
  timeout ${E2E_S:-330} python3 -m performance_experiments.speedup --models opt-13b --dtypes bfloat16 \
      --sections decode --max-blocks 8 --decode-fallback 0 --decode-cusparselt-too false --cslt-search-budget-s 8 \
      --time-budget-s ${E2E_BUDGET_S:-240} --variants dense,slope --adapter-ranks 0 --decode-batches 1,8 \
      --decode-kernel-time true --separate-mask true --output-dir "$out/e2e" 2>&1 | tail -30
  ;;
esac
