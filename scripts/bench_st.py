#!/usr/bin/env python3
"""The sentence-transformers side of `make bench`.

Runs after `cargo bench -p vitals-worker --bench embed`, which wrote the inputs
(bench-results/texts.json) and candle's figures (bench-results/candle.json, or
$BENCH_CANDLE). Measures SentenceTransformer.encode (PyTorch, CPU, float32) on the same
texts, the same batch sizes and the same number of threads, the same way (tokenisation and
normalisation included), into bench-results/sentence_transformers.json (or $BENCH_OUT).
scripts/bench_compare.py puts the two side by side.

Usage: HF_HUB_OFFLINE=1 .venv-bench/bin/python scripts/bench_st.py [MODEL_DIR]
"""

import json
import os
import platform
import sys
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
OUT = "bench-results"
SECS = float(os.environ.get("BENCH_SECS", "5"))
CANDLE = os.environ.get("BENCH_CANDLE", "candle.json")
RESULT = os.environ.get("BENCH_OUT", "sentence_transformers.json")


def percentile(sorted_values, p):
    i = round((len(sorted_values) - 1) * p)
    return sorted_values[min(i, len(sorted_values) - 1)]


def main():
    texts = json.load(open(f"{OUT}/texts.json"))
    candle = json.load(open(f"{OUT}/{CANDLE}"))
    threads = candle["in_process"]["threads"]
    torch.set_num_threads(threads)
    model = SentenceTransformer(MODEL_DIR, device="cpu")

    def encode(batch):
        return model.encode(
            batch,
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    throughput = {}
    for b in sorted(int(k) for k in candle["in_process"]["embeddings_per_s"]):
        encode(texts[:b])  # warm-up
        rows, i, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < SECS or rows < 3 * b:
            frm = (i * b) % (len(texts) - b + 1)
            rows += len(encode(texts[frm : frm + b]))
            i += 1
        throughput[str(b)] = rows / (time.perf_counter() - start)
        print(f"sentence-transformers: batch {b:>3}: {throughput[str(b)]:8.1f} embeddings/s", file=sys.stderr)

    single, start = [], time.perf_counter()
    for t in texts * 100:
        if len(single) >= 200 and time.perf_counter() - start >= SECS:
            break
        t0 = time.perf_counter()
        encode([t])
        single.append((time.perf_counter() - t0) * 1e3)
    single.sort()
    st = {
        "threads": threads,
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        # What PyTorch dispatched to: AVX512 or AVX2 (ATEN_CPU_CAPABILITY restricts it).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "embeddings_per_s": throughput,
        "single_ms": {"p50": percentile(single, 0.5), "p99": percentile(single, 0.99), "n": len(single)},
    }
    json.dump(st, open(f"{OUT}/{RESULT}", "w"), indent=2)


if __name__ == "__main__":
    main()
