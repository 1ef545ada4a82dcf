#!/usr/bin/env bash
# GPU session script for the few-token adapter merge (kept beside gpu_check.sh: one call, logs and CSVs in $OUT).
# Usage: SLOPE_GIT_SHA=<commit> SLOPE_GIT_DIRTY=False bash performance_experiments/gpu_session_merge.sh \
#   [merge-tests|merge-bench|tests|bench|e2e]   (limits and selections: the ${...} variables below)
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SLOPE_CACHE_DIR=${SLOPE_CACHE_DIR:-/tmp/slc}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import slope.kernels.cusparselt as c; import time; t=time.time(); c.load_extension(); print(f'extension built in {time.time()-t:.0f}s')" 2>&1 | tail -3
# pytest-xdist workers outlive a pytest that `timeout` stops, and would share the GPU and the host with the
# benchmarks that follow: stop them after every test stage (7219cbf's e2e rows ran after such a stop)
stop_test_workers() {
  pkill -f -- "-m pytest" 2>/dev/null; pkill -f "exec(eval(sys.stdin.readline()))" 2>/dev/null; sleep 2; true
}
case "${1:-tests}" in
merge-tests)  # the adapter-merge tests alone
  timeout ${TESTS_S:-240} python3 -m pytest -m gpu -q -p no:cacheprovider -n ${WORKERS:-4} tests/test_sparse_gemv.py \
      tests/test_inference.py -k "adapter or merged_plan or few_token_merge or (merged_tiled and 1-32)" 2>&1 \
      | tee "$out/gpu_tests_merge.log" | tail -15
  stop_test_workers
  ;;
merge-bench)
  timeout ${BENCH_S:-300} python3 -m performance_experiments.bench_inference --preset decode --sections decode_merge \
      --dtypes bfloat16 --decode-shapes opt-13b.fc1,opt-13b.fc2 --decode-tokens ${TOKENS:-1,8,32} --repeats 20 \
      --merge-layouts ${LAYOUTS:-default} --output "$out/bench_decode_merge.csv" 2>&1 | tail -50
  ;;
tests)
  timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/test_sparse_gemv.py tests/test_fused.py 2>&1 | tee "$out/gpu_tests_gemv.log" | tail -15
  timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/test_inference.py -k "merged or few_token or prune_model or rebuild" 2>&1 | tee "$out/gpu_tests_inference.log" | tail -15
  stop_test_workers
  ;;
bench)
  timeout 120 python3 -m performance_experiments.profile_host --output-dir "$out/host_profile" 2>&1 | tail -30
  timeout 200 python3 -m performance_experiments.bench_inference --preset decode --sections decode_host,decode --dtypes bfloat16 \
      --decode-shapes opt-13b.fc1,opt-13b.fc2 --decode-tokens 1,8,32 --decode-ranks r0,r1.56% --repeats 20 \
      --output "$out/bench_decode_merge.csv" 2>&1 | tail -40
  ;;
e2e)
  timeout ${E2E_S:-560} python3 -m performance_experiments.speedup --models opt-13b --dtypes bfloat16 --sections decode \
      --max-blocks 8 --decode-fallback 0 --decode-cusparselt-too false --decode-kernel-time false \
      --cslt-search-budget-s 8 --time-budget-s ${E2E_BUDGET_S:-300} --variants dense,slope \
      --adapter-ranks ${RANKS:-0,1.56%,6.25%} --adapter-modes merged --separate-mask true --output-dir "$out/e2e" 2>&1 \
      | tail -40
  ;;
esac
