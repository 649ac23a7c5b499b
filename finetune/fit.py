"""The fine-tuning loop shared by students and task teachers, nanoGPT style: shuffled batches, AdamW with warm-up
and linear decay, dev metrics into metrics.json after every epoch.

loss = (1 - kd_alpha) * CE(labels) + kd_alpha * MSE(student logits, teacher logits); for a regression task
(STS-B) CE is MSE on the score.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from finetune.config import FinetuneConfig
from finetune.metrics import compute_metrics
from finetune.prepare import Prepared
from finetune.task_data import TaskData
from finetune.task_model import HEAD_NAME, TASK_JSON
from student.checkpoint import clear_output, not_empty, refuse_unsafe_out
from student.optim import clip_gradients, lr_factor, param_groups
from student.tokenizer import TOKENIZER_FILES
from teacher_cache.atomic import atomic_write
from teacher_cache.progress import log

# What a fine-tuning run writes into --out (student or transformers teacher); --force replaces these only.
OWN_FILES = (TASK_JSON, HEAD_NAME, "metrics.json", "config.json", "model.safetensors", "generation_config.json",
             *TOKENIZER_FILES)


def check_out(out: str | Path, model: str | Path, force: bool) -> None:
    """Refuse an --out that is (or overlaps) the model folder, is a file, or holds other things without --force."""
    present = refuse_unsafe_out(Path(out), Path(model), "--model")
    if present and not force:
        raise not_empty(Path(out), present)


def clear_out(out: str | Path) -> None:
    """Create --out, removing what an earlier fine-tuning run wrote there (its own files only)."""
    clear_output(out, OWN_FILES)
    Path(out).mkdir(parents=True, exist_ok=True)


def task_loss(outputs: torch.Tensor, gold: torch.Tensor, teacher: torch.Tensor | None, alpha: float,
              regression: bool) -> torch.Tensor:
    """Per example (1 - alpha) * CE (MSE on the score for regression) + alpha * MSE to the teacher's logits,
    averaged; an unlabelled example (label -1, or NaN score) takes the MSE to the teacher alone."""
    if teacher is None or alpha == 0:
        return F.mse_loss(outputs[:, 0], gold.float()) if regression else F.cross_entropy(outputs, gold)
    labelled = ~torch.isnan(gold) if regression else gold >= 0
    if regression:
        hard = (outputs[:, 0] - torch.nan_to_num(gold.float())) ** 2
    else:
        hard = F.cross_entropy(outputs, gold.clamp(min=0), reduction="none")
    soft = ((outputs - teacher.to(outputs.dtype)) ** 2).mean(1)
    return torch.where(labelled, (1 - alpha) * hard + alpha * soft, soft).mean()


def fit(cfg: FinetuneConfig, prep: Prepared, module: torch.nn.Module, forward: Callable[[np.ndarray], torch.Tensor],
        predict: Callable[[TaskData], np.ndarray], info: dict) -> dict:
    """The loop: shuffled batches, AdamW with warm-up and linear decay, dev metrics into metrics.json per epoch."""
    spec, train, lr = prep.spec, prep.train, cfg.lr
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(params, cfg.weight_decay), lr=lr)
    steps = math.ceil(len(train) / cfg.batch_size)
    total, warmup = steps * cfg.epochs, int(cfg.warmup * steps * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, "linear"))
    gold_all = torch.as_tensor(train.labels)
    kd_all = None if prep.kd_targets is None else torch.as_tensor(np.asarray(prep.kd_targets, dtype=np.float32))
    rng = np.random.default_rng(cfg.seed)
    metrics = {**info, "task": spec.name, "metric": spec.metrics[0], "train_rows": len(train) - prep.transfer_rows,
               "transfer_rows": prep.transfer_rows,
               "eval_rows": {k: len(v) for k, v in prep.evals.items()},
               "kd": {"cache": cfg.kd_cache, "alpha": cfg.kd_alpha} if cfg.kd_cache else None, "history": []}
    seconds = 0.0
    for epoch in range(cfg.epochs):
        module.train()
        started, losses = time.monotonic(), []
        order = rng.permutation(len(train))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            outputs = forward(idx).float()
            teacher = None if kd_all is None else kd_all[idx].to(outputs.device)
            loss = task_loss(outputs, gold_all[idx].to(outputs.device), teacher, cfg.kd_alpha, spec.regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                clip_gradients(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        seconds += time.monotonic() - started
        scores = {split: compute_metrics(spec, predict(data), data.labels) for split, data in prep.evals.items()}
        metrics["history"].append({"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 6), **scores})
        metrics |= {"final": scores, "epochs_done": epoch + 1, "train_seconds": round(seconds, 2)}
        atomic_write(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.4f}  " + "  ".join(
            f"{split} {k} {v:.4f}" for split, s in scores.items() for k, v in s.items()), cfg.quiet)
    return metrics
