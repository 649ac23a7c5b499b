"""The settings of a distillation run (`tc train-student`), each declared once: its options are built from these
fields (teacher_cache/settings.py). A recipe (student/recipes.py) fills some of them first."""

from __future__ import annotations

from dataclasses import dataclass

from teacher_cache.errors import UserError
from teacher_cache.settings import int_list, setting


@dataclass
class TrainConfig:
    """Every training knob. None means: derive it (from the architecture, the cache or the run length)."""

    recipe: str | None = setting(None, "A measured recipe to start from: static (default; ~35x the teacher's "
                                       "speed), compact or paper (the paper's BiLSTM); student/recipes.py. Every "
                                       "other option overrides it.")
    # data
    shards: str = setting("out", "Cache folder written by `tc encode`.")
    out: str = setting("student_out", "Student folder to write (created; refused when it holds other things, "
                                      "unless --force).")
    target_column: str | None = setting(None, "Teacher vector to learn: a pooling (mean, cls) or column name; "
                                              "default the cache's first.")
    max_rows: int | None = setting(None, "Use only the first N rows of the cache.")
    val_rows: int | None = setting(None, "Held-out rows, chosen by id (default min(2000, 10%)).")
    buffer_size: int = setting(10_000, "Rows in the shuffle buffer.")
    pool_batches: int = setting(50, "Batches' worth of rows sorted together by length.")
    num_workers: int = setting(0, "DataLoader worker processes (each reads its own shards).")
    # model
    arch: str = setting("bilstm", "bilstm (the paper's), cnn or static (model2vec-like).")
    emb_dim: int | None = setting(None, "Embedding width (bilstm, cnn 300; static 256).")
    hidden: int | None = setting(None, "LSTM units per direction (512) or CNN channels per width (256).")
    layers: int = setting(1, "BiLSTM layers.")
    pooling: str | None = setting(None, "max or mean over time (default: max, static mean).")
    dropout: float = setting(0.0, "Dropout in the encoder.")
    max_length: int | None = setting(None, "Truncate sentences to N word-pieces (default: the cache's).")
    init_embeddings: str = setting("teacher", "teacher (the cache's token embeddings, PCA-projected), outputs "
                                              "(the teacher's output for each token) or random.")
    token_weights: bool = setting(False, "Static (or cnn with --static-path): learn a weight per token, "
                                         "SIF-initialised.")
    kernel_sizes: list[int] | None = setting(None, "CNN: comma-separated odd convolution widths (3,5,7).",
                                             parse=int_list)
    static_path: bool = setting(False, "CNN: add a static student's path beside the convolutions (started from "
                                       "the token outputs).")
    sif: float = setting(1e-3, "SIF's a in a/(a+p(token)) for the initial token weights (0: none).")
    # optimisation
    epochs: int = setting(3, "Passes over the training rows.")
    batch_size: int = setting(128, "Sentences per step (per process with --nproc).")
    lr: float = setting(1e-3, "Peak learning rate (warm-up, then --decay).")
    emb_lr: float | None = setting(None, "Peak learning rate of the token embeddings and weights (unset: --lr).")
    min_lr_ratio: float = setting(0.1, "The decay ends at lr * this.")
    warmup_steps: int | None = setting(None, "Linear warm-up steps (default 5% of the steps, at most 1000).")
    decay: str = setting("cosine", "cosine, linear or constant.")
    weight_decay: float = setting(0.01, "AdamW weight decay, on weight matrices other than the embedding.")
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: off).")
    sparse_embeddings: str = setting("auto", "yes: sparse embedding gradients and SparseAdam; auto: yes on CPU.")
    loss: str = setting("mse", "mse (the paper's), cosine, contrastive (in-batch InfoNCE) or relational (in-batch "
                               "similarity KL); join several with '+'.")
    temperature: float = setting(0.05, "Temperature of the contrastive and relational losses.")
    # run
    seed: int = setting(0, "Seed for the initialisation and the data order.")
    device: str = setting("cpu", "cpu or cuda.")
    precision: str = setting("auto", "auto, fp32, bf16 or fp16 (autocast on CUDA only).")
    eval_every: int = setting(0, "Evaluate every N steps as well as at each epoch end (0: epoch ends only).")
    checkpoint_every: int = setting(500, "Checkpoint every N steps as well as at each epoch end (0: epoch ends "
                                         "only).")
    max_steps: int | None = setting(None, "Stop after N steps in all, with a checkpoint to --resume from.")
    resume: bool = setting(False, "Continue from <out>/checkpoint with the same settings.")
    force: bool = setting(False, "Start over in an --out that holds an earlier run or other files (only this "
                                 "command's own files are replaced).")
    quiet: bool = setting(False, "No progress on stderr.")

    def validate(self) -> None:
        """Raise a one-line UserError naming the first bad flag."""
        choices = {"arch": ("bilstm", "cnn", "static"), "init_embeddings": ("teacher", "outputs", "random"),
                   "decay": ("cosine", "linear", "constant"),
                   "sparse_embeddings": ("auto", "yes", "no"), "precision": ("auto", "fp32", "bf16", "fp16")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {value}: choose one of {', '.join(allowed)}")
        from student.losses import parse_loss  # (torch: imported only when a run starts)

        try:
            losses = parse_loss(self.loss)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        in_batch = {"contrastive", "relational"} & set(losses)
        minimum = {"epochs": 1, "batch_size": 2 if in_batch else 1, "max_rows": 1, "val_rows": 0,
                   "buffer_size": 1, "pool_batches": 1, "num_workers": 0, "layers": 1, "eval_every": 0,
                   "checkpoint_every": 0, "max_steps": 1, "warmup_steps": 0, "emb_dim": 1, "hidden": 1,
                   "max_length": 2}
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be at least {low}")
        for name in ("lr", "temperature", "emb_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise UserError(f"--{name} {getattr(self, name)}: must be positive")
        has_static = self.arch == "static" or (self.arch == "cnn" and self.static_path)
        if self.token_weights and not has_static:
            raise UserError(f"--token-weights: static students (or --arch cnn --static-path) only, not --arch "
                             f"{self.arch}")
        if self.static_path and self.arch != "cnn":
            raise UserError(f"--static-path: --arch cnn only, not {self.arch}")
        for name in ("weight_decay", "grad_clip", "sif"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must not be negative")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"--min-lr-ratio {self.min_lr_ratio}: must be in [0, 1]")


# Knobs that do not change what is learned: a resumed run may set them differently.
RUN_ONLY = ("shards", "out", "device", "precision", "eval_every", "checkpoint_every", "max_steps", "resume",
            "force", "quiet")
