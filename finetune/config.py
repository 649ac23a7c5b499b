"""The settings of `tc finetune` (FinetuneConfig) and `tc cache-logits` (LogitsConfig), each declared once: the
command-line options are built from these fields (teacher_cache/base/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from teacher_cache.base.errors import UserError
from teacher_cache.base.settings import (
    EPOCHS,
    SEED,
    Checked,
    check_settings,
    comma_list,
    count,
    fraction,
    non_negative,
    positive,
    probability,
    setting,
)


@dataclass
class FinetuneConfig(Checked):
    """Every knob of `tc finetune`; the same config drives student and teacher fine-tuning."""

    model: str = setting("", "Student folder (tc train-student), or a transformers folder / hub name to fine-tune "
                             "as the task teacher.", required=True)
    task: str = setting("sst2", "sst2, mrpc, rte, cola, stsb, or a TSV/CSV/JSONL training file of your own (with "
                                "--text-columns, --label-column).", required=True)
    out: str = setting("ft", "Folder to write: the model, task.json, metrics.json.")
    data_dir: str | None = setting(None, "GLUE folder (<TASK>/train.tsv, dev.tsv). Required, unless the environment "
                                         "variable TC_GLUE_DIR names it.")
    # a task of your own
    text_columns: list[str] | None = setting(None, "Own task: text column, or two comma-separated for pairs.",
                                             parse=comma_list)
    label_column: str = setting("label", "Own task: the label column.")
    labels: list[str] | None = setting(None, "Own task: comma-separated label set (default: those in the training "
                                             "file).", parse=comma_list)
    regression: bool = setting(False, "Own task: the label is a real-valued score.")
    dev_file: str | None = setting(None, "Own task: dev file (default: every 10th training row).")
    # optimisation
    epochs: int = setting(3, "Passes over the training rows.", check=EPOCHS)
    batch_size: int = setting(32, "Examples per step.", check=count(1))
    lr: float | None = setting(None, "Peak learning rate (default 1e-3 student, 5e-4 student with the cosine head "
                                     "(its only weights are the encoder's; measured, benchmarks/RESULTS.md), 5e-5 "
                                     "teacher).", check=positive)
    encoder_lr: float | None = setting(None, "Student: peak learning rate of the encoder (default: --lr, which the "
                                             "head always uses).", check=positive)
    warmup: float = setting(0.1, "Share of the steps with a linear warm-up, then linear decay to 0.", check=probability)
    weight_decay: float = setting(0.01, "AdamW weight decay on weight matrices.", check=non_negative)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: off).", check=non_negative)
    head: str = setting("auto", "Student head: features ([u, v, |u-v|, u*v] or u -> MLP), cosine (a pair's score "
                                "is the cosine of its two vectors, rescaled to the task's range) or auto (cosine "
                                "for pair tasks scored by similarity, such as STS-B; else features).")
    similarity_loss: str = setting("cosent", "Cosine head: cosent (CoSENT ranking loss, as sentence-transformers) "
                                             "or mse (MSE of the cosine to the score scaled to [0, 1]).")
    head_hidden: int = setting(256, "Student head: hidden ReLU width (0: linear).", check=count(0, 65_536))
    dropout: float = setting(0.1, "Student head: dropout.", check=probability)
    max_length: int = setting(128, "Teacher: truncate inputs to N word-pieces (a student keeps its own).",
                              check=count(2, 1_000_000))
    freeze_encoder: bool = setting(False, "Train the head only.")
    # model selection
    select: str = setting("auto", "Epoch to keep: last, dev (best on dev), holdout (best on training rows held out "
                                  "for it, so that dev stays unseen) or auto (holdout for the cosine head, where "
                                  "the zero-shot encoder, epoch 0, is a candidate too, so the kept encoder is "
                                  "never worse than zero-shot on the held-out rows; else last).")
    holdout_rows: int = setting(2000, "--select holdout: hold out every k-th training row, at most this many "
                                      "(k >= 10).", check=count(1))
    interpolate: str = setting("auto", "Student: blend the kept encoder with the one it started from, w = (1 - a) "
                                      "w0 + a w1, a from 0, 0.25, 0.5, 0.75, 1 chosen on the --select split "
                                      "(WiSE-FT, Wortsman et al. 2022; keeps more of the distilled encoder). on, "
                                      "off, or auto (on for the cosine head, with its default --select).")
    # task-specific distillation
    kd_cache: str | None = setting(None, "Teacher logits of the task's training rows (tc cache-logits): adds "
                                         "task-specific KD.")
    kd_alpha: float = setting(0.5, "KD weight: (1-a)*CE + a*MSE(logits, teacher logits).", check=fraction)
    # run
    max_train_rows: int | None = setting(None, "Use only the first N training rows.", check=count(1))
    max_eval_rows: int | None = setting(None, "Evaluate on the first N rows of each split.", check=count(1))
    seed: int = setting(0, "Seed for the head, dropout and data order.", check=SEED)
    device: str = setting("cpu", "cpu or cuda.")
    force: bool = setting(False, "Write into a non-empty --out (replacing a run's own files).")
    quiet: bool = setting(False, "No progress on stderr.")
    online: bool = setting(False, "Allow downloading a hub model (offline by default).")

    def validate(self) -> None:
        """Raise a one-line UserError naming the first bad flag."""
        check_settings(self)  # the ranges the fields declare, again: a value may have been set since
        choices = {"head": ("auto", "features", "cosine"), "similarity_loss": ("cosent", "mse"),
                   "select": ("auto", "last", "dev", "holdout"), "interpolate": ("off", "on", "auto")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: choose one of {', '.join(allowed)}")


@dataclass
class LogitsConfig(Checked):
    """Every knob of `tc cache-logits` (and of `tc encode --logits`, which maps its own flags onto these)."""

    model: str = setting("", "Teacher fine-tuned with tc finetune.", required=True)
    out: str = setting("logits_cache", "Cache folder to write (kind logits; resumable).")
    task: str | None = setting(None, "Task (default: the one the teacher was fine-tuned on).")
    data_dir: str | None = setting(None, "GLUE folder (as for tc finetune).")
    max_rows: int | None = setting(None, "Cache only the first N training rows.", check=count(1))
    batch_size: int = setting(64, "Rows per forward pass.", check=count(1))
    shard_size: int = setting(50_000, "Rows per shard file.", check=count(1))
    device: str = setting("cpu", "cpu or cuda.")
    augment: int = setting(0, "Also cache N synthetic variants of every training example (Tang et al. 2019: words "
                              "masked with p 0.1, n-gram sampling with p 0.25); tc finetune --kd-cache learns them "
                              "from the logits alone.", check=count(0, 1000))
    augment_seed: int = setting(0, "Seed of the synthetic variants.", check=SEED)
    force: bool = setting(False, "Overwrite a cache made with other settings.")
    quiet: bool = setting(False, "No progress on stderr.")
    rows_file: str | None = None  # another file in the task's layout instead of its training rows (tc encode --logits)

    def validate(self) -> None:
        """Raise a one-line UserError naming the first bad flag (every number's range is declared by its field)."""
        check_settings(self)
