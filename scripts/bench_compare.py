#!/usr/bin/env python3
"""The worker-against-sentence-transformers table of `make bench`, from the rounds it ran.

scripts/bench.sh runs the two sides back to back, round after round, in the same run:
bench-results/candle-N.json (model-worker/benches/embed.rs) and
bench-results/st-N.json (scripts/bench_st.py) for N = 1..ROUNDS, and
bench-results/candle-server.json (the HTTP measurement). This prints and writes
bench-results/embed.md: the machine (CPU model and the vector extensions that decide which
kernels run), the median of each figure over the rounds, and each round's ratio, so the
noise is visible and a figure is never compared across machine classes.

Standard library only. Usage: python3 scripts/bench_compare.py ROUNDS [LABEL]
"""

import json
import os
import statistics
import sys

OUT = os.environ.get("BENCH_RESULTS", "bench-results")
# The extensions that decide which kernels the two sides run.
FLAGS = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]


def cpu():
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if model != "unknown CPU" and flags:
                break
    except OSError:
        pass
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)
    return f"{model} ({os.cpu_count()} CPUs visible); {have}"


def main():
    rounds = int(sys.argv[1])
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    candle = [json.load(open(f"{OUT}/candle-{r}.json")) for r in range(1, rounds + 1)]
    st = [json.load(open(f"{OUT}/st-{r}.json")) for r in range(1, rounds + 1)]
    c0, s0 = candle[0]["in_process"], st[0]
    med = statistics.median
    isa = os.environ.get("BENCH_ISA", "native")
    lines = [
        f"CPU: {cpu()}.",
        f"Kernels: candle {'oneMKL (--features mkl)' if candle[0].get('mkl') else 'gemm crate (AVX2+FMA kernel)'}, "
        f"PyTorch {s0.get('cpu_capability', '?')} with MKL; BENCH_ISA={isa}. "
        f"{c0['threads']} threads for both; {c0['texts']} texts of {c0['mean_tokens']:.1f} tokens on average; "
        f"sentence-transformers {s0['versions']['sentence_transformers']}, torch {s0['versions']['torch']}. "
        f"Medians of {rounds} rounds, each round both sides back to back.{' ' + label if label else ''}",
        "",
        "| | vitals-worker (candle) | sentence-transformers | vitals / s-t | each round |",
        "|---|---|---|---|---|",
    ]
    def row(what, ours, theirs, fmt):
        """One line: both sides' medians, their ratio, and each round's ratio."""
        each = " ".join(f"{o / t:.2f}x" for o, t in zip(ours, theirs))
        lines.append(
            f"| {what} | {fmt.format(med(ours))} | {fmt.format(med(theirs))} "
            f"| {med(ours) / med(theirs):.2f}x | {each} |"
        )

    for b in sorted(c0["embeddings_per_s"], key=int):
        row(
            f"batch {b}, embeddings/s (higher is better)",
            [c["in_process"]["embeddings_per_s"][b] for c in candle],
            [s["embeddings_per_s"][b] for s in st],
            "{:.1f}",
        )
    if "single_ms" in c0:
        for p in ["p50", "p99"]:
            row(
                f"one sentence, {p} latency (lower is better)",
                [c["in_process"]["single_ms"][p] for c in candle],
                [s["single_ms"][p] for s in st],
                "{:.2f} ms",
            )
    server = f"{OUT}/candle-server.json"
    if os.path.exists(server):
        for s in json.load(open(server)).get("server", []):
            lines.append(
                f"| HTTP, {s['clients']} clients, max batch {s['max_batch_size']} | "
                f"{s['requests_per_s']:.1f} req/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
                f"{s['errors']} errors | | | |"
            )
    table = "\n".join(lines) + "\n"
    open(f"{OUT}/embed.md", "w").write(table)
    print(table)


if __name__ == "__main__":
    main()
