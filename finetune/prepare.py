"""A fine-tuning run's data, checked before anything is written: the task, its splits, and the teacher's logits
(plus the augmented examples they label) from a KD cache."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.config import FinetuneConfig
from finetune.task_data import TaskData, load_split
from finetune.tasks import TaskSpec, resolve_data_dir, resolve_task
from teacher_cache.base.errors import CacheError, UserError
from teacher_cache.reader import open_cache

HOLDOUT_MIN_ROWS = 20  # --select holdout needs this many training rows


@dataclass
class Prepared:
    """A task's spec and data, checked before anything is written: train rows, evaluation splits, KD targets."""

    spec: TaskSpec
    data_dir: Path
    train: TaskData
    evals: dict[str, TaskData]
    kd_targets: np.ndarray | None = None
    transfer_rows: int = 0  # unlabelled augmented examples at the end of `train` (KD loss only)


def holdout(data: TaskData, every: int = 10) -> tuple[TaskData, TaskData]:
    """Split off every `every`-th row as a dev set (for a task of one's own given without --dev-file)."""
    index = np.arange(len(data))
    if len(data) < 2:
        raise UserError(f"{data.path}: {len(data)} row(s); too few to hold out a dev set (pass --dev-file)")
    return data.take(index[index % every != 0]), data.take(index[index % every == 0])


def selection_rows(n: int, at_most: int) -> np.ndarray:
    """Which of n training rows --select holdout keeps aside: every k-th (k >= 10), at most `at_most` of them."""
    every = max(10, math.ceil(n / at_most))
    return np.arange(0, n, every)[:at_most]


def prepare(cfg: FinetuneConfig, auto_select: Callable[[TaskSpec], str] | None = None) -> Prepared:
    """Resolve the task, read its files and the KD cache; every problem is a one-line error.

    --select auto becomes `auto_select(spec)` (default: last); holdout falls back to dev when there are too few
    training rows to hold some out."""
    spec = resolve_task(cfg.task, cfg.text_columns, cfg.label_column, cfg.labels, cfg.regression, cfg.dev_file)
    data_dir = resolve_data_dir(spec, cfg.data_dir)
    train = load_split(spec, "train", data_dir, cfg.max_train_rows)
    evals = {split: load_split(spec, split, data_dir, cfg.max_eval_rows) for split in spec.evals}
    evals = {k: v for k, v in evals.items() if v is not None}
    if not evals:
        train, evals["dev"] = holdout(train)
    targets, transfer = load_kd_targets(cfg.kd_cache, spec, train) if cfg.kd_cache else (None, None)
    if cfg.select == "auto":
        cfg.select = auto_select(spec) if auto_select else "last"
        cfg.select = "dev" if cfg.select == "holdout" and len(train) < HOLDOUT_MIN_ROWS else cfg.select
    if cfg.select == "holdout":  # rows kept out of training to choose the epoch by; dev stays unseen
        if len(train) < HOLDOUT_MIN_ROWS:
            raise UserError(f"--select holdout: {len(train)} training rows; too few to hold some out (use dev)")
        held = selection_rows(len(train), cfg.holdout_rows)
        kept = np.setdiff1d(np.arange(len(train)), held)
        evals["holdout"] = train.take(held)
        if targets is not None:
            copies = 0 if transfer is None else len(transfer) // len(train)
            variants = (kept[:, None] * copies + np.arange(copies)).reshape(-1)  # example i's at i*copies...
            targets = np.concatenate([targets[:len(train)][kept], targets[len(train):][variants]])
            transfer = None if transfer is None else transfer.take(variants)
        train = train.take(kept)
    prep = Prepared(spec, data_dir, train, evals, kd_targets=targets)
    if transfer is not None:  # augmented examples: learnt from the teacher's logits alone
        prep.transfer_rows = len(transfer)
        prep.train = TaskData(train.path, train.texts + transfer.texts,
                              None if train.pairs is None else train.pairs + transfer.pairs,
                              np.concatenate([train.labels.astype(transfer.labels.dtype), transfer.labels]),
                              train.lines + [0] * len(transfer))
    return prep


def load_kd_targets(path: str | Path, spec: TaskSpec, train: TaskData) -> tuple[np.ndarray, TaskData | None]:
    """The cached teacher logits of the training rows (refused unless the cache holds exactly these rows), plus
    the cache's augmented rows of those examples as unlabelled transfer data (None when it has none)."""
    cache = open_cache(path)
    m = cache.manifest
    if m.kind != "logits":
        raise CacheError(f"--kd-cache {path}: holds {m.kind}, not teacher logits; make one with tc cache-logits")
    if m.extra.get("task") != spec.name:
        raise CacheError(f"--kd-cache {path}: holds logits for task {m.extra.get('task')}, not {spec.name}")
    if m.dim != spec.n_outputs:
        raise CacheError(f"--kd-cache {path}: {m.dim} logits per row, task {spec.name} needs {spec.n_outputs}")
    ours, cached_train = train.rows(), int(m.extra.get("train_rows") or len(cache))
    if cached_train < len(ours):
        raise CacheError(f"--kd-cache {path}: holds {cached_train:,} rows, the task's training file has "
                         f"{len(ours):,} (rerun tc cache-logits without --max-rows)")
    cached = cache.texts(np.arange(len(ours)))
    for i, (a, b) in enumerate(zip(cached, ours, strict=True)):
        if a != b:
            raise CacheError(f"--kd-cache {path}: row {i} is {a[:50]!r}, the task's training file has {b[:50]!r}; "
                             "cache the logits of this training file (tc cache-logits)")
    targets = cache.vectors("logits", np.arange(len(ours)))
    copies = int((m.extra.get("augment") or {}).get("copies", 0))
    if not copies:
        return targets, None
    ids = cached_train + np.arange(len(ours) * copies)  # example i's variants follow in order, `copies` each
    rows = cache.texts(ids)
    texts, pairs = (rows, None) if not spec.pair else [list(side) for side in zip(*(r.split("\t", 1) for r in rows),
                                                                                   strict=True)]
    labels = np.full(len(rows), np.nan if spec.regression else -1, dtype=np.float32 if spec.regression else np.int64)
    transfer = TaskData(train.path, texts, pairs, labels, [])
    return np.concatenate([targets, cache.vectors("logits", ids)]), transfer
