#!/usr/bin/env bash
# `make gpu-check`: the CUDA build on a real GPU. Starts the built binary with
# `--device cuda`, checks its embeddings against the sentence-transformers reference
# (cosine >= 0.9999 for every text, one at a time and in one batch, as
# model-worker/tests/accuracy.rs does on the CPU), measures embeddings/s over HTTP at batch
# 1/8/32/128 and one-sentence latency, and writes the figures into docs/benchmarks.md
# between the gpu-check markers. Where there is no NVIDIA GPU it says so and exits 0,
# claiming nothing.
#
# It needs no Rust toolchain and no package registry: the binary, the CUDA libraries
# beside it, the model, the reference, and python3's standard library.
#
# Environment:
#   VITALS_CUDA_WORKER  the binary (default target-cuda/worker/vitals-worker)
#   VITALS_CUDA_LIBS    its CUDA libraries (default: the toolkit's, if
#                       scripts/cuda-toolkit.sh has assembled one; else the loader's path)
#   MODEL_DIR           default models/all-MiniLM-L6-v2
#   REFERENCE           default model-worker/tests/data/reference.json
#   RESULTS             default docs/benchmarks.md
#   GPU_CHECK_DEVICE    default cuda; any other device (cpu) exercises this script
#                       without a GPU and prints the figures without writing them
#   BENCH_SECS          seconds per batch size (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${VITALS_CUDA_WORKER:-target-cuda/worker/vitals-worker}
MODEL_DIR=${MODEL_DIR:-models/all-MiniLM-L6-v2}
REFERENCE=${REFERENCE:-model-worker/tests/data/reference.json}
RESULTS=${RESULTS:-docs/benchmarks.md}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BENCH_SECS=${BENCH_SECS:-5}

gpu=""
if [ "$DEVICE" = cuda ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total \
      --format=csv,noheader | head -1)
  fi
  if [ -z "$gpu" ]; then
    echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none): nothing measured, nothing written"
    exit 0
  fi
fi

for f in "$BIN" "$MODEL_DIR/model.safetensors" "$REFERENCE"; do
  if [ ! -f "$f" ]; then
    echo "gpu-check: $f is missing (make cuda-build builds the binary, make model fetches the model)" >&2
    exit 1
  fi
done
command -v python3 >/dev/null || { echo "gpu-check: python3 is missing" >&2; exit 1; }

libs=${VITALS_CUDA_LIBS:-}
if [ -z "$libs" ] && [ -d "${VITALS_CUDA_HOME:-$HOME/.cache/vitals/cuda-13.4.92}/root/lib" ]; then
  libs=$(cd "${VITALS_CUDA_HOME:-$HOME/.cache/vitals/cuda-13.4.92}/root/lib" && pwd -P)
fi
if [ -n "$libs" ]; then
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

scratch=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" --model-dir "$MODEL_DIR" --device "$DEVICE" --listen "127.0.0.1:$port" \
  --agent-socket "$scratch/agent.sock" 2>"$scratch/worker.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$scratch"' EXIT

echo "gpu-check: $BIN --device $DEVICE${gpu:+ on $gpu}"
GPU="$gpu" DEVICE="$DEVICE" PORT="$port" PID="$pid" REFERENCE="$REFERENCE" RESULTS="$RESULTS" \
  BENCH_SECS="$BENCH_SECS" WORKER_LOG="$scratch/worker.log" python3 - <<'PY'
import json, math, os, re, statistics, sys, time, urllib.error, urllib.request

port, pid = os.environ["PORT"], int(os.environ["PID"])
base = f"http://127.0.0.1:{port}"


def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def call(path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


deadline = time.monotonic() + 300
while True:
    try:
        call("/health", timeout=2)
        break
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass
    if not alive() or time.monotonic() > deadline:
        sys.exit("gpu-check: the worker did not become ready:\n" + open(os.environ["WORKER_LOG"]).read()[-4000:])
    time.sleep(0.2)

info = call("/info")
if not str(info.get("device")).startswith(os.environ["DEVICE"]):
    sys.exit(f"gpu-check: the worker runs on {info.get('device')}, not {os.environ['DEVICE']}")
ref = json.load(open(os.environ["REFERENCE"]))
items = ref["items"]
texts = [i["text"] for i in items]


def embed(batch):
    return [d["embedding"] for d in call("/v1/embeddings", {"input": batch, "model": "all-MiniLM-L6-v2"})["data"]]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-30)


one = [cosine(embed([t])[0], i["embedding"]) for t, i in zip(texts, items)]
batched = [cosine(e, i["embedding"]) for e, i in zip(embed(texts), items)]
worst = min(one + batched)
print(f"accuracy: {len(items)} texts, lowest cosine {worst:.6f} (one at a time {min(one):.6f}, one batch {min(batched):.6f})")

secs = float(os.environ["BENCH_SECS"])
rates = {}
for size in (1, 8, 32, 128):
    batch = [texts[k % len(texts)] for k in range(size)]
    embed(batch)  # warm: kernels for this shape loaded and compiled
    n, start = 0, time.monotonic()
    while time.monotonic() - start < secs:
        embed(batch)
        n += size
    rates[size] = n / (time.monotonic() - start)
    print(f"batch {size}: {rates[size]:.1f} embeddings/s")
lat = []
start = time.monotonic()
while time.monotonic() - start < secs or len(lat) < 100:
    t = time.monotonic()
    embed([texts[len(lat) % len(texts)]])
    lat.append((time.monotonic() - t) * 1000)
lat.sort()
p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
print(f"one sentence over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms (n = {len(lat)})")

ok = worst >= 0.9999
if os.environ["DEVICE"] != "cuda":
    print(f"gpu-check: device {os.environ['DEVICE']}: figures printed only, {os.environ['RESULTS']} left alone")
    sys.exit(0 if ok else 1)

gpu = [f.strip() for f in os.environ["GPU"].split(",")]
section = f"""<!-- gpu-check:begin -->
Measured by `make gpu-check` on {time.strftime('%Y-%m-%d')}: {gpu[0]} (compute capability
{gpu[2]}, {gpu[3]}), driver {gpu[1]}; the worker reports `{info.get('device')}`,
"{info.get('device_detail')}". Over HTTP on loopback, one client, {len(texts)} reference texts
cycled, each batch size for {secs:g} s.

| | measured |
|---|---|
| accuracy: lowest cosine against sentence-transformers ({len(items)} texts, alone and batched) | {worst:.6f} ({'pass' if ok else 'FAIL'}: ≥ 0.9999) |
| batch 1, embeddings/s | {rates[1]:.1f} |
| batch 8, embeddings/s | {rates[8]:.1f} |
| batch 32, embeddings/s | {rates[32]:.1f} |
| batch 128, embeddings/s | {rates[128]:.1f} |
| one sentence, p50 / p99 latency | {p50:.2f} / {p99:.2f} ms |
<!-- gpu-check:end -->"""
path = os.environ["RESULTS"]
doc = open(path).read()
pattern = re.compile(r"<!-- gpu-check:begin -->.*?<!-- gpu-check:end -->", re.S)
if not pattern.search(doc):
    sys.exit(f"gpu-check: {path} has no gpu-check markers")
open(path, "w").write(pattern.sub(lambda _: section, doc))
print(f"gpu-check: results written to {path}")
sys.exit(0 if ok else 1)
PY
