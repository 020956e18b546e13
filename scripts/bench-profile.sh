#!/usr/bin/env bash
# Where the worker's CPU time goes, per operation, at one batch size: `perf record` over the
# in-process embed bench (model-worker/benches/embed.rs) at that size only, then each
# sampled function put in one bucket (matmul, softmax, layer norm, GELU, tokenization,
# pooling, layout copies, other element-wise ops, thread pool, allocation, kernel) by
# scripts/perf_split.py. Not part of `make test` or `make bench`.
#
#   scripts/bench-profile.sh 1 32          # one table per batch size
#   BENCH_FEATURES=mkl scripts/bench-profile.sh 32
#
# Needs `perf` (Debian's linux-perf) with `perf_event_paranoid` allowing user profiling.
# Builds the bench with symbols (the `worker` profile strips them) into the same target.
# Environment: BENCH_THREADS (2), BENCH_SECS (5), BENCH_FEATURES, BENCH_ISA (see bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 BATCH_SIZE..." >&2; exit 2; }
command -v perf >/dev/null || { echo "bench-profile: perf not found (apt-get install linux-perf)" >&2; exit 1; }
# shellcheck source=scripts/bench-env.sh
source scripts/bench-env.sh
export CARGO_PROFILE_WORKER_STRIP=false CARGO_PROFILE_WORKER_DEBUG=line-tables-only
bench=$(cargo bench --profile worker -p vitals-worker "${FEATURES[@]}" --bench embed --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "embed" and m.get("executable"):
        print(m["executable"])')
mkdir -p bench-results
for b in "$@"; do
  data=bench-results/perf-batch-$b.data
  BENCH_BATCHES=$b BENCH_SINGLE=0 BENCH_OUT=profile-$b.json \
    perf record -q -F 1999 -o "$data" -- "$bench" --bench >/dev/null
  echo "== batch $b ($BENCH_THREADS threads${BENCH_FEATURES:+, features $BENCH_FEATURES})"
  perf report -i "$data" --stdio --no-children --sort sym --percent-limit 0 -q 2>/dev/null |
    python3 scripts/perf_split.py | tee "bench-results/split-batch-$b.md"
done
