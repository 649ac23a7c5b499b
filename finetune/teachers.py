"""The task teacher: a transformers model fine-tuned with a sequence-classification head, and its cached logits.

Fine-tuning shares the student's loop (finetune/fit.py), so both report the same metrics.json.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from finetune.augment import AugmentConfig, augment_examples
from finetune.config import FinetuneConfig, LogitsConfig
from finetune.fit import Tuned, check_out, fit, holding_out
from finetune.prepare import prepare
from finetune.task_data import TaskData, load_inputs, load_split
from finetune.task_json import TaskJson, read_task_json
from finetune.task_model import write_task_json
from finetune.tasks import TaskSpec, resolve_data_dir, resolve_task
from teacher_cache.base.errors import UserError, first_line
from teacher_cache.encode.logits import logits_manifest, model_hash, write_logits_cache
from teacher_cache.encode.teacher import go_offline
from teacher_cache.manifest import CacheManifest


def load_classifier(name: str, n_out: int | None = None, online: bool = False):
    """(model, tokenizer) of a transformers folder or hub name, with a fresh head of n_out outputs if given."""
    if not online:
        go_offline()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    kwargs = {} if n_out is None else {"num_labels": n_out, "ignore_mismatched_sizes": True,
                                       "problem_type": "regression" if n_out == 1 else "single_label_classification"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        hint = "" if online else " (offline: pass a local folder, or --online to allow a download)"
        raise UserError(f"--model {name}: cannot load as a transformers model{hint}: {first_line(exc)}") from None
    return model, tokenizer


class TeacherRunner:
    """Tokenises (pairs as the model's pair input), runs the classifier, returns logits in input order."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int, device: str = "cpu"):
        """Wrap a sequence-classification model and its tokenizer."""
        self.model, self.tokenizer, self.max_length = model.to(device), tokenizer, max_length
        self.device = torch.device(device)

    def inputs(self, texts: list[str], pairs: list[str] | None) -> dict[str, torch.Tensor]:
        """Padded, truncated model inputs of a batch."""
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """(batch, n_out) logits, with gradients when the model is training."""
        return self.model(**self.inputs(texts, pairs)).logits

    def predict(self, data: TaskData, batch_size: int = 64, start: int = 0, stop: int | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and word-piece counts of rows start..stop, in input order (length-sorted batches)."""
        stop = len(data) if stop is None else stop
        rows = np.arange(start, stop)
        lengths = np.array([len(data.texts[i]) + (len(data.pairs[i]) if data.pairs else 0) for i in rows])
        rows = rows[np.argsort(-lengths, kind="stable")]
        out = np.zeros((stop - start, self.model.config.num_labels), dtype=np.float32)
        n_tokens = np.zeros(stop - start, dtype=np.int32)
        was = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for b in range(0, len(rows), batch_size):
                idx = rows[b:b + batch_size]
                enc = self.inputs([data.texts[i] for i in idx], [data.pairs[i] for i in idx] if data.pairs else None)
                out[idx - start] = self.model(**enc).logits.float().cpu().numpy()
                n_tokens[idx - start] = enc["attention_mask"].sum(1).cpu().numpy()
        self.model.train(was)
        return out, n_tokens


@holding_out
def finetune_teacher(cfg: FinetuneConfig) -> dict:
    """Fine-tune a transformers model on cfg.task; write it (transformers folder + task.json + metrics.json)."""
    cfg.validate()
    cfg.lr = cfg.lr or 5e-5
    prep = prepare(cfg)
    check_out(cfg.out, cfg.model, cfg.force)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model, tokenizer = load_classifier(cfg.model, prep.spec.n_outputs, cfg.online)
    if cfg.freeze_encoder:
        model.base_model.requires_grad_(False)
    runner = TeacherRunner(model, tokenizer, cfg.max_length, cfg.device)
    train = prep.train

    def forward(idx: np.ndarray) -> torch.Tensor:
        """Logits of training rows."""
        return runner.forward([train.texts[i] for i in idx], [train.pairs[i] for i in idx] if train.pairs else None)

    info = {"kind": "teacher", "model": str(cfg.model), "parameters": int(model.num_parameters()),
            "freeze_encoder": cfg.freeze_encoder}
    metrics = fit(cfg, prep, Tuned(model, forward, lambda data: runner.predict(data, cfg.batch_size * 2)[0], info))
    model.save_pretrained(cfg.out)
    tokenizer.save_pretrained(cfg.out)
    args = {k: v for k, v in asdict(cfg).items() if k not in ("force", "quiet", "online")}
    write_task_json(cfg.out, "teacher", prep.spec, max_length=cfg.max_length, args=args)
    return metrics


def load_finetuned_teacher(folder: str | Path, device: str = "cpu", task: TaskJson | None = None,
                           ) -> tuple[TeacherRunner, TaskSpec]:
    """A folder written by finetune_teacher -> (runner in eval mode, its task); `task`: its task.json, when read
    already."""
    task = task or read_task_json(folder)
    if task.kind != "teacher":
        raise UserError(f"--model {folder}: holds a fine-tuned {task.kind}, not a transformers teacher")
    model, tokenizer = load_classifier(str(folder))
    return TeacherRunner(model.eval(), tokenizer, int(task.meta.get("max_length", 128)), device), task.spec


def cache_logits(cfg: LogitsConfig) -> CacheManifest:
    """Cache a fine-tuned teacher's logits over its task's training rows (ids = row positions in the file).

    `cfg.rows_file` replaces the task's training file by another file in its layout (see `load_inputs`). With
    `cfg.augment` N, N synthetic variants of each row follow the rows (example i's at ids n + i*N ...), for KD.
    """
    cfg.validate()
    runner, spec = load_finetuned_teacher(cfg.model, cfg.device)
    if cfg.task is not None and spec.glue and resolve_task(cfg.task).name != spec.name:
        raise UserError(f"--task {cfg.task}: the teacher in {cfg.model} was fine-tuned on {spec.name}")
    if cfg.rows_file is None:
        train = load_split(spec, "train", resolve_data_dir(spec, cfg.data_dir), cfg.max_rows)
    else:
        train = load_inputs(spec, cfg.rows_file)
        if cfg.max_rows is not None:
            train = train.take(range(min(cfg.max_rows, len(train))))
    n_train = len(train)
    augment = AugmentConfig(copies=cfg.augment, seed=cfg.augment_seed)
    if augment.copies > 0:
        texts, pairs = augment_examples(train.texts, train.pairs, augment)
        train = TaskData(train.path, train.texts + texts, None if pairs is None else train.pairs + pairs)
    rows = train.rows()
    manifest = logits_manifest(str(Path(cfg.model).resolve()), model_hash(runner.model), spec.n_outputs,
                               runner.max_length, rows, str(train.path), spec.name,
                               list(spec.labels) if spec.labels else None, cfg.shard_size)
    manifest.extra.update({"max_rows": cfg.max_rows, "train_rows": n_train,
                           "augment": asdict(augment) if augment.copies > 0 else None})

    def compute(start: int, chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits and word-piece counts of one shard's rows."""
        return runner.predict(train, cfg.batch_size, start, start + len(chunk))

    return write_logits_cache(cfg.out, rows, compute, manifest, force=cfg.force, quiet=cfg.quiet)
