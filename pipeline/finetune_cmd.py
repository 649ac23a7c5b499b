"""`tc finetune`, `tc cache-logits` and `tc predict`: task fine-tuning of students and teachers, and task KD."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from teacher_cache.errors import CacheError


def split_list(value: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None stays None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def model_kind(name: str) -> str:
    """'student' for a student folder, 'teacher' for a transformers folder or hub name; else a one-line error."""
    path = Path(name)
    if path.is_dir():
        config = path / "config.json"
        if (path / "manifest.json").exists():
            raise CacheError(f"--model {name}: a teacher cache, not a model; pass a student or transformers folder")
        try:
            data = json.loads(config.read_text()) if config.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CacheError(f"--model {name}: unreadable config.json") from None
        if "arch" in data:
            return "student"
        if "model_type" in data:
            return "teacher"
        raise CacheError(f"--model {name}: not a student folder (no config.json with 'arch') nor a transformers "
                         "model folder")
    if path.exists():
        raise CacheError(f"--model {name}: is a file, not a model folder")
    if name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1:
        raise CacheError(f"--model {name}: no such folder")
    return "teacher"  # a hub name; loading it says in one line when it is not there


def finetune(
    model: Annotated[str, typer.Option(help="Student folder (tc train-student), or a transformers folder / hub name "
                                            "to fine-tune as the task teacher.")],
    task: Annotated[str, typer.Option(help="sst2, mrpc, rte, cola, stsb, or a TSV/CSV/JSONL training file of "
                                           "your own (with --text-columns, --label-column).")],
    out: Annotated[Path, typer.Option(help="Folder to write: the model, task.json, metrics.json.")] = Path("ft"),
    data_dir: Annotated[Path, typer.Option(help="GLUE folder (<TASK>/train.tsv, dev.tsv). Default: "
                                                "../shared/data/glue next to the repository.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak learning rate (default 1e-3 student, 5e-5 teacher).")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    kd_cache: Annotated[Path, typer.Option(help="Teacher logits of the task's training rows (tc cache-logits): "
                                                "adds task-specific KD.")] = None,
    kd_alpha: Annotated[float, typer.Option(help="KD weight: (1-a)*CE + a*MSE(logits, teacher logits).")] = 0.5,
    freeze_encoder: Annotated[bool, typer.Option(help="Train the head only.")] = False,
    max_train_rows: Annotated[int, typer.Option(help="Use only the first N training rows.")] = None,
    max_eval_rows: Annotated[int, typer.Option(help="Evaluate on the first N rows of each split.")] = None,
    text_columns: Annotated[str, typer.Option(help="Own task: text column, or two comma-separated for pairs.")]
    = None,
    label_column: Annotated[str, typer.Option(help="Own task: the label column.")] = "label",
    labels: Annotated[str, typer.Option(help="Own task: comma-separated label set (default: those in the "
                                             "training file).")] = None,
    regression: Annotated[bool, typer.Option(help="Own task: the label is a real-valued score.")] = False,
    dev_file: Annotated[Path, typer.Option(help="Own task: dev file (default: every 10th training row).")] = None,
    head_hidden: Annotated[int, typer.Option(help="Student head: hidden ReLU width (0: linear).")] = 256,
    max_length: Annotated[int, typer.Option(help="Teacher: truncate inputs to N word-pieces.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for the head, dropout and data order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    online: Annotated[bool, typer.Option(help="Allow downloading a hub model (offline by default).")] = False,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out (replacing a run's own files).")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress on stderr.")] = False,
) -> None:
    """Fine-tune a student (encoder + head; pairs as [u, v, |u-v|, u*v]) or a transformers teacher on a task.

    Dev scores go to <out>/metrics.json after every epoch. With --kd-cache the student also learns the teacher's
    logits: loss (1-a)*CE + a*MSE (STS-B: MSE on the score).

    Example: tc finetune --model student_out/ --task sst2 --out ft/ --kd-cache logits_cache/ --kd-alpha 0.5
    """
    from pipeline.failures import check_device
    from student.finetune import FinetuneConfig

    check_device(device)
    cfg = FinetuneConfig(model=str(model), task=task, out=str(out), data_dir=str(data_dir) if data_dir else None,
                         text_columns=split_list(text_columns), label_column=label_column, labels=split_list(labels),
                         regression=regression, dev_file=str(dev_file) if dev_file else None, epochs=epochs,
                         batch_size=batch_size, lr=lr, head_hidden=head_hidden, max_length=max_length,
                         freeze_encoder=freeze_encoder, kd_cache=str(kd_cache) if kd_cache else None,
                         kd_alpha=kd_alpha, max_train_rows=max_train_rows, max_eval_rows=max_eval_rows, seed=seed,
                         device=device, force=force, quiet=quiet, online=online)
    if model_kind(cfg.model) == "student":
        from student.finetune import finetune_student

        metrics = finetune_student(cfg)
    else:
        from pipeline.teacher_finetune import finetune_teacher

        metrics = finetune_teacher(cfg)
    scores = "  ".join(f"{split} {k} {v:.4f}" for split, s in metrics["final"].items() for k, v in s.items())
    typer.echo(f"{out}: {metrics['kind']} fine-tuned on {metrics['task']} ({metrics['train_rows']:,} rows, "
               f"{metrics['epochs_done']} epoch(s)): {scores}")


def cache_logits(
    model: Annotated[Path, typer.Option(help="Teacher fine-tuned with tc finetune.")],
    out: Annotated[Path, typer.Option(help="Cache folder to write (kind logits; resumable).")] = Path("logits_cache"),
    task: Annotated[str, typer.Option(help="Task (default: the one the teacher was fine-tuned on).")] = None,
    data_dir: Annotated[Path, typer.Option(help="GLUE folder (default ../shared/data/glue).")] = None,
    max_rows: Annotated[int, typer.Option(help="Cache only the first N training rows.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 64,
    shard_size: Annotated[int, typer.Option(help="Rows per shard file.")] = 50_000,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    augment: Annotated[int, typer.Option(help="Also cache N synthetic variants of every training example (Tang et "
                                              "al. 2019: words masked with p 0.1, n-gram sampling with p 0.25); "
                                              "tc finetune --kd-cache learns them from the logits alone.")] = 0,
    augment_seed: Annotated[int, typer.Option(help="Seed of the synthetic variants.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite a cache made with other settings.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress on stderr.")] = False,
) -> None:
    """Run a fine-tuned teacher over its task's training rows once and cache the logits, for task KD.

    Written like `tc encode` (Arrow shards, manifest, resumes when rerun); ids are the training rows' positions,
    then (with --augment N) the N variants of each row in turn.

    Example: tc cache-logits --model ft_teacher/ --task sst2 --out logits_cache/ --augment 4
    """
    from pipeline.teacher_finetune import cache_logits as run
    from student.augment import AugmentConfig

    if augment < 0:
        raise CacheError(f"--augment {augment}: must be 0 or more")
    manifest = run(model, out, task, str(data_dir) if data_dir else None, max_rows, batch_size, shard_size, device,
                   force, quiet, augment=AugmentConfig(copies=augment, seed=augment_seed))
    if manifest.extra.get("augment"):
        typer.echo(f"{out}: {manifest.extra['train_rows']:,} training rows + {augment} synthetic variants each",
                   err=True)
    typer.echo(f"{out}: {manifest.rows:,} rows x {manifest.dim} logits ({manifest.extra.get('task')})")


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
    from pipeline.failures import check_device, check_out_file, check_positive
    from student.task_model import read_task_json
    from student.tasks import TaskSpec, compute_metrics, decode, load_inputs

    check_positive(batch_size, "--batch-size")
    check_device(device)
    check_out_file(out)
    meta = read_task_json(model)
    kind, spec = meta.get("kind"), TaskSpec.from_dict(meta["task"])
    data = load_inputs(spec, input, split_list(text_columns))
    started = time.perf_counter()
    if kind == "student":
        from student.task_model import load_task_model

        outputs = load_task_model(model, device)[0].predict(data, batch_size)
    else:
        from pipeline.teacher_finetune import load_finetuned_teacher

        outputs = load_finetuned_teacher(model, device)[0].predict(data, batch_size)[0]
    seconds = time.perf_counter() - started
    lines = ["index\tprediction"] + [f"{i}\t{p}" for i, p in enumerate(decode(spec, outputs))]
    if out is None:
        typer.echo("\n".join(lines))
    else:
        from teacher_cache.manifest import atomic_write_text

        atomic_write_text(out, "\n".join(lines) + "\n")  # a full disk keeps the previous file and says so
    scores = compute_metrics(spec, outputs, data.labels) if data.labels is not None else {}
    where = f" to {out}" if out else ""
    metric = ("; " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())) if scores else ""
    print(f"{len(data):,} predictions ({len(data) / max(seconds, 1e-9):,.0f}/s){where}{metric}", file=sys.stderr)
