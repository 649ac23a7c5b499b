"""One training run's two halves: RunPlan, all it decides before the first step (nanoGPT's model_args), and
RunState, all that moves as it goes (what a checkpoint carries, so that --resume replays the same batches)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np

from student.config import StudentConfig
from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training.data import StreamingCacheDataset
from student.training.distributed import DistContext
from student.training.student_out import StudentOut
from student.training.train_config import DEDUP_MODES, RUN_ONLY, TrainConfig
from teacher_cache.base.errors import CacheError, UserError
from teacher_cache.base.progress import log
from teacher_cache.reader import TeacherCache


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before the first step, from the knobs and the cache; the loop only reads it."""

    cfg: TrainConfig
    ddp: DistContext  # this process's rank, the world size and the device
    student: StudentConfig
    tokenizer_files: dict[str, bytes]
    column: str  # the cache column the student learns
    n_rows: int  # ids used, [0, n_rows) (--max-rows), validation rows and rows a version deleted included
    val_rows: int
    cache_info: dict  # the cache as training_args.json records it; its fingerprint is re-checked at every save
    settings: dict  # what a --resume must share with the checkpoint: every knob but RUN_ONLY, and the cache
    # known once the data is (schedule): the same on every rank, so that DDP ranks step in lockstep
    epoch_steps: tuple[int, ...] = ()
    warmup: int = 0
    sparse: bool = False  # sparse token-table gradients (SparseAdam); a resumed run keeps its checkpoint's choice
    deleted_rows: int = 0  # ids below n_rows that the version read no longer holds
    targets: tuple[str, ...] | None = None  # the teachers learnt (--teacher-column/--targets); None: the cache's own

    @property
    def train_rows(self) -> int:
        """Rows trained on each epoch (all ranks together)."""
        return self.n_rows - self.val_rows - self.deleted_rows

    @property
    def total_steps(self) -> int:
        """Steps of the whole run: the learning-rate schedule's length."""
        return sum(self.epoch_steps)

    @cached_property
    def out(self) -> StudentOut:
        """--out: the folder the run writes into (a URL's staging folder) and how it publishes there."""
        return StudentOut.open(self.cfg.out, self.cfg.shards)

    @property
    def rates(self) -> list[tuple[str, float]]:
        """The learning-rate flags a divergence tells the user to lower."""
        return [("--lr", self.cfg.lr)] + ([("--emb-lr", self.cfg.emb_lr)] if self.cfg.emb_lr else [])

    def args(self) -> dict:
        """training_args.json: every knob as given, what the cache decided, the schedule and the cache."""
        return {**_knobs(self.cfg, self.column, self.val_rows, self.student), "warmup_steps": self.warmup,
                "total_steps": self.total_steps, "sparse_embeddings_used": self.sparse, "cache": self.cache_info,
                "world_size": self.ddp.world_size}


def _knobs(cfg: TrainConfig, column: str, val_rows: int, scfg: StudentConfig) -> dict:
    """The knobs with those left to the cache or the architecture (None) resolved."""
    return {**asdict(cfg), "target_column": column, "val_rows": val_rows, "max_length": scfg.max_length,
            "emb_dim": scfg.emb_dim, "hidden": scfg.hidden, "pooling": scfg.pooling}


def plan_run(cfg: TrainConfig, cache: TeacherCache, ddp: DistContext) -> RunPlan:
    """The plan of a run of `cfg` on the (checked) `cache`, refused in one line before anything is written."""
    column = cache.vector_column(cfg.target_column)
    n_rows = cache.id_rows if cfg.max_rows is None else min(cfg.max_rows, cache.id_rows)
    deleted = int(np.searchsorted(cache.deleted_ids, n_rows))
    live = n_rows - deleted
    val_rows = min(2000, live // 10) if cfg.val_rows is None else cfg.val_rows
    if val_rows >= live:
        raise UserError(f"--val-rows {val_rows}: leaves no training rows (using {live:,} rows of the cache)")
    if cfg.dedup not in DEDUP_MODES:
        raise UserError(f"--dedup {cfg.dedup}: choose one of {', '.join(DEDUP_MODES)}")
    targets = resolve_targets(cfg, cache, ddp.is_main)
    learnt = learnt_teachers(cache, targets, column)
    tokenizer_files = read_tokenizer_files(cache.tokenizer_path)
    max_length = cfg.max_length or cache.manifest.max_length
    vocab = WordPieceTokenizer(tokenizer_files["tokenizer.json"], max_length).vocab_size
    m = cache.manifest
    scfg = StudentConfig(arch=cfg.arch, vocab_size=vocab, emb_dim=cfg.emb_dim, hidden=cfg.hidden, layers=cfg.layers,
                         pooling=cfg.pooling, out_dim=cache.dim if targets is None else cache.target_dim(targets),
                         max_length=max_length, dropout=cfg.dropout,
                         token_weights=cfg.token_weights, static_path=cfg.static_path,
                         **({"kernel_sizes": list(cfg.kernel_sizes)} if cfg.kernel_sizes else {}),
                         teacher={"name": m.teacher, "hash": m.teacher_hash, "column": column,
                                  "pooling": m.columns.get(column), "normalized": m.normalize, **learnt})
    fingerprint = m.content_fingerprint(cache.version if cfg.version is not None else None)
    cache_info = {"path": str(cfg.shards), "teacher": m.teacher, "teacher_hash": m.teacher_hash, "dim": m.dim,
                  "corpus_fingerprint": m.corpus_fingerprint, "rows": len(cache),
                  "version": cache.version.version if cache.version else None,
                  "fingerprint": fingerprint, "target_pooling": m.columns.get(column), **learnt}
    settings = {k: v for k, v in _knobs(cfg, column, val_rows, scfg).items() if k not in RUN_ONLY} | {
        "cache": {k: cache_info[k] for k in ("teacher_hash", "corpus_fingerprint", "rows", "fingerprint")}}
    return RunPlan(cfg, ddp, scfg, tokenizer_files, column, n_rows, val_rows, cache_info, settings,
                   deleted_rows=deleted, targets=targets)


def resolve_targets(cfg: TrainConfig, cache: TeacherCache, is_main: bool = True) -> tuple[str, ...] | None:
    """The teachers a run learns (--teacher-column NAME, --targets A,B): None for the cache's own teacher alone
    (today's run, byte for byte); an unknown name, or a side teacher behind the version read, is one line."""
    if cfg.teacher_column is None and cfg.targets is None:
        return None
    flag, value = ("--teacher-column", cfg.teacher_column) if cfg.teacher_column is not None else (
        "--targets", cfg.targets)
    names = [n.strip() for n in value.split(",")] if flag == "--targets" else [value]
    known = cache.teacher_names()
    for name in names:
        if name not in known:
            raise UserError(f"{flag} {value}: no teacher {name!r} in {cache.location}; it holds {', '.join(known)}")
    if len(set(names)) != len(names):
        raise UserError(f"{flag} {value}: name each teacher once")
    if names == known[:1]:
        return None
    if cfg.vocab_words:
        raise UserError(f"--vocab-words {cfg.vocab_words} with {flag} {value}: the whole words carry the main "
                        "teacher's outputs only; drop one of them")
    for name in (n for n in names if n != known[0]):
        try:
            cache.side_teacher(name)  # covers the version read
            if is_main and cache.tokenizer_differs(name):
                log(f"student vocabulary: {known[0]}'s tokenizer; {name}'s differs")
        except CacheError as exc:
            raise CacheError(f"{flag} {value}: {exc}") from None
    return tuple(names)


def learnt_teachers(cache: TeacherCache, targets: tuple[str, ...] | None, column: str) -> dict:
    """What the student folder records of the teachers it learnt ({} for the cache's own teacher alone)."""
    if targets is None:
        return {}
    return {"targets": [cache.teacher_info(name, column) for name in targets]}


def schedule(plan: RunPlan, dataset: StreamingCacheDataset, sparse: bool) -> RunPlan:
    """The plan completed once the data is known: each epoch's steps, the warmup, the gradients' kind."""
    cfg = plan.cfg
    epoch_steps = tuple(dataset.steps_per_epoch(e, cfg.num_workers) for e in range(cfg.epochs))
    total = sum(epoch_steps)
    warmup = min(1000, max(1, total // 20)) if cfg.warmup_steps is None else cfg.warmup_steps
    return replace(plan, epoch_steps=epoch_steps, warmup=warmup, sparse=sparse)


@dataclass
class RunState:
    """What moves as the run goes: its place in the data, what it has seen, its time and validation history."""

    epoch: int = 0
    batches_done: int = 0  # of this epoch; a resumed run passes over them, so it trains on the same batches
    step: int = 0
    rows_seen: int = 0
    seconds: float = 0.0  # training time of the runs this one resumes
    history: list[dict] = field(default_factory=list)
    saved_step: int | None = None  # the step of the checkpoint in --out, if any
    # --force: the earlier run's files are removed just before this run's first save (never sooner), once
    replaced: bool = False
    started: float = field(default_factory=time.monotonic)  # when this process's loop began

    def elapsed(self) -> float:
        """Training seconds so far, those of the resumed runs included."""
        return self.seconds + time.monotonic() - self.started

    def epochs_done(self, plan: RunPlan) -> float:
        """Epochs done, the current one's share included (the history's 'epoch')."""
        share = self.batches_done / max(1, plan.epoch_steps[self.epoch]) if self.batches_done else 0.0
        return round(self.epoch + share, 4)

    def to_dict(self) -> dict:
        """The checkpoint's share of the state (the same keys as every checkpoint before)."""
        return {"epoch": self.epoch, "batches_done": self.batches_done, "step": self.step,
                "rows_seen": self.rows_seen, "seconds": self.elapsed(), "history": self.history}

    @classmethod
    def from_dict(cls, saved: dict) -> RunState:
        """The state a checkpoint holds, continued from now."""
        return cls(saved["epoch"], saved["batches_done"], saved["step"], saved["rows_seen"], saved["seconds"],
                   saved["history"], saved_step=saved["step"])
