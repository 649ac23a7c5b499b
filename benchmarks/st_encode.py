"""The peer, as a user runs it: SentenceTransformer(...).encode(sentences, batch_size=64), vectors saved to .npy."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

if __name__ == "__main__":
    corpus, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
    sentences = [line.strip() for line in open(corpus, encoding="utf-8") if line.strip()]
    vectors = SentenceTransformer(model, device="cpu").encode(sentences, batch_size=64)
    np.save(out, vectors)
