#!/usr/bin/env bash
# `make cuda-build`: vitals-worker with `--features cuda`, built on a machine without a
# GPU, then checked there: it must hold the kernels for the compute capability it claims,
# serve with `--device cpu`, and refuse `--device cuda` with "no CUDA device" and exit 1
# (model-worker/tests/cuda_device.rs). CI runs it after `make test`.
#
# Environment: CUDAFORGE_THREADS (nvcc jobs, default all cores), CUDA_COMPUTE_CAP (default 80: candle's kernels become compute_80 PTX,
# which the driver compiles for 8.0, 9.0 and newer GPUs when it loads them; see
# docs/benchmarks.md "GPU"), CUDA_TARGET_DIR (default target-cuda, apart from the CPU
# builds so neither rebuilds the other), VITALS_CUDA_HOME (scripts/cuda-toolkit.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_TARGET_DIR=${CUDA_TARGET_DIR:-target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
# cudaforge compiles candle's kernels on half the cores by default, and they are the
# longest step of the build: all of them (cudaforge src/parallel.rs).
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}

start=$SECONDS
eval "$(scripts/cuda-toolkit.sh)"
echo "== CUDA toolkit ready in $((SECONDS - start)) s: $CUDA_ROOT ($(nvcc --version | tail -1))"

start=$SECONDS
CARGO_TARGET_DIR=$CUDA_TARGET_DIR cargo build --profile worker --locked -p vitals-worker --features cuda
bin=$(cd "$CUDA_TARGET_DIR/worker" && pwd)/vitals-worker
echo "== CUDA build done in $((SECONDS - start)) s: $bin ($(du -h "$bin" | cut -f1))"

# candle keeps its kernels as PTX text in the binary: they must target what we claim.
want=$(awk -v c="$CUDA_COMPUTE_CAP" 'BEGIN { print (c < 20 ? c * 10 : c) }')
if ! grep -a -q -E "^\.target sm_${want}a?\b" "$bin"; then
  echo "FAILED: $bin holds no PTX for sm_$want" >&2
  exit 1
fi
echo "ok: kernels are PTX for sm_$want"

# The driver comes with a GPU node; here the toolkit's stub stands in for it, so the
# binary starts and every CUDA call answers CUDA_ERROR_STUB_LIBRARY.
VITALS_CUDA_WORKER=$bin LD_LIBRARY_PATH="$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs" \
  cargo test --locked -p vitals-worker --test cuda_device -- --ignored
