#!/usr/bin/env bash
# `make bench`: benchmarks, never part of `make test`. Results under bench-results/.
#   1. the agent's footprint, probe latency and CPU per probe against nginx `return 200`
#      (agent/benches/footprint.rs, release binary; nginx must be installed),
#      `vitals-agent webhook`'s review latency, CPU per review and RSS
#      (agent/benches/webhook.rs, same binary), and the agent as a group leader polling 16
#      members (agent/benches/group_footprint.rs);
#   2. the worker against sentence-transformers, in the same run: BENCH_ROUNDS rounds (3),
#      each the worker in process at batch 1/8/32/128 plus one-sentence latency
#      (model-worker/benches/embed.rs, `worker` profile) then sentence-transformers on the
#      same texts and threads (scripts/bench_st.py; a venv with torch in .venv-bench, made
#      on first use), so both sides see the same machine load; then the worker over HTTP
#      with 8 clients; medians and each round's ratio by scripts/bench_compare.py.
# Environment:
#   BENCH_THREADS  threads for both sides (default 2: the pod size this is compared at);
#   BENCH_ROUNDS   rounds (default 3); BENCH_SECS seconds per figure (default 5);
#   BENCH_FEATURES worker features, e.g. `mkl` (then scripts/mkl.sh provides oneMKL);
#   BENCH_ISA      `avx2`: restrict the AVX-512 machine to AVX2 kernels, as on an AVX2-only
#                  CPU (MKL_ENABLE_INSTRUCTIONS for MKL on both sides, ATEN_CPU_CAPABILITY and
#                  ONEDNN_MAX_CPU_ISA for PyTorch; candle's default gemm kernels are AVX2+FMA
#                  whatever the CPU, gemm's AVX-512 ones being behind its off `x86-v4` feature);
#   BENCH_AGENT=0  skip the agent part; BENCH_WORKER=0 skip the worker part (`make bench-agent`).
# Run it on an otherwise idle machine: every figure is wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results
# shellcheck source=scripts/bench-env.sh
source scripts/bench-env.sh
ROUNDS=${BENCH_ROUNDS:-3}

echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) CPUs visible"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
for f in avx2 fma avx512f avx512_bf16 amx_tile; do
  case " $flags " in *" $f "*) echo "   $f: yes" ;; *) echo "   $f: no" ;; esac
done

if [ "${BENCH_AGENT:-1}" != 0 ]; then
  echo "== agent: binary size, idle RSS and CPU with 4 workers, probe latency at 1000/s, CPU per probe against nginx"
  # The binary the agent image ships (scripts/images.sh): static, so its idle RSS holds no
  # shared glibc and ld.so (1.4 MiB of a dynamic build's); the benches run it by default.
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p vitals-agent --target "$(uname -m)-unknown-linux-gnu"
  export VITALS_AGENT_BIN=${VITALS_AGENT_BIN:-${CARGO_TARGET_DIR:-target}/$(uname -m)-unknown-linux-gnu/release/vitals-agent}
  # The upstreams the footprint bench watches: fake vLLMs, each its own process.
  cargo build --release -p vitals-e2e --bin fake-vllm
  cargo bench -p vitals-agent --bench footprint | tee bench-results/agent.md
  echo "== agent webhook: AdmissionReview latency (1 and 8 clients, new connections), CPU, RSS"
  cargo bench -p vitals-agent --bench webhook | tee bench-results/webhook.md
  echo "== agent as a group leader: RSS and CPU polling 16 members every second"
  cargo bench -p vitals-agent --bench group_footprint | tee bench-results/group.md
fi

if [ "${BENCH_WORKER:-1}" = 0 ]; then
  echo "results: bench-results/agent.md, bench-results/webhook.md, bench-results/group.md"
  exit 0
fi

if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q sentence-transformers torch
fi
# The server measurement runs this binary; built with the same features as the bench.
cargo build --profile worker -p vitals-worker "${FEATURES[@]}"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: worker (candle) in process, then sentence-transformers, $BENCH_THREADS threads"
  BENCH_OUT=candle-$r.json cargo bench --profile worker -p vitals-worker "${FEATURES[@]}" --bench embed
  BENCH_CANDLE=candle-$r.json BENCH_OUT=st-$r.json HF_HUB_OFFLINE=1 \
    .venv-bench/bin/python scripts/bench_st.py
done
echo "== worker over HTTP: 8 clients, with and without dynamic batching"
BENCH_SERVER=1 BENCH_BATCHES=1 BENCH_SINGLE=0 BENCH_OUT=candle-server.json \
  cargo bench --profile worker -p vitals-worker "${FEATURES[@]}" --bench embed
python3 scripts/bench_compare.py "$ROUNDS"
echo "results: bench-results/agent.md, bench-results/embed.md (raw: bench-results/*.json)"
