"""`tc finetune`, `tc cache-logits`, `tc predict`: task fine-tuning of students and teachers, and task KD."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from finetune.config import FinetuneConfig, LogitsConfig
from pipeline.failures import check_device, check_out_file, check_positive
from pipeline.options import build, options_from
from student.config import StudentConfig, read_config_json
from teacher_cache.base.atomic import atomic_write
from teacher_cache.base.errors import UserError
from teacher_cache.base.progress import log
from teacher_cache.base.settings import comma_list


def model_kind(name: str) -> str:
    """'student' for a student folder, 'teacher' for a transformers folder or hub name; else a one-line error.

    A folder gets the checks of `StudentConfig.load` (the student's own loader), unless its config.json is a
    transformers model's ('model_type', no 'arch')."""
    path = Path(name)
    if path.is_dir():
        try:
            data = read_config_json(path)
            if isinstance(data, dict) and "model_type" in data and "arch" not in data:
                return "teacher"
            StudentConfig.from_json(data, path)
        except UserError as exc:
            raise UserError(f"--model {exc}") from None
        return "student"
    if path.exists():
        raise UserError(f"--model {name}: is a file, not a model folder")
    if name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1:
        raise UserError(f"--model {name}: no such folder")
    return "teacher"  # a hub name; loading it says in one line when it is not there


@options_from(FinetuneConfig)
def finetune(**settings) -> None:
    """Fine-tune a student (encoder + head) or a transformers teacher on a task.

    A student classifies from [u, v, |u-v|, u*v] (pairs) or u; a pair scored by similarity (STS-B) is scored by the
    cosine of its two vectors (--head auto), trained with CoSENT, so the folder stays a sentence encoder; by default
    (--select auto) its kept epoch is the best by Spearman on held-out training rows, the zero-shot encoder
    (epoch 0) included, so fine-tuning never leaves it below its zero-shot score there. Scores go to
    <out>/metrics.json after every epoch; --select dev|holdout keeps the best epoch. With --kd-cache the student
    also learns the teacher's logits: loss (1-a)*CE + a*MSE (STS-B: on the score).

    Example: tc finetune --model student_out/ --task sst2 --out ft/ --kd-cache logits_cache/ --kd-alpha 0.5
    """
    cfg = build(FinetuneConfig, settings)
    check_device(cfg.device)
    from student.remote import student_folder

    local = student_folder(cfg.model, "--model")  # a store URL's model downloaded first; a path as given
    cfg = replace(cfg, model=str(local)) if str(local) != str(cfg.model) else cfg
    if model_kind(cfg.model) == "student":
        from finetune.students import finetune_student

        metrics = finetune_student(cfg)
    else:
        from finetune.teachers import finetune_teacher

        metrics = finetune_teacher(cfg)
    if metrics.get("zero_shot_kept"):
        typer.echo(metrics["zero_shot_kept"]["note"], err=True)
    scores = "  ".join(f"{split} {k} {v:.4f}" for split, s in metrics["final"].items() for k, v in s.items())
    typer.echo(f"{cfg.out}: {metrics['kind']} fine-tuned on {metrics['task']} ({metrics['train_rows']:,} rows, "
               f"{metrics['epochs_done']} epoch(s)): {scores}")


@options_from(LogitsConfig)
def cache_logits(**settings) -> None:
    """Run a fine-tuned teacher over its task's training rows once and cache the logits, for task KD.

    Written like `tc encode` (Arrow shards, manifest, resumes when rerun); ids are the training rows' positions,
    then (with --augment N) the N variants of each row in turn. `tc encode --logits` does the same.

    Example: tc cache-logits --model ft_teacher/ --task sst2 --out logits_cache/ --augment 4
    """
    from finetune.teachers import cache_logits as run

    cfg = build(LogitsConfig, settings)
    manifest = run(cfg)
    if manifest.extra.get("augment"):
        typer.echo(f"{cfg.out}: {manifest.extra['train_rows']:,} training rows + {cfg.augment} synthetic variants "
                   "each", err=True)
    typer.echo(f"{cfg.out}: {manifest.rows:,} rows x {manifest.dim} logits ({manifest.extra.get('task')})")


def predict(
    model: Annotated[Path, typer.Option(help="Folder written by tc finetune (student or teacher).")],
    input: Annotated[Path, typer.Option("--input", help="TSV/CSV/JSONL with the task's column names, the task's "
                                                        "own layout, or plain text (pairs tab-separated).")],
    out: Annotated[Path, typer.Option(help="Predictions TSV (index, prediction); default: stdout.")] = None,
    text_columns: Annotated[str, typer.Option(help="Column(s) holding the text(s), comma-separated.")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 128,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Predict labels (or STS-B scores) for a file; when it carries labels, print the task's metrics on stderr.

    Example: tc predict --model ft/ --input SST-2/test.tsv --out preds.tsv
    """
    from finetune.metrics import compute_metrics, decode
    from finetune.task_data import load_inputs
    from finetune.task_json import read_task_json

    check_positive(batch_size, "--batch-size")
    check_device(device)
    check_out_file(out, input)  # before anything is read or written: an --out over the --input is refused
    task = read_task_json(model)  # read and checked once; the loaders below take it as it is
    spec = task.spec
    data = load_inputs(spec, input, comma_list(text_columns))
    started = time.perf_counter()
    if task.kind == "student":
        from finetune.task_model import load_task_model

        outputs = load_task_model(model, device, task)[0].predict(data, batch_size)
    else:
        from finetune.teachers import load_finetuned_teacher

        outputs = load_finetuned_teacher(model, device, task)[0].predict(data, batch_size)[0]
    seconds = time.perf_counter() - started
    lines = ["index\tprediction"] + [f"{i}\t{p}" for i, p in enumerate(decode(spec, outputs))]
    if out is None:
        typer.echo("\n".join(lines))
    else:
        atomic_write(out, "\n".join(lines) + "\n")  # a full disk keeps the previous file and says so
    scores = compute_metrics(spec, outputs, data.labels) if data.labels is not None else {}
    where = f" to {out}" if out else ""
    metric = ("; " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())) if scores else ""
    log(f"{len(data):,} predictions ({len(data) / max(seconds, 1e-9):,.0f}/s){where}{metric}")
