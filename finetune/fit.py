"""The fine-tuning loop shared by students and task teachers, nanoGPT style: shuffled batches, AdamW with warm-up
and linear decay, metrics into metrics.json after every epoch, the best epoch kept with --select.

loss = (1 - kd_alpha) * CE(labels) + kd_alpha * MSE(student logits, teacher logits); for a regression task
(STS-B) CE is MSE on the score, or CoSENT on the cosine with a cosine head.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from finetune.config import FinetuneConfig
from finetune.metrics import compute_metrics
from finetune.prepare import Prepared
from finetune.task_data import TaskData
from finetune.task_model import HEAD_NAME, TASK_JSON
from student.tokenizer import TOKENIZER_FILES
from student.training.checkpoint import CHECKPOINT_DIR, OUTPUT_DIRS
from student.training.optim import adamw, all_finite, clip_gradients, diverged, lr_factor, param_groups
from teacher_cache.base.atomic import atomic_write
from teacher_cache.base.out_folder import OutFolder
from teacher_cache.base.progress import log

# What a fine-tuning run writes into --out (student or transformers teacher); --force replaces these only.
OWN_FILES = (TASK_JSON, HEAD_NAME, "metrics.json", "config.json", "model.safetensors", "generation_config.json",
             *TOKENIZER_FILES)
# The folders --force removes too: a static student's sentence-transformers module, and (as the training run's
# rules always did here) a training checkpoint/.
OWN_DIRS = (CHECKPOINT_DIR, *OUTPUT_DIRS)


def finetune_out(out: str | Path, model: str | Path | None = None) -> OutFolder:
    """The --out of a fine-tuning run: its own files, its input the --model folder."""
    return OutFolder(out, "tc finetune", own=OWN_FILES, own_dirs=OWN_DIRS,
                     inputs={} if model is None else {"--model": Path(model)})


def check_out(out: str | Path, model: str | Path, force: bool) -> None:
    """Refuse an --out that is (or overlaps) the model folder, is a file, or holds other things without --force."""
    finetune_out(out, model).check(force)


def holding_out(run: Callable[..., dict]) -> Callable[..., dict]:
    """Run a fine-tuning function `run(cfg, ...)` with cfg.out locked: a second run into the same folder is refused
    in one line naming the first, instead of both writing there at once."""

    @functools.wraps(run)
    def locked(cfg: FinetuneConfig, *args, **kwargs) -> dict:
        with finetune_out(cfg.out, cfg.model).hold():
            return run(cfg, *args, **kwargs)

    return locked


def clear_out(out: str | Path) -> None:
    """Create --out, removing what an earlier fine-tuning run wrote there (its own files only)."""
    finetune_out(out).clear_own()
    Path(out).mkdir(parents=True, exist_ok=True)


class OutWrites:
    """The writes of one fine-tuning run into --out: the first one clears what an earlier run wrote there (--force),
    so a run that diverges or is killed before it writes anything leaves the earlier model whole."""

    def __init__(self, out: str | Path):
        """Prepare to write into `out` (checked and locked by the caller)."""
        self.out, self.cleared = Path(out), False

    def clear(self) -> None:
        """Remove the earlier run's own files, once, just before the first write (a no-op without --force: the
        folder was refused unless it held none)."""
        if not self.cleared:
            clear_out(self.out)
            self.cleared = True

    def metrics(self, metrics: dict) -> None:
        """Write metrics.json (atomically), clearing the earlier run's files first if nothing was written yet."""
        self.clear()
        atomic_write(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def cosent_loss(scores: torch.Tensor, gold: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022; sentence-transformers' CoSENTLoss): log(1 + sum over pairs of examples with gold_i < gold_j
    of exp(scale * (score_i - score_j))), so only the order of the scores against the gold order counts."""
    diff = scale * (scores[:, None] - scores[None, :])
    diff = diff - (~(gold[:, None] < gold[None, :])).to(diff.dtype) * 1e12
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.reshape(-1)]), dim=0)


def task_loss(outputs: torch.Tensor, gold: torch.Tensor, teacher: torch.Tensor | None, alpha: float,
              regression: bool, cosent: bool = False, span: float = 1.0) -> torch.Tensor:
    """Per example (1 - alpha) * CE (MSE on the score for regression) + alpha * MSE to the teacher's logits,
    averaged; an unlabelled example (label -1, or NaN score) takes the MSE to the teacher alone.

    `span` divides scores first (a cosine head's range, so that its MSE is on the cosine's scale); `cosent` replaces
    the per-example regression MSE by the batch's CoSENT ranking loss over its labelled examples.
    """
    alpha = 0.0 if teacher is None else alpha
    labelled = (~torch.isnan(gold)) if regression else gold >= 0
    if regression:
        scores, gold = outputs[:, 0] / span, torch.nan_to_num(gold.float()) / span
        hard = torch.zeros_like(scores) if cosent else (scores - gold) ** 2
    else:
        hard = F.cross_entropy(outputs, gold.clamp(min=0), reduction="none")
    if teacher is None or alpha == 0:
        per_example = torch.where(labelled, hard, torch.zeros_like(hard))
    else:
        soft = (((outputs - teacher.to(outputs.dtype)) / span) ** 2).mean(1)
        per_example = torch.where(labelled, (1 - alpha) * hard + alpha * soft, soft)
    loss = per_example.mean()
    if regression and cosent and alpha < 1 and int(labelled.sum()) > 1:
        loss = loss + (1 - alpha) * cosent_loss(scores[labelled], gold[labelled])
    return loss


@dataclass
class Tuned:
    """What fit() trains: the module, how it scores training rows and predicts a split, and what it reports."""

    module: torch.nn.Module
    forward: Callable[[np.ndarray], torch.Tensor]  # training row indices -> outputs (logits or scores)
    predict: Callable[[TaskData], np.ndarray]  # a split -> its predictions
    info: dict  # what metrics.json says about the model
    cosine_head: bool = False  # scores are cosines: zero-shot epoch 0, CoSENT with --similarity-loss cosent
    span: float = 1.0  # the head's score range (scores are divided by it)
    lr_groups: list[tuple[list[torch.nn.Parameter], float]] | None = None  # own peak rates (default: all at lr)
    blend: list[torch.nn.Parameter] | None = None  # WiSE-FT these (with a selection split), a in BLEND_WEIGHTS
    select_metric: str | None = None  # what picks the kept epoch and blend (default: the task's first metric)


Best = tuple[float, int, dict]  # (score, epoch, weights) of the best epoch so far


def keep_best(best: Best | None, score: float, epoch: int, module: torch.nn.Module) -> Best | None:
    """`best`, or this epoch (with a copy of its weights) when it scores higher: the first of equals is kept."""
    if best is not None and not score > best[0]:  # (a NaN score never displaces a kept epoch)
        return best
    return score, epoch, {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(cfg: FinetuneConfig, prep: Prepared, tuned: Tuned) -> dict:
    """The loop: shuffled batches, AdamW with warm-up and linear decay, metrics of every evaluation split into
    metrics.json per epoch (and before the first with a cosine head: the encoder's zero-shot score); with
    --select dev|holdout the best epoch's weights (by tuned.select_metric, default the task's first metric, on that
    split) are restored; with a cosine head that may be epoch 0, the zero-shot encoder (metrics["zero_shot_kept"])."""
    module, forward, predict, info = tuned.module, tuned.forward, tuned.predict, tuned.info
    cosine_head, span, lr_groups, blend = tuned.cosine_head, tuned.span, tuned.lr_groups, tuned.blend
    spec, train = prep.spec, prep.train
    params = [p for p in module.parameters() if p.requires_grad]
    by_lr = lr_groups or [(params, cfg.lr)]
    groups = [g for ps, lr in by_lr for g in param_groups([p for p in ps if p.requires_grad], cfg.weight_decay, lr=lr)]
    optimizer = adamw([g for g in groups if g["params"]])
    steps = math.ceil(len(train) / cfg.batch_size)
    total, warmup = steps * cfg.epochs, int(cfg.warmup * steps * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, "linear"))
    gold_all = torch.as_tensor(train.labels)
    kd_all = None if prep.kd_targets is None else torch.as_tensor(np.asarray(prep.kd_targets, dtype=np.float32))
    rng = np.random.default_rng(cfg.seed)
    by = None if cfg.select == "last" else cfg.select  # the split that picks the kept epoch (None: the last)
    chooser = tuned.select_metric or spec.metrics[0]
    cosent = cosine_head and spec.regression and cfg.similarity_loss == "cosent"
    metrics = {**info, "task": spec.name, "metric": spec.metrics[0], "train_rows": len(train) - prep.transfer_rows,
               "transfer_rows": prep.transfer_rows, "eval_rows": {k: len(v) for k, v in prep.evals.items()},
               "select": cfg.select, "selected_by": chooser if by else None,
               "loss": ("cosent" if cosent else "mse on the cosine") if cosine_head else None,
               "kd": {"cache": cfg.kd_cache, "alpha": cfg.kd_alpha} if cfg.kd_cache else None, "history": []}
    best: Best | None = None
    writes = OutWrites(cfg.out)  # nothing of an earlier run is removed before this run writes its first file
    rates = [("--lr", cfg.lr)] + ([("--encoder-lr", cfg.encoder_lr)] if lr_groups and cfg.encoder_lr else [])

    def stop_diverged(epoch: int, step: int, what: str) -> None:
        """Stop in one line before anything more is written: the loss, weights or outputs are no longer finite."""
        earlier = ("; --force removed nothing: the earlier run's files there are kept"
                   if cfg.force and not writes.cleared else "")
        raise diverged(epoch, step, what, rates, f"no model was saved in {cfg.out}{earlier}")

    def evaluate(epoch: int, losses: list[float]) -> None:
        """Score every split, record the epoch, keep its weights when it is the best on the selection split."""
        nonlocal best
        predicted = {split: predict(data) for split, data in prep.evals.items()}
        if epoch and not all(np.isfinite(p).all() for p in predicted.values()):  # finite but absurd weights
            stop_diverged(epoch, epoch * steps, "outputs not finite")
        scores = {split: compute_metrics(spec, predicted[split], data.labels) for split, data in prep.evals.items()}
        loss = {"train_loss": round(float(np.mean(losses)), 6)} if losses else {}
        metrics["history"].append({"epoch": epoch, **loss, **scores})
        if by is not None:
            best = keep_best(best, scores[by][chooser], epoch, module)
        chosen = epoch if best is None else best[1]
        kept = next(h for h in metrics["history"] if h["epoch"] == chosen)
        metrics.update(final={split: kept[split] for split in prep.evals}, selected_epoch=chosen, epochs_done=epoch,
                       train_seconds=round(seconds, 2))
        writes.metrics(metrics)  # the first write: --force clears the earlier run's files only now
        log(f"epoch {epoch}/{cfg.epochs}: " + (f"loss {np.mean(losses):.4f}  " if losses else "(zero-shot)  ")
            + "  ".join(f"{split} {k} {v:.4f}" for split, s in scores.items() for k, v in s.items()))

    initial = [p.detach().clone() for p in blend or []]  # the encoder as it came, for --interpolate
    seconds = 0.0
    if cosine_head:  # the untouched encoder's cosine is already a prediction: its zero-shot score
        evaluate(0, [])
    for epoch in range(cfg.epochs):
        module.train()
        started, losses = time.monotonic(), []
        order = rng.permutation(len(train))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            outputs = forward(idx).float()
            teacher = None if kd_all is None else kd_all[idx].to(outputs.device)
            loss = task_loss(outputs, gold_all[idx].to(outputs.device), teacher, cfg.kd_alpha, spec.regression,
                             cosent, span)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                clip_gradients(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):  # read every step anyway: stop before this epoch's metrics or model
                stop_diverged(epoch + 1, epoch * steps + start // cfg.batch_size + 1, f"loss {losses[-1]:g}")
        seconds += time.monotonic() - started
        if not all_finite(module.state_dict().values()):  # the last step's update (one sync an epoch)
            stop_diverged(epoch + 1, (epoch + 1) * steps, "weights not finite")
        evaluate(epoch + 1, losses)
    if best is not None and best[1] != cfg.epochs:
        module.load_state_dict(best[2])
        if best[1]:  # (epoch 0 has its own line below)
            log(f"kept epoch {best[1]} (best {by} {chooser} {best[0]:.4f})")
    if best is not None and best[1] == 0:  # nothing beat the untouched encoder: it is what is saved
        trained = max((h for h in metrics["history"] if h["epoch"]), key=lambda h: h[by][chooser], default=None)
        rows = "held-out rows" if by == "holdout" else f"{by} rows"
        against = f" vs {trained[by][chooser]:.4f}, epoch {trained['epoch']}" if trained else ""
        metrics["zero_shot_kept"] = {"split": by, "metric": chooser, "zero_shot": best[0],
                                     "best_epoch": trained and trained["epoch"],
                                     "best_epoch_score": trained and trained[by][chooser],
                                     "note": f"kept the zero-shot encoder: no epoch beat it on the {rows} "
                                             f"({chooser.capitalize()} {best[0]:.4f}{against})"}
        writes.metrics(metrics)
    elif blend and best is not None:
        interpolate(blend, initial, lambda data: compute_metrics(spec, predict(data), data.labels), prep.evals, by,
                    chooser, metrics, cfg)
    return metrics


BLEND_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)  # a = 1 first: a tie keeps the fine-tuned weights


def interpolate(params: list[torch.nn.Parameter], start: list[torch.Tensor], score: Callable[[TaskData], dict],
                evals: dict[str, TaskData], by: str, metric: str, metrics: dict, cfg: FinetuneConfig) -> None:
    """WiSE-FT: set `params` to the (1 - a) * start + a * now that scores best on the `by` split; metrics.json gets
    every blend's scores on every split, and the chosen one's as `final` (a = 1 is the kept epoch, already scored
    there)."""
    tuned = [p.detach().clone() for p in params]

    def set_weights(a: float) -> None:
        with torch.no_grad():
            for p, w0, w1 in zip(params, start, tuned, strict=True):
                p.copy_(w1 if a == 1.0 else torch.lerp(w0, w1, a))

    scores = {1.0: metrics["final"]}  # a -> every split's scores with that blend
    for a in BLEND_WEIGHTS[1:]:
        set_weights(a)
        scores[a] = {split: score(data) for split, data in evals.items()}
    alpha = max(scores, key=lambda a: scores[a][by][metric])  # max keeps the first of equals: a = 1
    set_weights(alpha)
    metrics["interpolation"] = {"alpha": alpha, "chosen_on": by, "scores": {str(a): s for a, s in scores.items()}}
    metrics["final"] = scores[alpha]
    atomic_write(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log(f"interpolated: a = {alpha} ({by} {metric} {scores[alpha][by][metric]:.4f}; fine-tuned alone "
        f"{scores[1.0][by][metric]:.4f})")
