"""Train a student on a teacher cache: one readable loop (nanoGPT style), every knob in training/train_config.py,
what a run decides before its loop (RunPlan) and what moves in it (RunState) in training/plan.py.

The teacher is never loaded: targets stream from the cache's shards. Checkpoints are atomic and carry the
data position (epoch, batches done), so `resume=True` replays the same batches an uninterrupted run would see.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import replace
from itertools import islice
from typing import NoReturn

import numpy as np
import torch
from torch.utils.data import DataLoader

from student.student import Student
from student.training import distributed
from student.training.card import write_run_files
from student.training.checkpoint import load_checkpoint, save_checkpoint
from student.training.data import Batch, StreamingCacheDataset
from student.training.evaluate import evaluate
from student.training.init import add_vocab_words, init_embeddings
from student.training.losses import loss_fn
from student.training.optim import adamw, all_finite, clip_gradients, diverged, lr_factor, param_groups, set_lr
from student.training.plan import RunPlan, RunState, plan_run, schedule
from student.training.runtime import autocast_dtype, deferred_interrupt, resolve_device
from student.training.student_out import StudentOut
from student.training.train_config import TrainConfig
from student.training.val_rows import read_rows, validation_ids
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
    with StudentOut.open(cfg.out, cfg.shards).hold():  # one writer per --out: a second one is refused, named
        return _train(cfg)


def evaluate_now(plan: RunPlan, state: RunState, student: Student, texts: list[str], targets) -> None:
    """Evaluate on the validation rows and append to the history (once per step; rank 0 only)."""
    if not plan.ddp.is_main or (state.history and state.history[-1]["step"] == state.step):
        return
    metrics = evaluate(student, texts, targets)
    state.history.append({"step": state.step, "epoch": state.epochs_done(plan), "rows_seen": state.rows_seen,
                          **metrics})
    if metrics:
        log(f"eval step {state.step:,}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def check_cache(plan: RunPlan, state: RunState, every_rank: bool = True) -> None:
    """Stop in one line, saving nothing, when the cache is no longer the one training started from."""
    change = cache_change(plan.cfg.shards, plan.cache_info["fingerprint"], plan.cfg.version)
    seen = float(change is not None)
    if every_rank:  # all ranks stop together: none is left waiting at a barrier for one that stopped
        seen = distributed.all_sum(plan.ddp, seen)[0]
    if seen:
        raise CacheError(f"{change or 'the cache changed (seen by another rank)'}; training stopped at step "
                         f"{state.step:,} without saving what it learnt since the last check, which may mix old and "
                         "new shards (a checkpoint saved before, if any, stays); rerun with --force once the "
                         "cache is written")


def stop_diverged(plan: RunPlan, state: RunState, what: str, progress: Progress | None = None) -> NoReturn:
    """Stop in one line, saving nothing more: the loss, the weights or the outputs are no longer finite."""
    if progress is not None:  # its last line first, so that the error is the last thing said
        progress.close()
    out = plan.out
    earlier = "; --force removed nothing: the earlier run's files there are kept" if plan.cfg.force else ""
    kept = (f"nothing was saved in {out.where()}{earlier}" if state.saved_step is None else
            f"{out.where('checkpoint')} keeps step {state.saved_step} (saved before); pass --force to start over")
    raise diverged(state.epoch + (1 if state.batches_done else 0), state.step, what, plan.rates, kept)


def check_finite(plan: RunPlan, state: RunState, student: Student, progress: Progress | None = None) -> None:
    """Stop before weights that are not finite, or give non-finite validation outputs, are saved."""
    bad = float(not all_finite(student.state_dict().values()))  # one sync, at save points only
    history = state.history
    last = history[-1] if plan.ddp.is_main and history and history[-1]["step"] == state.step else {}
    outputs = float(any(not math.isfinite(last.get(k, 0.0)) for k in ("val_mse", "val_cosine")))
    if progress is not None:  # in the loop all ranks agree, as in check_cache; after it the others have returned
        bad, outputs = distributed.all_sum(plan.ddp, bad, outputs)
    if bad or outputs:
        stop_diverged(plan, state, "weights not finite" if bad else "validation outputs not finite", progress)


def replace_earlier(plan: RunPlan, state: RunState) -> None:
    """--force: remove the earlier run's files from --out just before this run's first save (rank 0, once).

    Not at the start: a --force run that is killed, diverges or stops on a changed cache before it saves anything
    leaves the earlier student whole (as tc encode --force keeps the old cache until its first shard)."""
    if plan.cfg.force and plan.ddp.is_main and not state.replaced:
        plan.out.replace_earlier()
    state.replaced = True


def checkpoint_now(plan: RunPlan, state: RunState, student: Student, optimizers: list, scaler,
                   progress: Progress, done: np.ndarray | None = None) -> None:
    """Save everything needed to continue exactly from here (rank 0 writes; the ranks hold identical weights).

    `done` marks the rows this epoch has trained on, on this rank; their union over the ranks is saved (packed
    bits), so the checkpoint can be resumed on another number of processes (None: not known, so it cannot).
    """
    check_cache(plan, state)  # never a checkpoint of weights that saw two caches
    check_finite(plan, state, student, progress)  # nor of weights that are not finite
    every = distributed.all_any(plan.ddp, done) if done is not None and state.batches_done else None
    if plan.ddp.is_main:
        replace_earlier(plan, state)
        cuda = plan.ddp.device.type == "cuda"
        save_checkpoint(plan.out.folder, {
            "model": student.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
            "scaler": scaler.state_dict() if scaler else None, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else [], **state.to_dict(),
            "sparse": plan.sparse, "settings": plan.settings, "world_size": plan.ddp.world_size,
            **({"epoch_done": torch.from_numpy(np.packbits(every) if every is not None else np.zeros(0, np.uint8))}
               if every is not None or not state.batches_done else {})})  # a tensor: weights_only loads it
        plan.out.publish_checkpoint()  # a URL's: uploaded, whole, before the run goes on
    state.saved_step = state.step
    distributed.barrier(plan.ddp)  # no rank exits (and so no launcher kills rank 0) before the file is complete


def resumed_rows(saved: dict, n_rows: int) -> np.ndarray | None:
    """The rows of the checkpoint's epoch trained on so far (all ranks'), or None when it does not say (made before
    elastic resumes): its later checkpoints then cannot be resumed on another number of processes either."""
    if not saved.get("batches_done"):
        return np.zeros(n_rows, dtype=bool)
    if "epoch_done" not in saved:
        return None
    packed = saved["epoch_done"]
    packed = packed.numpy() if isinstance(packed, torch.Tensor) else np.asarray(packed, dtype=np.uint8)
    return np.unpackbits(packed.astype(np.uint8), count=n_rows).astype(bool)


def restore(plan: RunPlan, saved: dict, student: Student, optimizers: list, scaler) -> RunState:
    """Load a checkpoint's weights, optimizer states and random states; return its run state."""
    student.load_state_dict(saved["model"])
    for opt, opt_state in zip(optimizers, saved["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
    if scaler and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if plan.ddp.device.type == "cuda" and saved.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return RunState.from_dict(saved)


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
    cache = open_cache(cfg.shards, cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit,  # refused while written
                       download_rate=cfg.download_rate, version=cfg.version)
    # every shard it reads (all, or those of the first --max-rows ids) before --force clears anything (a remote
    # cache: sizes; sha256 on arrival)
    cache.check_before_use(cfg.max_rows)
    plan = plan_run(cfg, cache, ddp)
    plan = add_vocab_words(plan, cache, cfg.vocab_words)  # --vocab-words: the tokenizer files and vocab_size
    out = plan.out
    out.check(cfg.resume, cfg.force)
    if cfg.resume:
        out.fetch_checkpoint()  # a URL's checkpoint into staging (a folder holds its own)
    saved = load_checkpoint(out.folder, plan.settings, out.where("checkpoint")) if cfg.resume else None
    distributed.check_world_size(saved, ddp, out.where("checkpoint"))

    # ---- the student, its optimizers, the data ------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    student = Student(plan.student, plan.tokenizer_files)
    if saved is None:
        init_embeddings(student, cache, cfg.init_embeddings, cfg.sif, plan.n_rows, plan.targets)
    sparse = saved["sparse"] if saved else cfg.sparse_embeddings == "yes" or (
        cfg.sparse_embeddings == "auto" and device.type == "cpu")
    student.set_sparse(sparse)
    student.to(device).train()
    model = distributed.wrap(student, ddp)  # sparse embedding gradients are all-reduced too (gloo)
    optimizers = make_optimizers(student, cfg, sparse)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    val_ids = validation_ids(plan.n_rows, plan.val_rows, exclude=cache.deleted_ids)
    # rank 0 alone evaluates: the others read no validation rows (a remote cache's would cost every rank a pass)
    val_texts, val_targets = read_rows(cache, val_ids if ddp.is_main else val_ids[:0], plan.column, plan.targets)
    dataset = StreamingCacheDataset(cache, plan.column, student.tokenizer, cfg.batch_size, seed=cfg.seed,
                                    val_ids=val_ids, max_rows=plan.n_rows, dedup=cfg.dedup, targets=plan.targets,
                                    buffer_size=cfg.buffer_size, pool_batches=cfg.pool_batches,
                                    rank=ddp.rank, world_size=ddp.world_size, interleave=cfg.interleave_shards)
    if cfg.num_workers == 0:  # a remote cache starts fetching this rank's first shards during the set-up below
        cache.schedule([shard for shard, _, _ in dataset.stream_segments(saved["epoch"] if saved else 0, 0, 1)])
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    plan = schedule(plan, dataset, sparse)

    # ---- from here on we write into --out ------------------------------------------------------------------------
    distributed.barrier(ddp)  # every rank has passed the checks; --force clears at the first save (replace_earlier)
    out.folder.mkdir(parents=True, exist_ok=True)
    state = restore(plan, saved, student, optimizers, scaler) if saved else RunState()
    if saved:
        log(f"resuming at epoch {state.epoch + 1}, step {state.step:,} ({state.rows_seen:,} sentences seen)",
            quiet=not ddp.is_main)
    elif ddp.is_main:
        state.history.append({"step": 0, "epoch": 0, "rows_seen": 0, **evaluate(student, val_texts, val_targets)})

    # ---- the loop -----------------------------------------------------------------------------------------------
    progress = Progress("train", plan.train_rows * cfg.epochs, "sentences", quiet=cfg.quiet, start=state.rows_seen)
    state.started, smooth = time.monotonic(), None
    # the rows this rank trained on in the current epoch (a resume on another number of processes needs them)
    done = resumed_rows(saved, plan.n_rows) if saved else np.zeros(plan.n_rows, dtype=bool)
    elastic = saved is not None and saved.get("world_size", 1) != ddp.world_size and state.batches_done > 0
    with deferred_interrupt() as interrupted:
        while state.epoch < cfg.epochs:
            if elastic:  # the epoch's rows not yet trained on, split afresh between this run's processes
                dataset.set_epoch(state.epoch, done_ids=np.flatnonzero(done))
                steps = list(plan.epoch_steps)
                steps[state.epoch] = state.batches_done + dataset.steps_per_epoch(state.epoch, cfg.num_workers)
                plan = replace(plan, epoch_steps=tuple(steps))
                skip = 0
            else:
                dataset.set_epoch(state.epoch, skip_batches=state.batches_done)
                skip = state.batches_done
            batches = iter(loader) if cfg.num_workers == 0 else islice(iter(loader), skip, None)
            for batch in islice(batches, max(0, plan.epoch_steps[state.epoch] - state.batches_done)):
                set_lr(optimizers, lr_factor(state.step, plan.total_steps, plan.warmup, cfg.decay, cfg.min_lr_ratio),
                       cfg.emb_lr or cfg.lr)
                loss = float(train_step(model, batch, optimizers, scaler, cfg, amp))
                rows, tokens, stop, bad = distributed.all_sum(ddp, len(batch), int(batch.lengths.sum()),
                                                              interrupted["hit"], not math.isfinite(loss))
                interrupted["hit"] = stop > 0  # a Ctrl-C on any rank stops all of them at this same step
                state.step, state.batches_done = state.step + 1, state.batches_done + 1
                state.rows_seen += int(rows)
                if done is not None:
                    done[batch.ids.cpu().numpy()] = True
                if bad:  # a NaN/inf loss on any rank: all stop at this same step, before anything is saved
                    stop_diverged(plan, state, f"loss {loss:g}" if not math.isfinite(loss)
                                  else "loss not finite on another rank", progress)
                smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
                progress.label = f"step {state.step:,} loss {smooth:.4g} epoch {state.epoch + 1}/{cfg.epochs}"
                progress.update(int(rows), tokens=int(tokens))
                if cfg.eval_every and state.step % cfg.eval_every == 0:
                    evaluate_now(plan, state, student, val_texts, val_targets)
                if interrupted["hit"] or (cfg.max_steps and state.step >= cfg.max_steps):
                    checkpoint_now(plan, state, student, optimizers, scaler, progress, done)
                    progress.close()
                    if interrupted["hit"]:
                        term = interrupted["signal"] == signal.SIGTERM
                        log(f"{'terminated (SIGTERM)' if term else 'interrupted'} at step {state.step:,}: checkpoint "
                            f"saved in {out.where('checkpoint')}; rerun with --resume to continue",
                            quiet=not ddp.is_main)  # rank 0 alone says it
                        raise Terminated if term else KeyboardInterrupt
                    log(f"stopped at --max-steps {cfg.max_steps}: rerun with --resume to continue", not ddp.is_main)
                    return {"stopped": True, "step": state.step, "rows_seen": state.rows_seen, "history": state.history}
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    checkpoint_now(plan, state, student, optimizers, scaler, progress, done)
            state.epoch, state.batches_done, elastic = state.epoch + 1, 0, False
            done = np.zeros(plan.n_rows, dtype=bool)
            evaluate_now(plan, state, student, val_texts, val_targets)
            checkpoint_now(plan, state, student, optimizers, scaler, progress)  # the cache re-checked first
    progress.close()
    if not ddp.is_main:
        return {"rank": ddp.rank, "steps": state.step, "rows_seen": state.rows_seen}

    # ---- the finished student folder --------------------------------------------------------------------------
    seconds, history = state.elapsed(), state.history
    metrics = {"final": {k: v for k, v in history[-1].items() if k not in ("step", "epoch", "rows_seen")},
               "initial": {k: v for k, v in history[0].items() if k not in ("step", "epoch", "rows_seen")},
               "rows_seen": state.rows_seen, "steps": state.step, "epochs": cfg.epochs, "train_rows": plan.train_rows,
               "val_rows": plan.val_rows, "train_seconds": round(seconds, 2),
               "sentences_per_second": round(state.rows_seen / max(seconds, 1e-9), 1), "history": history}
    check_cache(plan, state, every_rank=False)  # the other ranks have returned
    check_finite(plan, state, student)
    replace_earlier(plan, state)  # done at the first checkpoint already (every epoch ends with one)
    student.save_pretrained(out.folder)
    write_run_files(out.folder, plan.args(), metrics, student.num_parameters())
    out.publish_student()  # a URL's: model files, config.json last; then the checkpoint goes (a folder's too)
    log(f"{cfg.out}: {plan.student.arch} student, {state.step:,} steps, " +
        "  ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items()))
    return metrics
