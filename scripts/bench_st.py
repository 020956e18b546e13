#!/usr/bin/env python3
"""The sentence-transformers side of `make bench`, and the comparison.

Runs after `cargo bench -p vitals-worker --bench embed`, which wrote the inputs
(bench-results/texts.json) and candle's figures (bench-results/candle.json). Measures
SentenceTransformer.encode (PyTorch, CPU, float32) on the same texts, the same batch sizes
and the same number of threads, the same way (tokenisation and normalisation included),
then prints the table docs/benchmarks.md shows and writes bench-results/embed.md.

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


def percentile(sorted_values, p):
    i = round((len(sorted_values) - 1) * p)
    return sorted_values[min(i, len(sorted_values) - 1)]


def main():
    texts = json.load(open(f"{OUT}/texts.json"))
    candle = json.load(open(f"{OUT}/candle.json"))
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
        "embeddings_per_s": throughput,
        "single_ms": {"p50": percentile(single, 0.5), "p99": percentile(single, 0.99), "n": len(single)},
    }
    json.dump(st, open(f"{OUT}/sentence_transformers.json", "w"), indent=2)

    c = candle["in_process"]
    lines = [
        f"CPU: {platform.processor() or platform.machine()}, {threads} threads for both; "
        f"{c['texts']} texts of {c['mean_tokens']:.1f} tokens on average; "
        f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}.",
        "",
        "| | vitals-worker (candle) | sentence-transformers | vitals / s-t |",
        "|---|---|---|---|",
    ]
    for b in sorted(c["embeddings_per_s"], key=int):
        ours, theirs = c["embeddings_per_s"][b], throughput[b]
        lines.append(
            f"| batch {b}, embeddings/s (higher is better) | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |"
        )
    for p in ["p50", "p99"]:
        ours, theirs = c["single_ms"][p], st["single_ms"][p]
        lines.append(
            f"| one sentence, {p} latency (lower is better) | {ours:.2f} ms | {theirs:.2f} ms | {ours / theirs:.2f}x |"
        )
    for s in candle.get("server", []):
        lines.append(
            f"| HTTP, {s['clients']} clients, max batch {s['max_batch_size']} | "
            f"{s['requests_per_s']:.1f} req/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
            f"{s['errors']} errors | | |"
        )
    table = "\n".join(lines) + "\n"
    open(f"{OUT}/embed.md", "w").write(table)
    print(table)


if __name__ == "__main__":
    main()
