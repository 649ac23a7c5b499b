"""The settings of a distillation run (`tc train-student`), each declared once: its options are built from these
fields (teacher_cache/base/settings.py). The recipe (student/training/recipes.py, default static) fills those left
None when the config is made, so the CLI and a library caller get the same run."""

from __future__ import annotations

from dataclasses import dataclass

from student.training.recipes import DEFAULT_RECIPE, RECIPE_KNOBS, apply_recipe
from teacher_cache.base.errors import UserError
from teacher_cache.base.settings import (
    EPOCHS,
    SEED,
    Checked,
    check_settings,
    count,
    fraction,
    int_list,
    non_negative,
    positive,
    probability,
    setting,
)
from teacher_cache.shard_cache import parse_size

DEDUP_MODES = ("keep-first", "count")  # how a text the corpus holds several times is trained on (data.py)
LOSSES = ("mse", "cosine", "contrastive", "relational")  # what student/training/losses.py computes (one_loss)


def parse_loss(spec: str) -> list[str]:
    """The loss names in a spec such as 'cosine+relational'; raises ValueError naming an unknown one."""
    names = [part.strip() for part in spec.split("+")]
    for name in names:
        if name not in LOSSES:
            raise ValueError(f"--loss {spec}: unknown loss {name!r}; choose from {', '.join(LOSSES)} "
                             "(join several with '+')")
    return names


@dataclass
class TrainConfig(Checked):
    """Every training knob. None means: derive it (from the architecture, the cache or the run length); a recipe knob
    left None takes the recipe's value when the config is made."""

    # (recipe=None, from Python: no recipe, the knobs it would fill take student/training/recipes.py BARE)
    recipe: str | None = setting("static", "A measured recipe to start from: static (default; ~35x the teacher's "
                                           "speed), compact, paper (the paper's BiLSTM, hidden 128 on a "
                                           "static path) or paper-512 (the paper's sizes and MSE loss); "
                                           "student/training/recipes.py. Every other option overrides it.")
    # data
    shards: str = setting("out", "Cache written by `tc encode`: a folder or a store URL (s3://bucket/prefix).")
    out: str = setting("student_out", "Student folder to write, or a store URL (s3://bucket/prefix, written "
                                      "through a local staging folder); refused when it holds other things, "
                                      "unless --force.")
    target_column: str | None = setting(None, "Teacher vector to learn: a pooling (mean, cls) or column name; "
                                              "default the cache's first.")
    teacher_column: str | None = setting(None, "Teacher whose vectors to learn (a name `tc info` lists; default the "
                                               "cache's own).")
    targets: str | None = setting(None, "Comma-separated teacher names: learn the concatenation of their "
                                        "L2-normalised vectors (an ensemble).")
    version: int | None = setting(None, "Cache version to learn from (default the newest; `tc info` lists them).",
                                  check=count(1))
    dedup: str = setting("keep-first", "keep-first: each distinct text once an epoch; count: as often as the "
                                       "corpus holds it (the cache counts duplicates).")
    max_rows: int | None = setting(None, "Use only the first N rows (ids) of the cache.", check=count(1))
    val_rows: int | None = setting(None, "Held-out rows, chosen by id (default min(2000, 10%)).", check=count(0))
    buffer_size: int = setting(10_000, "Rows in the shuffle buffer.", check=count(1))
    interleave_shards: int = setting(1, "Read N shards at once, each row drawn from one of them, so that a batch "
                                        "mixes N shards (for a cache written in corpus order: one book or source "
                                        "per shard). Memory: N shards' texts.", check=count(1, 256))
    pool_batches: int = setting(50, "Batches' worth of rows sorted together by length.", check=count(1))
    num_workers: int = setting(0, "DataLoader worker processes (each reads its own shards).", check=count(0, 256))
    cache_dir: str | None = setting(None, "A remote --shards' local shard cache (default: under the user cache "
                                          "dir, $TC_CACHE_DIR).")
    cache_limit: int | None = setting(None, "Most bytes a remote --shards' local shard cache holds (e.g. 20GB, "
                                            "the default; at least one shard).", parse=parse_size)
    download_rate: int | None = setting(None, "Cap a remote --shards' downloads at this many bytes per second "
                                              "(e.g. 50MB; default: no cap).", parse=parse_size)
    # model
    arch: str | None = setting(None, "bilstm (the paper's), cnn or static (model2vec-like).")
    emb_dim: int | None = setting(None, "Embedding width (bilstm, cnn 300; static 256).", check=count(1, 65_536))
    hidden: int | None = setting(None, "LSTM units per direction (512) or CNN channels per width (256).",
                                 check=count(1, 65_536))
    layers: int = setting(1, "BiLSTM layers.", check=count(1, 256))
    pooling: str | None = setting(None, "max or mean over time (default: max, static mean).")
    dropout: float = setting(0.0, "Dropout in the encoder.", check=probability)
    max_length: int | None = setting(None, "Truncate sentences to N word-pieces (default: the cache's).",
                                     check=count(2, 1_000_000))
    init_embeddings: str | None = setting(None, "teacher (the cache's token embeddings, PCA-projected), outputs "
                                                "(the teacher's output for each token) or random.")
    token_weights: bool | None = setting(None, "Static (or cnn with --static-path): learn a weight per token, "
                                               "SIF-initialised.")
    kernel_sizes: list[int] | None = setting(None, "CNN: comma-separated odd convolution widths (3,5,7).",
                                             parse=int_list)
    static_path: bool | None = setting(None, "CNN or BiLSTM: add a static student's path beside the "
                                             "convolutions / the LSTM (started from the token outputs).")
    sif: float = setting(1e-3, "SIF's a in a/(a+p(token)) for the initial token weights (0: none).", check=non_negative)
    vocab_words: int | None = setting(None, "Add the cache's first N whole words (written by `tc vocab`) to the "
                                            "vocabulary, each started from the teacher's output for it (0: none).",
                                      check=count(0, 10_000_000))
    # optimisation
    epochs: int | None = setting(None, "Passes over the training rows.", check=EPOCHS)
    batch_size: int | None = setting(None, "Sentences per step (per process with --nproc).", check=count(1))
    lr: float | None = setting(None, "Peak learning rate (warm-up, then --decay).", check=positive)
    emb_lr: float | None = setting(None, "Peak learning rate of the token embeddings and weights (unset: --lr).",
                                   check=positive)
    min_lr_ratio: float = setting(0.1, "The decay ends at lr * this.", check=fraction)
    warmup_steps: int | None = setting(None, "Linear warm-up steps (default 5% of the steps, at most 1000).",
                                       check=count(0))
    decay: str = setting("cosine", "cosine, linear or constant.")
    weight_decay: float = setting(0.01, "AdamW weight decay, on weight matrices other than the embedding.",
                                  check=non_negative)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: off).", check=non_negative)
    sparse_embeddings: str = setting("auto", "yes: sparse embedding gradients and SparseAdam; auto: yes on CPU.")
    loss: str | None = setting(None, "mse (the paper's), cosine, contrastive (in-batch InfoNCE) or relational "
                                     "(in-batch similarity KL); join several with '+'.")
    temperature: float = setting(0.05, "Temperature of the contrastive and relational losses.", check=positive)
    # run
    seed: int = setting(0, "Seed for the initialisation and the data order.", check=SEED)
    device: str = setting("cpu", "cpu or cuda.")
    precision: str = setting("auto", "auto, fp32, bf16 or fp16 (autocast on CUDA only).")
    eval_every: int = setting(0, "Evaluate every N steps as well as at each epoch end (0: epoch ends only).",
                              check=count(0))
    checkpoint_every: int = setting(500, "Checkpoint every N steps as well as at each epoch end (0: epoch ends "
                                         "only).", check=count(0))
    max_steps: int | None = setting(None, "Stop after N steps in all, with a checkpoint to --resume from.",
                                    check=count(1))
    resume: bool = setting(False, "Continue from <out>/checkpoint with the same settings.")
    force: bool = setting(False, "Start over in an --out that holds an earlier run or other files (only this "
                                 "command's own files are replaced).")
    quiet: bool = setting(False, "No progress on stderr.")

    def __post_init__(self) -> None:
        """Fill the knobs left None from the recipe (one place, for `tc train-student` and `train(TrainConfig())`
        alike), then check every number."""
        given = {k: getattr(self, k) for k in RECIPE_KNOBS}
        for name, value in apply_recipe(self.recipe, given).items():
            setattr(self, name, value)
        super().__post_init__()

    def validate(self) -> None:
        """Raise a one-line UserError naming the first bad flag."""
        check_settings(self)  # the ranges the fields declare, again: a value may have been set since
        choices = {"arch": ("bilstm", "cnn", "static"), "init_embeddings": ("teacher", "outputs", "random"),
                   "decay": ("cosine", "linear", "constant"),
                   "sparse_embeddings": ("auto", "yes", "no"), "precision": ("auto", "fp32", "bf16", "fp16")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {value}: choose one of {', '.join(allowed)}")
        try:
            losses = parse_loss(self.loss)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if {"contrastive", "relational"} & set(losses) and self.batch_size < 2:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 2 (the in-batch losses compare "
                            "sentences within a batch)")
        if self.teacher_column is not None and self.targets is not None:
            raise UserError(f"--teacher-column {self.teacher_column} and --targets {self.targets}: give one, not "
                            "both (--targets NAME alone is one teacher too)")
        has_static = self.arch == "static" or (self.arch in ("cnn", "bilstm") and self.static_path)
        if self.token_weights and not has_static:
            raise UserError(f"--token-weights: static students (or --arch cnn/bilstm --static-path) only, not --arch "
                             f"{self.arch}")
        if self.static_path and self.arch not in ("cnn", "bilstm"):
            raise UserError(f"--static-path: --arch cnn or bilstm only, not {self.arch}")


# Knobs that do not change what is learned: a resumed run may set them differently.
RUN_ONLY = ("shards", "out", "cache_dir", "cache_limit", "download_rate", "device", "precision", "eval_every",
            "checkpoint_every", "max_steps", "resume", "force", "quiet")


def recipe_config(name: str | None, **overrides) -> TrainConfig:
    """TrainConfig of recipe `name` (default DEFAULT_RECIPE) with the given knobs (None values ignored) on top."""
    return TrainConfig(recipe=name or DEFAULT_RECIPE, **{k: v for k, v in overrides.items() if v is not None})
