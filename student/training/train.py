"""Train a student on a teacher cache: one readable loop (nanoGPT style), every knob in training/train_config.py.

The teacher is never loaded: targets stream from the cache's shards. Checkpoints are atomic and carry the
data position (epoch, batches done), so `resume=True` replays the same batches an uninterrupted run would see.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, replace
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from student.config import StudentConfig
from student.student import Student
from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training import distributed
from student.training.card import write_run_files
from student.training.checkpoint import (
    check_output,
    clear_output,
    hold_output,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from student.training.data import Batch, StreamingCacheDataset, read_rows, validation_ids
from student.training.evaluate import evaluate
from student.training.init import init_embeddings
from student.training.losses import loss_fn
from student.training.optim import adamw, all_finite, clip_gradients, diverged, lr_factor, param_groups, set_lr
from student.training.runtime import autocast_dtype, deferred_interrupt, resolve_device
from student.training.train_config import RUN_ONLY, TrainConfig
from teacher_cache.base.errors import CacheError, Terminated, UserError
from teacher_cache.base.progress import Progress, log
from teacher_cache.reader import cache_change, open_cache


def make_optimizers(student: Student, cfg: TrainConfig, sparse: bool) -> list[torch.optim.Optimizer]:
    """AdamW for the dense weights (decay on matrices); the token tables (SparseAdam when sparse) at emb_lr.

    Every group remembers its peak rate as 'peak_lr'; the schedule scales it.
    """
    tables = [m.weight for m in student.encoder.modules() if isinstance(m, torch.nn.Embedding)]
    others = [p for p in student.parameters() if all(p is not t for t in tables)]
    emb_lr = cfg.emb_lr or cfg.lr
    groups = param_groups(others, cfg.weight_decay, peak_lr=cfg.lr)
    if sparse:
        return [adamw(groups, lr=cfg.lr), torch.optim.SparseAdam(tables, lr=emb_lr)]
    return [adamw(groups + [{"params": tables, "weight_decay": 0.0, "peak_lr": emb_lr}], lr=cfg.lr)]


def train_step(model: torch.nn.Module, batch: Batch, optimizers: list, scaler, cfg: TrainConfig,
               amp: torch.dtype | None) -> torch.Tensor:
    """Forward, loss, backward, clip, optimizer steps on one batch; returns the (detached) loss.

    `model` is the Student, or the Student in DistributedDataParallel (which averages the gradients in backward).
    """
    device = next(model.parameters()).device
    ids, lengths = batch.input_ids.to(device, non_blocking=True), batch.lengths.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        pred = model(ids, lengths)
    loss = loss_fn(pred.float(), targets, cfg.loss, cfg.temperature)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        for opt in optimizers:
            scaler.unscale_(opt)
    if cfg.grad_clip > 0:
        clip_gradients(list(model.parameters()), cfg.grad_clip)
    for opt in optimizers:
        scaler.step(opt) if scaler else opt.step()
    if scaler:
        scaler.update()
    return loss.detach()


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a student as `cfg` says; return the metrics. Writes the student folder when done."""
    with hold_output(cfg.out, cfg.shards):  # one writer per --out: a second run is refused, naming this one
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict:
    # ---- check everything before writing anything --------------------------------------------------------------
    cfg.validate()
    ddp = distributed.setup(resolve_device(cfg.device))  # several processes only when launched by torchrun
    device = ddp.device
    if not ddp.is_main:
        cfg = replace(cfg, quiet=True)  # rank 0 alone logs, evaluates and writes
    if ddp.enabled and device.type == "cuda" and cfg.sparse_embeddings == "yes":
        raise UserError("--sparse-embeddings yes: NCCL cannot all-reduce sparse gradients; use auto or no on CUDA")
    amp = autocast_dtype(device, cfg.precision)
    cache = open_cache(cfg.shards)  # refused while a writer holds it
    cache.check()  # every shard (checksum, ids, vector widths) before --force clears anything
    column = cache.vector_column(cfg.target_column)
    n_rows = len(cache) if cfg.max_rows is None else min(cfg.max_rows, len(cache))
    val_rows = min(2000, n_rows // 10) if cfg.val_rows is None else cfg.val_rows
    if val_rows >= n_rows:
        raise UserError(f"--val-rows {val_rows}: leaves no training rows (using {n_rows:,} rows of the cache)")
    tokenizer_files = read_tokenizer_files(cache.tokenizer_path)
    max_length = cfg.max_length or cache.manifest.max_length
    vocab = WordPieceTokenizer(tokenizer_files["tokenizer.json"], max_length).vocab_size
    m = cache.manifest
    scfg = StudentConfig(arch=cfg.arch, vocab_size=vocab, emb_dim=cfg.emb_dim, hidden=cfg.hidden, layers=cfg.layers,
                         pooling=cfg.pooling, out_dim=cache.dim, max_length=max_length, dropout=cfg.dropout,
                         token_weights=cfg.token_weights, static_path=cfg.static_path,
                         **({"kernel_sizes": list(cfg.kernel_sizes)} if cfg.kernel_sizes else {}),
                         teacher={"name": m.teacher, "hash": m.teacher_hash, "column": column,
                                  "pooling": m.columns.get(column), "normalized": m.normalize})
    cache_info = {"path": str(cfg.shards), "teacher": m.teacher, "teacher_hash": m.teacher_hash, "dim": m.dim,
                  "corpus_fingerprint": m.corpus_fingerprint, "rows": len(cache),
                  "fingerprint": m.content_fingerprint(), "target_pooling": m.columns.get(column)}
    resolved = {"target_column": column, "val_rows": val_rows, "max_length": max_length, "emb_dim": scfg.emb_dim,
                "hidden": scfg.hidden, "pooling": scfg.pooling}
    args = {**asdict(cfg), **resolved}
    settings = {k: v for k, v in args.items() if k not in RUN_ONLY} | {
        "cache": {k: cache_info[k] for k in ("teacher_hash", "corpus_fingerprint", "rows", "fingerprint")}}
    check_output(cfg.out, cfg.shards, cfg.resume, cfg.force)
    state = load_checkpoint(cfg.out, settings) if cfg.resume else None
    distributed.check_world_size(state, ddp, cfg.out)

    # ---- the student, its optimizers, the data ------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    student = Student(scfg, tokenizer_files)
    if state is None:
        init_embeddings(student, cache, cfg.init_embeddings, cfg.sif, n_rows)
    sparse = state["sparse"] if state else cfg.sparse_embeddings == "yes" or (
        cfg.sparse_embeddings == "auto" and device.type == "cpu")
    student.set_sparse(sparse)
    student.to(device).train()
    model = distributed.wrap(student, ddp)  # sparse embedding gradients are all-reduced too (gloo)
    optimizers = make_optimizers(student, cfg, sparse)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    val_ids = validation_ids(n_rows, val_rows)
    val_texts, val_targets = read_rows(cache, val_ids, column)
    dataset = StreamingCacheDataset(cfg.shards, column, student.tokenizer, cfg.batch_size, seed=cfg.seed,
                                    val_ids=val_ids, max_rows=n_rows,
                                    buffer_size=cfg.buffer_size, pool_batches=cfg.pool_batches,
                                    rank=ddp.rank, world_size=ddp.world_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    train_rows = n_rows - val_rows
    total_steps = sum(dataset.steps_per_epoch(e, cfg.num_workers) for e in range(cfg.epochs))
    warmup = min(1000, max(1, total_steps // 20)) if cfg.warmup_steps is None else cfg.warmup_steps
    args |= {"warmup_steps": warmup, "total_steps": total_steps, "sparse_embeddings_used": sparse, "cache": cache_info,
             "world_size": ddp.world_size}

    # ---- from here on we write into --out ------------------------------------------------------------------------
    distributed.barrier(ddp)  # every rank has passed the checks
    if cfg.force and ddp.is_main:
        clear_output(cfg.out)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    epoch, batches_done, step, rows_seen, seconds, history = 0, 0, 0, 0, 0.0, []
    if state:
        student.load_state_dict(state["model"])
        for opt, saved in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        epoch, batches_done, step = state["epoch"], state["batches_done"], state["step"]
        rows_seen, seconds, history = state["rows_seen"], state["seconds"], state["history"]
        log(f"resuming at epoch {epoch + 1}, step {step:,} ({rows_seen:,} sentences seen)", quiet=not ddp.is_main)
    elif ddp.is_main:
        history.append({"step": 0, "epoch": 0, "rows_seen": 0, **evaluate(student, val_texts, val_targets)})

    def record_eval() -> None:
        """Evaluate on the validation rows and append to the history (once per step; rank 0 only)."""
        if not ddp.is_main or (history and history[-1]["step"] == step):
            return
        metrics = evaluate(student, val_texts, val_targets)
        history.append({"step": step, "epoch": round(epoch + batches_done / max(1, len_epoch), 4),
                        "rows_seen": rows_seen, **metrics})
        if metrics:
            log(f"eval step {step:,}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def same_cache(every_rank: bool = True) -> None:
        """Stop in one line, saving nothing, when the cache is no longer the one training started from."""
        change = cache_change(cfg.shards, cache_info["fingerprint"])
        seen = float(change is not None)
        if every_rank:  # all ranks stop together: none is left waiting at a barrier for one that stopped
            seen = distributed.all_sum(ddp, seen)[0]
        if seen:
            raise CacheError(f"{change or 'the cache changed (seen by another rank)'}; training stopped at step "
                             f"{step:,} without saving what it learnt since the last check, which may mix old and "
                             "new shards (a checkpoint saved before, if any, stays); rerun with --force once the "
                             "cache is written")

    rates = [("--lr", cfg.lr)] + ([("--emb-lr", cfg.emb_lr)] if cfg.emb_lr else [])
    saved_step = state["step"] if state else None  # the step of the checkpoint in --out, if any

    def stop_diverged(what: str, live: bool = True) -> None:
        """Stop in one line, saving nothing more: the loss, the weights or the outputs are no longer finite."""
        if live:
            progress.close()
        kept = (f"nothing was saved in {cfg.out}" if saved_step is None else
                f"{Path(cfg.out) / 'checkpoint'} keeps step {saved_step} (saved before); pass --force to start over")
        raise diverged(epoch + (1 if batches_done else 0), step, what, rates, kept)

    def finite_weights(every_rank: bool = True) -> None:
        """Stop before weights that are not finite (or give non-finite validation outputs) are saved; all ranks
        agree, as in same_cache."""
        bad = float(not all_finite(student.state_dict().values()))  # one sync, at save points only
        last = history[-1] if ddp.is_main and history and history[-1]["step"] == step else {}
        outputs = float(any(not math.isfinite(last.get(k, 0.0)) for k in ("val_mse", "val_cosine")))
        if every_rank:
            bad, outputs = distributed.all_sum(ddp, bad, outputs)
        if bad or outputs:
            stop_diverged("weights not finite" if bad else "validation outputs not finite", live=every_rank)

    def checkpoint() -> None:
        """Save everything needed to continue exactly from here (rank 0 writes; the ranks hold identical weights)."""
        nonlocal saved_step
        same_cache()  # never a checkpoint of weights that saw two caches
        finite_weights()  # nor of weights that are not finite
        if ddp.is_main:
            save_checkpoint(cfg.out, {
                "model": student.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                "scaler": scaler.state_dict() if scaler else None, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "epoch": epoch, "batches_done": batches_done, "step": step, "rows_seen": rows_seen,
                "seconds": seconds + time.monotonic() - t0, "history": history, "sparse": sparse,
                "settings": settings, "world_size": ddp.world_size})
        saved_step = step
        distributed.barrier(ddp)  # no rank exits (and so no launcher kills rank 0) before the file is complete

    # ---- the loop -----------------------------------------------------------------------------------------------
    progress = Progress("train", train_rows * cfg.epochs, "sentences", quiet=cfg.quiet, start=rows_seen)
    t0, smooth = time.monotonic(), None
    with deferred_interrupt() as interrupted:
        while epoch < cfg.epochs:
            len_epoch = dataset.steps_per_epoch(epoch, cfg.num_workers)  # the same on every rank
            dataset.set_epoch(epoch, skip_batches=batches_done)
            batches = iter(loader) if cfg.num_workers == 0 else islice(iter(loader), batches_done, None)
            for batch in islice(batches, max(0, len_epoch - batches_done)):
                set_lr(optimizers, lr_factor(step, total_steps, warmup, cfg.decay, cfg.min_lr_ratio),
                       cfg.emb_lr or cfg.lr)
                loss = float(train_step(model, batch, optimizers, scaler, cfg, amp))
                rows, tokens, stop, bad = distributed.all_sum(ddp, len(batch), int(batch.lengths.sum()),
                                                              interrupted["hit"], not math.isfinite(loss))
                interrupted["hit"] = stop > 0  # a Ctrl-C on any rank stops all of them at this same step
                step, batches_done, rows_seen = step + 1, batches_done + 1, rows_seen + int(rows)
                if bad:  # a NaN/inf loss on any rank: all stop at this same step, before anything is saved
                    stop_diverged(f"loss {loss:g}" if not math.isfinite(loss) else "loss not finite on another rank")
                smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
                progress.label = f"step {step:,} loss {smooth:.4g} epoch {epoch + 1}/{cfg.epochs}"
                progress.update(int(rows), tokens=int(tokens))
                if cfg.eval_every and step % cfg.eval_every == 0:
                    record_eval()
                if interrupted["hit"] or (cfg.max_steps and step >= cfg.max_steps):
                    checkpoint()
                    progress.close()
                    if interrupted["hit"]:
                        term = interrupted["signal"] == signal.SIGTERM
                        log(f"{'terminated (SIGTERM)' if term else 'interrupted'} at step {step:,}: checkpoint "
                            f"saved in {Path(cfg.out) / 'checkpoint'}; rerun with --resume to continue",
                            quiet=not ddp.is_main)  # rank 0 alone says it
                        raise Terminated if term else KeyboardInterrupt
                    log(f"stopped at --max-steps {cfg.max_steps}: rerun with --resume to continue", not ddp.is_main)
                    return {"stopped": True, "step": step, "rows_seen": rows_seen, "history": history}
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    checkpoint()
            epoch, batches_done = epoch + 1, 0
            record_eval()
            checkpoint()  # re-checks the cache first: each epoch ends on the manifest it started from
    progress.close()
    if not ddp.is_main:
        return {"rank": ddp.rank, "steps": step, "rows_seen": rows_seen}

    # ---- the finished student folder --------------------------------------------------------------------------
    seconds += time.monotonic() - t0
    metrics = {"final": {k: v for k, v in history[-1].items() if k not in ("step", "epoch", "rows_seen")},
               "initial": {k: v for k, v in history[0].items() if k not in ("step", "epoch", "rows_seen")},
               "rows_seen": rows_seen, "steps": step, "epochs": cfg.epochs, "train_rows": train_rows,
               "val_rows": val_rows, "train_seconds": round(seconds, 2),
               "sentences_per_second": round(rows_seen / max(seconds, 1e-9), 1), "history": history}
    same_cache(every_rank=False)  # the other ranks have returned
    finite_weights(every_rank=False)
    student.save_pretrained(cfg.out)
    write_run_files(cfg.out, args, metrics, student.num_parameters())
    remove_checkpoint(cfg.out)
    log(f"{cfg.out}: {scfg.arch} student, {step:,} steps, " +
        "  ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items()))
    return metrics
