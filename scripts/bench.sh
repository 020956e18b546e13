#!/usr/bin/env bash
# `make bench`: benchmarks, never part of `make test`. Results under bench-results/.
#   1. the agent's footprint and probe latency (agent/benches/footprint.rs, release binary),
#      `vitals-agent webhook`'s review latency, CPU per review and RSS
#      (agent/benches/webhook.rs, same binary), and the agent as a group leader polling 16
#      members (agent/benches/group_footprint.rs);
#   2. the worker's embeddings/s and latency in process and over HTTP
#      (model-worker/benches/embed.rs, `worker` profile);
#   3. sentence-transformers on the same texts and threads, and the comparison
#      (scripts/bench_st.py; a venv with torch in .venv-bench, made on first use).
# Run it on an otherwise idle machine: every figure is wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results

echo "== agent: binary size, idle RSS and CPU with 4 workers, probe latency at 1000/s"
cargo build --release -p vitals-agent
cargo bench -p vitals-agent --bench footprint | tee bench-results/agent.md
echo "== agent webhook: AdmissionReview latency (1 and 8 clients, new connections), CPU, RSS"
cargo bench -p vitals-agent --bench webhook | tee bench-results/webhook.md
echo "== agent as a group leader: RSS and CPU polling 16 members every second"
cargo bench -p vitals-agent --bench group_footprint | tee bench-results/group.md

echo "== worker (candle): in process at batch 1/8/32/128, one sentence, HTTP with 8 clients"
BENCH_SERVER=1 cargo bench --profile worker -p vitals-worker --bench embed

echo "== sentence-transformers (PyTorch, CPU) on the same texts and threads"
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q sentence-transformers torch
fi
HF_HUB_OFFLINE=1 .venv-bench/bin/python scripts/bench_st.py
echo "results: bench-results/agent.md, bench-results/webhook.md, bench-results/embed.md (raw: bench-results/*.json)"
