#!/usr/bin/env python3
"""Buckets `perf report --no-children --sort sym` lines (stdin) into the worker's operations.

Each sampled function goes in the first bucket whose pattern its (demangled) name matches.
Candle's element-wise kernels are generic, so bucketing is by the op type in the name:
the GELU is `GeluErf`/`erf`, softmax and layer norm are candle-nn custom ops, the pooling's
sum is the only `ReduceSum` the model runs (softmax and layer norm reduce inside their own
kernels), and the remaining binary/unary maps are bias adds, residuals, the attention mask
and scaling. Prints a Markdown table, largest first. Standard library only.
"""

import re
import sys

BUCKETS = [
    ("matmul", r"gemm|MatMul|mkl_blas|sgemm|omp_parallel_acopy|gblock_by_k"),
    ("softmax (exp)", r"[Ss]oftmax|expf|sExp"),
    ("layer norm", r"LayerNorm|layer_norm"),
    ("GELU (exact erf)", r"GeluErf|gelu|\berf|erf_f32|erff|erfc"),
    ("tokenization", r"tokenizers::|fancy_regex|onig|unicode_normali|unicode_segment|aho_corasick|regex|TextTokenizer"),
    ("pooling (masked sum)", r"ReduceSum|ReduceIndex|reduce_sum|Reduce"),
    ("layout copies (transposes, contiguous)", r"copy_strided|copy2d|Copy|memcpy|memmove|__memcpy|__memmove|index_select|IndexSelect|Where|where_cond"),
    # candle runs element-wise kernels as closures on its barrier pool: which op a chunk
    # belongs to is inlined away, so they share one bucket (MKL's VML ones too).
    ("other element-wise (bias, residual, mask, scale)", r"binary_map|unary_map|Affine|affine|Binary|Unary|Cmp|cmp|broadcast|to_dtype|ToDType|cast|execute_chunked|mkl_vml|_vml"),
    # The caller waiting for the barrier pool's workers (BarrierGuard::drop spins), rayon
    # and OpenMP waits: time the CPU spent on hand-offs, not on the model.
    ("thread hand-offs (barrier spin, rayon, OpenMP)", r"BarrierGuard|BarrierPool|rayon|crossbeam|sched_yield|futex|std::thread|__kmp|kmp_|omp_|barrier|park|pthread"),
    ("allocation", r"malloc|free|alloc|realloc|calloc|_int_|mmap|munmap|memset|page_fault|clear_page|zero"),
]


def main():
    totals = {name: 0.0 for name, _ in BUCKETS}
    totals["kernel (other)"] = 0.0
    totals["other"] = 0.0
    top_other = []
    for line in sys.stdin:
        m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        pct, space, sym = float(m.group(1)), m.group(2), m.group(3)
        for name, pattern in BUCKETS:
            if re.search(pattern, sym):
                totals[name] += pct
                break
        else:
            if space == "k":
                totals["kernel (other)"] += pct
            else:
                totals["other"] += pct
                top_other.append((pct, sym))
    print("| operation | share of CPU samples |")
    print("|---|---|")
    for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {pct:.1f} % |")
    top_other.sort(reverse=True)
    if top_other:
        print()
        print("largest unbucketed: " + "; ".join(f"{p:.1f} % {s[:80]}" for p, s in top_other[:5]))


if __name__ == "__main__":
    main()
