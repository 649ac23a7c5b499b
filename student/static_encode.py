"""The static student's fast encode path: one EmbeddingBag-style gather over flat ids, no padding, no Python loop.

It computes what StaticEncoder.forward computes on padded batches, proj(sum_t w_t e_t / n), from the id lists
directly (tested equal), so a static student encodes at model2vec's speed.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def flat_ids(id_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Id lists -> (all ids concatenated, start offset of each list, length of each list), int64."""
    lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
    flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.zeros(len(id_lists), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return flat, offsets, lengths


def supports_fast_path(encoder: nn.Module) -> bool:
    """Whether `encoder` is a mean-pooling static encoder (the only kind a bag gather reproduces)."""
    return getattr(encoder, "cfg", None) is not None and encoder.cfg.arch == "static" and encoder.cfg.pooling == "mean"


def static_sentence_vectors(encoder: nn.Module, id_lists: list[list[int]]) -> torch.Tensor:
    """(n, out_dim) sentence vectors of a mean-pooling static encoder for n non-empty id lists."""
    flat, offsets, lengths = flat_ids(id_lists)
    device = encoder.embedding.weight.device
    ids = torch.from_numpy(flat).to(device)
    weights = None if encoder.token_weights is None else encoder.token_weights.weight[ids, 0]
    sums = F.embedding_bag(ids, encoder.embedding.weight, torch.from_numpy(offsets).to(device), mode="sum",
                           per_sample_weights=weights)
    counts = torch.from_numpy(lengths).to(device=device, dtype=sums.dtype).clamp(min=1.0)
    return encoder.proj(sums / counts[:, None])


def folded_static_matrix(encoder: nn.Module) -> np.ndarray:
    """(vocab, out_dim) float32 rows proj(w_t e_t), bias included, computed in float64: the mean of a sentence's
    rows is its vector, so one static matrix (model2vec, sentence-transformers' StaticEmbedding) reproduces it."""
    with torch.no_grad():
        rows = encoder.embedding.weight.detach().double().cpu()
        if encoder.token_weights is not None:
            rows = rows * encoder.token_weights.weight.detach().double().cpu()
        matrix = rows @ encoder.proj.weight.detach().double().cpu().T + encoder.proj.bias.detach().double().cpu()
    return matrix.float().numpy()
