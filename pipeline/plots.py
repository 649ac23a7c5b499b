"""PNG plots for probe reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def agreement_histogram(agreement: np.ndarray, k: int, path: Path) -> None:
    """Histogram of per-query kNN@k agreement."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(agreement, bins=np.linspace(0, 1, k + 2) - 0.5 / (k + 1), color="#4c72b0", edgecolor="white")
    ax.set(xlabel=f"kNN@{k} agreement (overlap of the {k} neighbours)", ylabel="queries",
           title=f"Teacher vs student neighbours: mean {agreement.mean():.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def similarity_scatter(teacher_sims: np.ndarray, student_sims: np.ndarray, path: Path) -> None:
    """Teacher vs student cosine for query-neighbour pairs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(teacher_sims, student_sims, s=3, alpha=0.3, color="#dd8452")
    lo = float(min(teacher_sims.min(), student_sims.min()))
    ax.plot([lo, 1], [lo, 1], color="grey", lw=1, ls="--")
    ax.set(xlabel="teacher cosine", ylabel="student cosine", title="Neighbour-pair similarities")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def agreement_by_length(n_tokens: np.ndarray, agreement: np.ndarray, path: Path, bins: int = 8) -> None:
    """Mean agreement per sentence-length bin (word-pieces of the query)."""
    plt = _pyplot()
    edges = np.unique(np.quantile(n_tokens, np.linspace(0, 1, bins + 1)).round())
    which = np.clip(np.searchsorted(edges, n_tokens, side="right") - 1, 0, max(len(edges) - 2, 0))
    centres, means, counts = [], [], []
    for b in range(max(len(edges) - 1, 1)):
        mask = which == b
        if mask.any():
            centres.append(float(n_tokens[mask].mean()))
            means.append(float(agreement[mask].mean()))
            counts.append(int(mask.sum()))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(centres, means, marker="o", color="#55a868")
    for x, y, c in zip(centres, means, counts, strict=True):
        ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set(xlabel="query length (word-pieces)", ylabel="mean agreement", ylim=(0, 1),
           title="Agreement vs sentence length (n per bin annotated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
