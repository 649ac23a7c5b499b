"""Optimizer groups, learning-rate schedules, gradient clipping and the divergence check, shared by distillation
(student/training/train.py) and task fine-tuning (finetune/fit.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from teacher_cache.base.errors import UserError

DECAYS = ("cosine", "linear", "constant")


def param_groups(params: Iterable[torch.nn.Parameter], weight_decay: float, **extra) -> list[dict]:
    """AdamW groups: weight decay on matrices (dim >= 2) only, none on biases and norms; `extra` (e.g. the group's
    peak_lr) goes into both."""
    params = list(params)
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra}]


def adamw(groups: list[dict], **defaults) -> torch.optim.AdamW:
    """AdamW over these groups, fused into one kernel per step where torch has it for the parameters' device (on a
    CPU ~10x faster a step than the per-tensor loop: a student's 30k-row token table made the step most of the
    fine-tuning time); the same update either way."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **defaults)


def lr_factor(step: int, total: int, warmup: int, decay: str = "cosine", min_ratio: float = 0.0) -> float:
    """The share of the peak learning rate at `step` (0-based) of `total`: a linear warm-up over `warmup` steps,
    then a cosine or linear decay to `min_ratio` at the last step (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    coeff = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[decay]
    return min_ratio + coeff * (1 - min_ratio)


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float, peak_lr: float) -> None:
    """Set every group's rate to its own 'peak_lr' (default `peak_lr`) times `factor`."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group.get("peak_lr", peak_lr) * factor


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale all gradients (sparse ones included) so their joint norm is at most max_norm; return the norm."""
    for p in parameters:
        if p.grad is not None and p.grad.is_sparse:  # duplicate rows must be summed before the norm is taken
            p.grad = p.grad.coalesce()
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = [(g._values() if g.is_sparse else g).norm() for g in grads]
    total = torch.stack(norms).norm() if norms else torch.zeros(())
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return float(total)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every floating-point value of `tensors` is finite: one device sync for all of them."""
    checks = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def diverged(epoch: int, step: int, what: str, rates: list[tuple[str, float]], kept: str) -> UserError:
    """The one-line error of a run whose loss (or weights) stopped being finite: where, what, the learning-rate
    flags to lower (largest first) and what --out holds now."""
    lower = " or ".join(f"{flag} (now {value:g})" for flag, value in sorted(rates, key=lambda r: -r[1]))
    return UserError(f"training diverged at epoch {epoch} step {step} ({what}): lower {lower}; {kept}")
