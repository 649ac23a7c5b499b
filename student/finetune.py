"""Fine-tune a student on a task, optionally with task-specific KD from cached teacher logits (nanoGPT style).

loss = (1 - kd_alpha) * CE(labels) + kd_alpha * MSE(student logits, teacher logits); for a regression task
(STS-B) CE is MSE on the score. `fit` is the loop shared with teacher fine-tuning (pipeline/teacher_finetune.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from student.checkpoint import clear_output, not_empty, refuse_unsafe_out
from student.student import Student
from student.task_model import HEAD_NAME, TASK_JSON, StudentClassifier, TaskHead, save_task_model
from student.tasks import TaskData, TaskSpec, compute_metrics, load_split, resolve_data_dir, resolve_task
from student.tokenizer import TOKENIZER_FILES
from teacher_cache.errors import CacheError
from teacher_cache.manifest import atomic_write_text
from teacher_cache.reader import open_cache

# What a fine-tuning run writes into --out (student or transformers teacher); --force replaces these only.
OWN_FILES = (TASK_JSON, HEAD_NAME, "metrics.json", "config.json", "model.safetensors", "generation_config.json",
             *TOKENIZER_FILES)


@dataclass
class FinetuneConfig:
    """Every knob of `tc finetune`; the same config drives student and teacher fine-tuning."""

    model: str = ""  # student folder, or a transformers folder / hub name (the teacher)
    task: str = "sst2"  # sst2 | mrpc | rte | cola | stsb | a TSV/CSV/JSONL training file
    out: str = "ft"
    data_dir: str | None = None  # None: ../shared/data/glue next to the repository
    # a task of your own
    text_columns: list[str] | None = None
    label_column: str = "label"
    labels: list[str] | None = None  # None: the training file's distinct labels
    regression: bool = False
    dev_file: str | None = None  # None: every 10th training row is held out
    # optimisation
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # None: 1e-3 for a student, 5e-5 for a transformers teacher
    warmup: float = 0.1  # share of the steps with a linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    head_hidden: int = 256  # student head: ReLU layer width (0: linear)
    dropout: float = 0.1  # student head
    max_length: int = 128  # transformers teacher only (a student keeps its own)
    freeze_encoder: bool = False
    # task-specific distillation
    kd_cache: str | None = None
    kd_alpha: float = 0.5
    # run
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    seed: int = 0
    device: str = "cpu"
    force: bool = False
    quiet: bool = False
    online: bool = False

    def validate(self) -> None:
        """Raise a one-line CacheError naming the first bad flag."""
        low = {"epochs": 1, "batch_size": 1, "max_train_rows": 1, "max_eval_rows": 1, "head_hidden": 0,
               "max_length": 2}
        for name, bound in low.items():
            value = getattr(self, name)
            if value is not None and value < bound:
                raise CacheError(f"--{name.replace('_', '-')} {value}: must be at least {bound}")
        checks = [(self.lr is None or self.lr > 0, f"--lr {self.lr}: must be positive"),
                  (0 <= self.kd_alpha <= 1, f"--kd-alpha {self.kd_alpha}: must be in [0, 1]"),
                  (0 <= self.dropout < 1, f"--dropout {self.dropout}: must be in [0, 1)"),
                  (0 <= self.warmup < 1, f"--warmup {self.warmup}: must be in [0, 1)")]
        for ok, message in checks:
            if not ok:
                raise CacheError(message)


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
        raise CacheError(f"{data.path}: {len(data)} row(s); too few to hold out a dev set (pass --dev-file)")
    return data.take(index[index % every != 0]), data.take(index[index % every == 0])


def prepare(cfg: FinetuneConfig) -> Prepared:
    """Resolve the task, read its files and the KD cache; every problem is a one-line error."""
    spec = resolve_task(cfg.task, cfg.text_columns, cfg.label_column, cfg.labels, cfg.regression, cfg.dev_file)
    data_dir = resolve_data_dir(spec, cfg.data_dir)
    train = load_split(spec, "train", data_dir, cfg.max_train_rows)
    evals = {split: load_split(spec, split, data_dir, cfg.max_eval_rows) for split in spec.evals}
    evals = {k: v for k, v in evals.items() if v is not None}
    if not evals:
        train, evals["dev"] = holdout(train)
    prep = Prepared(spec, data_dir, train, evals)
    if cfg.kd_cache:
        prep.kd_targets, transfer = load_kd_targets(cfg.kd_cache, spec, train)
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


def log(cfg: FinetuneConfig, message: str) -> None:
    """One line on stderr unless quiet."""
    if not cfg.quiet:
        print(message, file=sys.stderr, flush=True)


def fit(cfg: FinetuneConfig, prep: Prepared, module: torch.nn.Module, forward: Callable[[np.ndarray], torch.Tensor],
        predict: Callable[[TaskData], np.ndarray], info: dict) -> dict:
    """The loop: shuffled batches, AdamW with warm-up and linear decay, dev metrics into metrics.json per epoch."""
    spec, train, lr = prep.spec, prep.train, cfg.lr
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    steps = math.ceil(len(train) / cfg.batch_size)
    total, warmup = steps * cfg.epochs, int(cfg.warmup * steps * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
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
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        seconds += time.monotonic() - started
        scores = {split: compute_metrics(spec, predict(data), data.labels) for split, data in prep.evals.items()}
        metrics["history"].append({"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 6), **scores})
        metrics |= {"final": scores, "epochs_done": epoch + 1, "train_seconds": round(seconds, 2)}
        atomic_write_text(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        log(cfg, f"epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.4f}  " + "  ".join(
            f"{split} {k} {v:.4f}" for split, s in scores.items() for k, v in s.items()))
    return metrics


def load_student_folder(path: str | Path) -> Student:
    """--model as a student folder, or a one-line error saying what it is instead."""
    path = Path(path)
    if (path / "manifest.json").exists():
        raise CacheError(f"--model {path}: a teacher cache, not a student; pass a folder from tc train-student")
    try:
        return Student.from_pretrained(path)
    except CacheError as exc:
        raise CacheError(f"--model {exc}") from None


def finetune_student(cfg: FinetuneConfig, student: Student | None = None) -> dict:
    """Fine-tune a student folder (or a given Student) on cfg.task; write the model and metrics.json to cfg.out."""
    cfg.validate()
    cfg.lr = cfg.lr or 1e-3
    prep = prepare(cfg)
    student = student if student is not None else load_student_folder(cfg.model)
    check_out(cfg.out, cfg.model, cfg.force)
    clear_out(cfg.out)
    torch.manual_seed(cfg.seed)
    spec = prep.spec
    head = TaskHead(student.dim, spec.pair, spec.n_outputs, cfg.head_hidden, cfg.dropout)
    model = StudentClassifier(student, head).to(cfg.device)
    train = prep.train
    if cfg.freeze_encoder:  # the encoder never changes: encode every split once, train the head on the vectors
        student.requires_grad_(False)
        cached = {id(d): model.features(d) for d in [train, *prep.evals.values()]}
        u, v = cached[id(train)]

        def forward(idx: np.ndarray) -> torch.Tensor:
            """Head outputs of training rows from their cached vectors."""
            return head(u[idx], None if v is None else v[idx])

        def predict(data: TaskData) -> np.ndarray:
            """Head outputs of a split from its cached vectors."""
            head.eval()
            with torch.inference_mode():
                a, b = cached[id(data)]
                return head(a, b).float().cpu().numpy()
    else:
        def forward(idx: np.ndarray) -> torch.Tensor:
            """Outputs of training rows, through encoder and head."""
            return model.forward_texts([train.texts[i] for i in idx],
                                       [train.pairs[i] for i in idx] if train.pairs else None)

        predict = model.predict
    info = {"kind": "student", "model": str(cfg.model), "parameters": model.num_parameters(),
            "freeze_encoder": cfg.freeze_encoder}
    metrics = fit(cfg, prep, model, forward, predict, info)
    args = {k: v for k, v in asdict(cfg).items() if k not in ("force", "quiet", "online")}
    save_task_model(cfg.out, model, spec, args)
    return metrics
