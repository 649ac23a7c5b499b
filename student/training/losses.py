"""Distillation losses: the student's sentence vectors against the teacher's, no labels.

A loss spec is one name or several joined by '+' (e.g. 'cosine+contrastive'), summed with equal weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from student.training.train_config import parse_loss  # the names (LOSSES) live there: checking a config needs no torch


def in_batch_similarity(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of every row with every other row, / temperature, the diagonal masked out."""
    x = F.normalize(x, dim=-1)
    sims = x @ x.T / temperature
    return sims.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), float("-inf"))


def one_loss(pred: torch.Tensor, target: torch.Tensor, name: str, temperature: float) -> torch.Tensor:
    """One named loss.

    mse: the paper's; cosine: 1 - cos(student, teacher); contrastive: in-batch InfoNCE, each teacher vector its
    row's positive; relational: KL from the teacher's in-batch similarity distribution to the student's.
    """
    if name == "mse":
        return F.mse_loss(pred, target)
    if name == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    if name == "contrastive":
        logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
        return F.cross_entropy(logits, torch.arange(len(pred), device=pred.device))
    if len(pred) < 2:
        return pred.sum() * 0.0
    teacher = F.softmax(in_batch_similarity(target, temperature), dim=-1)
    student = F.log_softmax(in_batch_similarity(pred, temperature), dim=-1)
    off_diagonal = ~torch.eye(len(pred), dtype=torch.bool, device=pred.device)
    return (teacher * (teacher.clamp(min=1e-12).log() - student))[off_diagonal].sum() / len(pred)


def loss_fn(pred: torch.Tensor, target: torch.Tensor, spec: str, temperature: float) -> torch.Tensor:
    """The summed losses of `spec` (names joined by '+') for one batch."""
    return sum(one_loss(pred, target, name, temperature) for name in parse_loss(spec))
