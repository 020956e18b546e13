#!/usr/bin/env python3
"""Writes model-worker/tests/data/reference.json: sentence-transformers embeddings
(PyTorch, CPU, float32) of varied texts, made from the same model folder the worker
loads. The worker's accuracy test compares its own embeddings against this file.

Usage: .venv-bench/bin/python scripts/make-reference.py [MODEL_DIR] [OUT]
See docs/accuracy.md for how to set up the environment.
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
OUT = sys.argv[2] if len(sys.argv) > 2 else "model-worker/tests/data/reference.json"

LONG_PROSE = " ".join(
    f"Sentence number {i} talks about vital signs, probes, and the pods that serve models."
    for i in range(60)
)  # ~900 tokens: far past the 256-token truncation
LONG_WORDS = "antidisestablishmentarianism " * 120  # word pieces: long after tokenisation

TEXTS = [
    "",
    " ",
    "\t\n  \n",
    "a",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Kubernetes restarts containers whose liveness probe fails.",
    "A readiness probe decides whether a pod receives traffic.",
    "How do I bake sourdough bread at home without a dutch oven?",
    "I love this!!! 😍🔥🎉",
    "👍",
    "🚀🚀🚀 launch day 🚀🚀🚀",
    "Zürich, München und Köln sind Städte in Europa.",
    "Ça coûte très cher, n'est-ce pas ?",
    "¿Dónde está la biblioteca?",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "서울은 대한민국의 수도입니다.",
    "القاهرة هي عاصمة مصر",
    "Ελληνικά γράμματα: α β γ δ",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '1 day';",
    "def f(x):\n    return [i * i for i in range(x) if i % 2 == 0]",
    '{"input": ["a", "b"], "model": "all-MiniLM-L6-v2"}',
    "https://example.com/path?query=value&other=1#fragment",
    "e = mc^2, ∑_{i=1}^{n} i = n(n+1)/2, π ≈ 3.14159",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "tabs\tand\nnewlines\r\nmixed",
    "The model was trained on more than one billion sentence pairs.",
    "Short.",
    "word " * 250,  # exactly at the edge of the limit after [CLS]/[SEP]
    LONG_PROSE,
    LONG_WORDS,
    "Ünïcödé wïth cömbïnïng mårks: e\u0301 a\u0300 o\u0302",
    "zero\u200bwidth\u200bspaces and \u00a0non-breaking\u00a0spaces",
]


def main() -> None:
    torch.set_num_threads(1)
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    # One text at a time, so the reference does not depend on batch padding.
    embeddings = [
        model.encode([t], convert_to_numpy=True, normalize_embeddings=False)[0] for t in TEXTS
    ]
    tokens = [len(model.tokenize([t])["input_ids"][0]) for t in TEXTS]
    out = {
        "model_dir": MODEL_DIR,
        "generator": (
            f"sentence-transformers {sentence_transformers.__version__}, "
            f"torch {torch.__version__}, CPU, float32"
        ),
        "dimension": int(embeddings[0].shape[0]),
        "items": [
            {
                "text": t,
                "tokens": n,
                "embedding": [float(f"{x:.7g}") for x in e.tolist()],
            }
            for t, n, e in zip(TEXTS, tokens, embeddings)
        ],
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(TEXTS)} reference embeddings to {OUT}")


if __name__ == "__main__":
    main()
