"""A stand-in for a PyTorch embedding model, so the examples run with the standard library
alone. `load` is where a real server would call `torch.load` or
`safetensors.torch.load_file`; the reporter calls around it are the part to copy.
"""

import hashlib
import os
import struct
import tempfile


class FakeModel:
    """Deterministic 16-dimensional "embeddings" derived from the weights and the text."""

    dim = 16

    def __init__(self, weights):
        self._seed = hashlib.sha256(weights).digest()

    def embed(self, texts):
        vectors = []
        for text in texts:
            digest = hashlib.sha256(self._seed + text.encode()).digest()
            # 16 signed bytes scaled to [-1, 1): enough to tell texts apart.
            vectors.append([b / 128 for b in struct.unpack("16b", digest[: self.dim])])
        return vectors


def load(reporter, path=None):
    """Reads the weights (reporting bytes read), then builds the layers (reporting each).

    With no `path`, 4 MiB of random bytes stand in for model.safetensors.
    """
    if path is None:
        with tempfile.TemporaryDirectory(prefix="fake-model-") as folder:
            path = os.path.join(folder, "model.safetensors")
            with open(path, "wb") as f:
                f.write(os.urandom(4 << 20))
            return load(reporter, path)
    # With torch: `with reporter.open(path) as f: state = torch.load(f, map_location=device)`.
    with reporter.open(path) as f:
        weights = f.read()
    for _ in reporter.steps(range(6), "building layers", unit="layers"):
        # With torch: move one layer to the device, or load one shard.
        hashlib.sha256(weights[: 1 << 20]).digest()
    return FakeModel(weights)
