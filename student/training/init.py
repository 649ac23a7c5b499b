"""Starting points for a student from what the cache carries: token embeddings, token outputs, SIF, and the whole
words of `tc vocab` (--vocab-words: appended to the vocabulary, their rows started like the tokens' rows)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from student.models import init_from_teacher
from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training.plan import RunPlan
from student.vocab import base_vocab_size, extend_tokenizer_files
from teacher_cache.base.errors import CacheError, UserError
from teacher_cache.base.progress import warn
from teacher_cache.cache_files import read_vocab_words
from teacher_cache.reader import TeacherCache
from teacher_cache.side_teachers import unit_rows


def token_frequencies(id_lists: Iterable[list[int]], vocab_size: int) -> np.ndarray:
    """Relative frequency of each vocabulary id in the given token-id lists (sums to 1)."""
    flat = np.fromiter((i for ids in id_lists for i in ids), dtype=np.int64)
    counts = np.bincount(flat[(flat >= 0) & (flat < vocab_size)], minlength=vocab_size).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def sif_weights(frequencies: np.ndarray, a: float = 1e-3) -> np.ndarray:
    """Smooth inverse frequency (Arora et al. 2017): a / (a + p(token)); 1 for unseen tokens."""
    return (a / (a + frequencies)).astype(np.float32)


def init_from_outputs(encoder: nn.Module, outputs: np.ndarray, weights: np.ndarray | None = None) -> None:
    """Start a static encoder (or a static path) at the teacher's per-token outputs (model2vec's start).

    The outputs are centred; a narrower embedding takes their top principal components and the projection
    starts as the map back (so the initial sentence vector is the mean of the centred token outputs either
    way); the embedding is scaled to unit standard deviation so learning rates mean the same at any width.
    `weights` (SIF) go into the learnt per-token weights when the encoder has them, else into the rows. A CNN
    or BiLSTM with a static path gets its other side's projection zeroed, so it starts as that static student.
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


def init_embeddings(student, cache, how: str, sif: float, n_rows: int,
                    targets: tuple[str, ...] | None = None) -> None:
    """Start `student` as --init-embeddings says: 'teacher' (the cache's input embeddings, PCA-projected),
    'outputs' (its per-token outputs: model2vec's start for a static student or a static path, with SIF
    weights counted on up to 200,000 of the first `n_rows` texts when sif > 0; PCA-projected rows otherwise;
    with `targets`, those of the teachers learnt: target_outputs), or 'random' (left as built)."""
    if how == "teacher":
        init_from_teacher(student.encoder, with_word_rows(cache.token_embeddings(), student, cache, "teacher"))
    elif how == "outputs":
        outputs = cache.token_outputs() if targets is None else target_outputs(cache, targets)
        if outputs is None:
            raise CacheError(f"--init-embeddings outputs: {cache.directory} carries no token outputs; rerun its "
                             "`tc encode` command (it adds them to a complete cache) or use teacher")
        outputs = with_word_rows(outputs, student, cache, "outputs")
        if student.config.arch == "static" or student.config.static_path:
            weights = None
            if sif > 0:
                sample = cache.texts(np.arange(min(n_rows, 200_000)))  # enough rows for stable frequencies
                frequencies = token_frequencies(student.tokenizer.ids(sample), student.config.vocab_size)
                weights = sif_weights(frequencies, sif)
            init_from_outputs(student.encoder, outputs, weights)
        else:
            init_from_teacher(student.encoder, outputs)  # PCA-projected rows, as for the input embeddings


def target_outputs(cache: TeacherCache, targets: tuple[str, ...]) -> np.ndarray | None:
    """Per-token outputs over the main vocabulary matching the targets: one teacher's as stored, or each named
    teacher's with rows L2-normalised, side by side (None when the main teacher's are needed and not cached)."""
    parts = [cache.vocab_outputs(name) for name in targets]
    if any(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    rows = min(p.shape[0] for p in parts)
    return np.concatenate([unit_rows(p[:rows]) for p in parts], axis=1)


# ---- whole words (--vocab-words) -------------------------------------------------------------------------------


def add_vocab_words(plan: RunPlan, cache: TeacherCache, n: int | None) -> RunPlan:
    """--vocab-words N: the plan with the cache's first N whole words (written by `tc vocab`) appended to the
    student's vocabulary (its tokenizer files and vocab_size); the plan as it is for 0 or None."""
    if not n:
        return plan
    found = read_vocab_words(cache.local_files())
    if found is None:
        raise CacheError(f"--vocab-words {n}: {cache.location} carries no whole words; run `tc vocab --shards "
                         f"{cache.location} --words {n}` first")
    words = found[0][:n]
    if len(words) < n and plan.ddp.is_main:
        warn(f"--vocab-words {n}: {cache.location} holds {len(words):,} whole words; using them all")
    try:
        files = extend_tokenizer_files(plan.tokenizer_files, words)
    except UserError as exc:
        raise UserError(f"--vocab-words {n}: {exc}") from None
    vocab = WordPieceTokenizer(files["tokenizer.json"], plan.student.max_length).vocab_size
    return replace(plan, tokenizer_files=files, student=replace(plan.student, vocab_size=vocab))


def student_words(student, cache: TeacherCache) -> tuple[int, list[str], np.ndarray] | None:
    """(base vocabulary size, words, their teacher outputs) of the whole words `student` carries beyond the cache
    tokenizer's ids (its first words of the cache's, checked id by id), or None when it carries none."""
    base = base_vocab_size(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"])
    extra = student.config.vocab_size - base
    if extra <= 0:
        return None
    found = read_vocab_words(cache.local_files())
    words, outputs = found if found is not None else ([], np.zeros((0, cache.dim), dtype=np.float32))
    words, outputs = words[:extra], outputs[:extra]
    ids = [student.tokenizer.tokenizer.token_to_id(word) for word in words]
    if len(words) != extra or ids != list(range(base, base + extra)):
        raise CacheError(f"{cache.location}: the student has {extra:,} ids beyond the teacher's vocabulary, which "
                         "are not the cache's first whole words (vocab_words.txt); rerun `tc vocab` or drop "
                         "--vocab-words")
    return base, words, outputs


def with_word_rows(matrix: np.ndarray, student, cache: TeacherCache, kind: str) -> np.ndarray:
    """The teacher's per-token `matrix` (input embeddings or outputs) with one row per whole word of the student
    appended: the word's own teacher output ('outputs'), or the mean of its pieces' rows ('teacher', as the input
    embeddings hold no whole words); the matrix as it is when the student has no words."""
    found = student_words(student, cache)
    if found is None:
        return matrix
    base, words, outputs = found
    if matrix.shape[0] != base:  # the rows must line up with the ids: word i is row base + i
        raise CacheError(f"--vocab-words: {cache.location}'s token {kind} have {matrix.shape[0]:,} rows for a "
                         f"{base:,}-token vocabulary; whole words need one row per token")
    if kind == "outputs":
        rows = outputs
    else:
        pieces = WordPieceTokenizer(read_tokenizer_files(cache.tokenizer_path)["tokenizer.json"], 10**6,
                                    add_special_tokens=False)
        rows = np.stack([matrix[ids].mean(axis=0) for ids in pieces.ids(words)])
    return np.concatenate([matrix, rows.astype(matrix.dtype)])
