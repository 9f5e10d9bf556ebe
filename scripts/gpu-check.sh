#!/usr/bin/env bash
# gpu-check.sh: one prepared run on a GPU machine (no Node needed).
#
#   bash scripts/gpu-check.sh [OUT_DIR]
#
# 1. reports the environment: GPU, driver, nvcc, cmake/ninja, node, where cuBLAS is;
# 2. builds the native tests and benchmarks with plain CMake (CUDA on, sm_90 by default:
#    QUIETSTAR_CUDA_ARCHS overrides) — a binary built elsewhere may meet other system libraries;
# 3. runs every native test (CUDA-vs-CPU twins run here; they skip without a GPU), then the
#    CUDA tests again with cuBLAS disabled (our own GEMM kernels);
# 4. runs the GPU benchmarks (bench_cuda_*) in --quick mode;
# 5. with QUIETSTAR_GPU_AVA=1, runs the ava suite on the GPU (QUIETSTAR_DEVICE=cuda; needs node,
#    node_modules and the addon built from this tree);
# 6. prints a short summary table last. Logs go to OUT_DIR (default $OUT or ./gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$OUT_DIR"
BUILD="${QUIETSTAR_GPU_BUILD:-build-gpu}"
ARCHS="${QUIETSTAR_CUDA_ARCHS:-90}"
declare -a SUMMARY=()
note() { SUMMARY+=("$(printf '%-34s %s' "$1" "$2")"); }

echo "== environment"
{
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1; else echo "nvidia-smi: not found"; fi
  for tool in nvcc cmake ninja node g++; do printf '%-6s %s\n' "$tool" "$(command -v $tool || echo missing)"; done
  nvcc --version 2>/dev/null | tail -2
  ldconfig -p 2>/dev/null | grep -E 'libcublas(Lt)?\.so' || echo "cuBLAS: not on the loader path"
  find / -path /proc -prune -o -name 'libcublasLt.so.*' -print 2>/dev/null | head -5
} | tee "$OUT_DIR/env.txt"

echo "== build ($BUILD, archs $ARCHS)"
GEN=""
command -v ninja >/dev/null && GEN="-G Ninja"
NVCC="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if cmake -S . -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release -DQUIETSTAR_CUDA=ON \
     -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" >"$OUT_DIR/configure.log" 2>&1 &&
   cmake --build "$BUILD" -j "$(nproc)" >"$OUT_DIR/build.log" 2>&1; then
  note build ok
else
  note build FAILED
  tail -n 30 "$OUT_DIR/configure.log" "$OUT_DIR/build.log"
  printf '%s\n' "${SUMMARY[@]}"
  exit 1
fi

run_tests() {  # $1 label, $2 test-name glob, rest: env assignments
  local label="$1" pattern="$2"; shift 2
  local passed=0 failed=0 skipped=0
  for t in "$BUILD"/$pattern; do
    [ -x "$t" ] || continue
    local log="$OUT_DIR/$(basename "$t")-$label.log"
    env "$@" "$t" >"$log" 2>&1
    local line
    line=$(grep -E '^QS_TEST_SUMMARY' "$log" | tail -1)
    if [ -z "$line" ]; then failed=$((failed + 1)); echo "  $(basename "$t"): crashed (see $log)"; continue; fi
    passed=$((passed + $(sed -E 's/.*passed=([0-9]+).*/\1/' <<<"$line")))
    failed=$((failed + $(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$line")))
    skipped=$((skipped + $(sed -E 's/.*skipped=([0-9]+).*/\1/' <<<"$line")))
    grep -E 'NOT OK|FAIL' "$log" | head -5
  done
  note "native tests ($label)" "$passed passed, $failed failed, $skipped skipped"
}

echo "== native tests"
run_tests all 'test_*' QUIETSTAR_SYNC=1
# the GPU tests again on our own GEMM kernels only (the CPU tests do not change)
run_tests no-cublas 'test_cuda_*' QUIETSTAR_SYNC=1 QUIETSTAR_CUBLAS=0

echo "== GPU benchmarks"
# Only the bench_cuda_* programs: the others measure the CPU. Each prints JSON lines; their
# rows go into the summary below.
declare -a BENCH_ROWS=()
for b in "$BUILD"/bench_cuda_*; do
  [ -x "$b" ] || continue
  name=$(basename "$b")
  timeout 240 "$b" --quick >"$OUT_DIR/$name.jsonl" 2>"$OUT_DIR/$name.err"
  rc=$?
  note "$name" "exit $rc ($(wc -l <"$OUT_DIR/$name.jsonl") rows)"
  [ $rc -ne 0 ] && tail -n 5 "$OUT_DIR/$name.err"
  while IFS= read -r line; do
    # {"name": "...", "value": V, "unit": "U", ...} -> "name  V U  (ratio R)"
    row=$(sed -E 's/^\{"name": "([^"]*)", "value": ([^,]*), "unit": "([^"]*)"(, "baseline": [^,]*, "ratio": ([^}]*))?.*$/\1|\2 \3|\5/' <<<"$line")
    IFS='|' read -r bname bval bratio <<<"$row"
    [ -n "$bratio" ] && bval="$bval (ratio $bratio)"
    BENCH_ROWS+=("$(printf '  %-58s %s' "$bname" "$bval")")
  done <"$OUT_DIR/$name.jsonl"
done

# The ava suite on the GPU is opt-in: it needs node, node_modules and an addon built from this
# tree (npm install / npm run build:native), which a bare GPU machine usually lacks.
ADDON="${QUIETSTAR_ADDON:-build/Release/quietstar.node}"
if [ "${QUIETSTAR_GPU_AVA:-0}" = 1 ] && command -v node >/dev/null && [ -d node_modules ] && [ -f "$ADDON" ]; then
  echo "== ava on the GPU ($ADDON)"
  QUIETSTAR_ADDON="$ADDON" QUIETSTAR_DEVICE=cuda npx ava --tap >"$OUT_DIR/ava.tap" 2>&1
  note "ava (QUIETSTAR_DEVICE=cuda)" "$(grep -E '^# (pass|fail)' "$OUT_DIR/ava.tap" | tr '\n' ' ')"
else
  note ava "not run (QUIETSTAR_GPU_AVA=1 with node, node_modules and $ADDON runs it)"
fi

echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
{
  printf '%s\n' "${SUMMARY[@]}"
  echo "benchmarks:"
  printf '%s\n' "${BENCH_ROWS[@]}"
} | tee "$OUT_DIR/summary.txt"
