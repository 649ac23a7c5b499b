"""Starting points for a student's weights from what the cache carries: token embeddings, token outputs, SIF."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from student.models import init_from_teacher
from teacher_cache.base.errors import CacheError


def token_frequencies(id_lists: Iterable[list[int]], vocab_size: int) -> np.ndarray:
    """Relative frequency of each vocabulary id in the given token-id lists (sums to 1)."""
    flat = np.fromiter((i for ids in id_lists for i in ids), dtype=np.int64)
    counts = np.bincount(flat[(flat >= 0) & (flat < vocab_size)], minlength=vocab_size).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def sif_weights(frequencies: np.ndarray, a: float = 1e-3) -> np.ndarray:
    """Smooth inverse frequency (Arora et al. 2017): a / (a + p(token)); 1 for unseen tokens."""
    return (a / (a + frequencies)).astype(np.float32)


def init_from_outputs(encoder: nn.Module, outputs: np.ndarray, weights: np.ndarray | None = None) -> None:
    """Start a static encoder (or a CNN's static path) at the teacher's per-token outputs (model2vec's start).

    The outputs are centred; a narrower embedding takes their top principal components and the projection
    starts as the map back (so the initial sentence vector is the mean of the centred token outputs either
    way); the embedding is scaled to unit standard deviation so learning rates mean the same at any width.
    `weights` (SIF) go into the learnt per-token weights when the encoder has them, else into the rows. A CNN
    with a static path gets its convolution side's projection zeroed, so it starts as that static student.
    """
    x = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
    rows = min(encoder.embedding.weight.shape[0], x.shape[0])
    x = x[:rows] - x[:rows].mean(dim=0, keepdim=True)
    static_proj = getattr(encoder, "static_proj", None) or encoder.proj
    emb_dim, out_dim = encoder.embedding.weight.shape[1], static_proj.weight.shape[0]
    basis = torch.linalg.svd(x, full_matrices=False)[2][:emb_dim]  # (k, d): principal directions
    emb = x @ basis.T
    scale = float(emb.std().clamp(min=1e-12))
    proj = torch.zeros(out_dim, emb_dim)
    proj[: basis.shape[1], : basis.shape[0]] = basis.T[:out_dim] * scale
    w = None if weights is None else torch.as_tensor(weights[:rows], dtype=torch.float32)
    has_weights = getattr(encoder, "token_weights", None) is not None
    with torch.no_grad():
        encoder.embedding.weight.normal_(0.0, 0.01)
        encoder.embedding.weight[:rows, : emb.shape[1]] = emb / scale * (w[:, None] if w is not None and
                                                                         not has_weights else 1.0)
        static_proj.weight.copy_(proj)
        static_proj.bias.zero_()
        if static_proj is not encoder.proj:
            encoder.proj.weight.zero_()
            encoder.proj.bias.zero_()
        if has_weights and w is not None:
            encoder.token_weights.weight[:rows, 0] = w


def init_embeddings(student, cache, how: str, sif: float, n_rows: int) -> None:
    """Start `student` as --init-embeddings says: 'teacher' (the cache's input embeddings, PCA-projected),
    'outputs' (its per-token outputs: model2vec's start for a static student or a CNN's static path, with SIF
    weights counted on up to 200,000 of the first `n_rows` texts when sif > 0; PCA-projected rows otherwise),
    or 'random' (left as built)."""
    if how == "teacher":
        init_from_teacher(student.encoder, cache.token_embeddings())
    elif how == "outputs":
        outputs = cache.token_outputs()
        if outputs is None:
            raise CacheError(f"--init-embeddings outputs: {cache.directory} carries no token outputs; rerun its "
                             "`tc encode` command (it adds them to a complete cache) or use teacher")
        if student.config.arch == "static" or student.config.static_path:
            weights = None
            if sif > 0:
                sample = cache.texts(np.arange(min(n_rows, 200_000)))  # enough rows for stable frequencies
                frequencies = token_frequencies(student.tokenizer.ids(sample), student.config.vocab_size)
                weights = sif_weights(frequencies, sif)
            init_from_outputs(student.encoder, outputs, weights)
        else:
            init_from_teacher(student.encoder, outputs)  # PCA-projected rows, as for the input embeddings
