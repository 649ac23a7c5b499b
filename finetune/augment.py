"""Tang et al. (2019) data augmentation for task-specific distillation: masking and n-gram sampling.

The augmented examples carry no labels; the task teacher labels them once (their logits go into the same logits
cache, after the training rows), and the student learns them by the distillation loss alone. Tang et al.'s third
rule, POS-guided word swapping, needs a part-of-speech tagger and is not done here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASK = "[MASK]"


@dataclass(frozen=True)
class AugmentConfig:
    """How many synthetic examples per training example, and the per-word / per-example probabilities."""

    copies: int = 0  # synthetic examples per training example (Tang et al.: n_iter = 20)
    p_mask: float = 0.1  # each word replaced by [MASK] with this probability
    p_ngram: float = 0.25  # with this probability an example is cut to a random n-gram, n in 1..max_ngram
    max_ngram: int = 5
    seed: int = 0


def augment_text(text: str, cfg: AugmentConfig, rng: np.random.Generator) -> str:
    """One synthetic variant of a sentence: a random n-gram of it (sometimes), then words masked at random."""
    words = text.split()
    if not words:
        return text
    if rng.random() < cfg.p_ngram:
        n = int(rng.integers(1, cfg.max_ngram + 1))
        if n < len(words):
            start = int(rng.integers(0, len(words) - n + 1))
            words = words[start:start + n]
    masked = rng.random(len(words)) < cfg.p_mask
    return " ".join(MASK if m else w for w, m in zip(words, masked, strict=True))


def augment_examples(texts: list[str], pairs: list[str] | None, cfg: AugmentConfig,
                     ) -> tuple[list[str], list[str] | None]:
    """`cfg.copies` synthetic variants of every example, example by example; both sides of a pair are varied.

    Deterministic for a seed; a variant equal to its original is kept (its logits are still a useful target).
    """
    rng = np.random.default_rng([cfg.seed, 0xA06])
    out_texts: list[str] = []
    out_pairs: list[str] | None = None if pairs is None else []
    for i, text in enumerate(texts):
        for _ in range(cfg.copies):
            out_texts.append(augment_text(text, cfg, rng))
            if out_pairs is not None:
                out_pairs.append(augment_text(pairs[i], cfg, rng))
    return out_texts, out_pairs
