"""`tc probe`, `tc eval`, `tc demo`: neighbour probes against the cache, STS benchmarks for students and teachers,
and the whole pipeline on the bundled sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import DemoConfig, ProbeConfig
from pipeline.failures import check_positive
from pipeline.options import build, options_from
from teacher_cache.base.errors import UserError
from teacher_cache.base.settings import comma_list


@options_from(ProbeConfig)
def probe(**settings) -> None:
    """Compare the student's nearest neighbours with the teacher's on held-out cached rows (no teacher loaded).

    Reports kNN@k agreement, recall of the teacher's top-k in the student's top-10/50/100, Spearman of neighbour
    similarities, mean cosine, the worst queries side by side, and PNG plots.

    Example: tc probe --shards out/ --student student_out/ --k 10 --queries 1000 --query "The cat sat on the mat."
    """
    from pipeline.probe import run_probe, summary_line

    cfg = build(ProbeConfig, settings)
    cfg.max_rows = cfg.max_rows or None  # 0: every row
    result = run_probe(cfg)
    typer.echo(f"{summary_line(result)}; report in {cfg.report}/report.md")


def eval_(
    student: Annotated[list[Path], typer.Option(help="Student folder(s) to evaluate (repeatable).")] = None,
    teacher: Annotated[list[str], typer.Option(help="Teacher folder or hub name(s); 'default' for the bundled "
                                                    "all-MiniLM-L6-v2 (repeatable).")] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated: sts-b (test), sts-b-dev, sick-r, sts12..sts16.")]
    = "sts-b,sts-b-dev",
    data_dir: Annotated[Path, typer.Option(help="Folder with other STS sets in the SentEval layout "
                                                "(STS12-16 STS.input.*/STS.gs.*, SICK_test_annotated.txt).")] = None,
    batch_size: Annotated[int, typer.Option(help="Encode batch size for students.")] = 128,
) -> None:
    """STS Spearman (x100, cosine) for students and teachers, side by side in one table.

    STS-B dev and test ship in data/stsbenchmark; other sets are read from --data-dir.

    Example: tc eval --student student_out/ --teacher default --tasks sts-b,sts-b-dev
    """
    from pipeline.sts import TASKS, load_task, sts_spearman  # (scipy.stats: 0.6 s, not for `tc --help`)

    check_positive(batch_size, "--batch-size")
    names = comma_list(tasks) or []
    for name in names:
        if name not in TASKS:
            raise UserError(f"--tasks {name}: unknown task; choose from {', '.join(TASKS)}")
    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    if not student and not teacher:
        raise UserError("give --student PATH and/or --teacher PATH_OR_NAME (or --teacher default)")
    task_pairs = [load_task(name, data_dir) for name in names]
    rows = []
    for label, encode in model_encoders(student or [], teacher or [], batch_size):
        rows.append((label, [sts_spearman(encode, pairs) for pairs in task_pairs]))
    typer.echo(format_table(["model"] + [p.name for p in task_pairs], rows))


def model_encoders(students: list[Path], teachers: list[str], batch_size: int):
    """(label, encode function) for each model asked for, loaded one at a time."""
    from student.student import load_student_folder

    for path in students:
        model = load_student_folder(path, "--student")
        yield f"student {path}", lambda s, m=model: m.encode(s, batch_size=batch_size)
    for name in teachers:
        from teacher_cache.encode.batching import teacher_encoder

        yield f"teacher {name}", teacher_encoder(None if name == "default" else name)


def format_table(header: list[str], rows: list[tuple[str, list[float]]]) -> str:
    """A markdown table of scores with one decimal... two, as STS papers do."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label] + [f"{v:.2f}" for v in values]) + " |" for label, values in rows]
    return "\n".join(lines)


@options_from(DemoConfig, unset={"arch": "the recipe's", "epochs": "the recipe's", "lr": "the recipe's"})
def demo(**settings) -> None:
    """Run the whole pipeline on the bundled sample: encode -> train-student -> probe -> eval, then one table.

    Takes about a minute on 2 CPU cores; rerunning reuses the finished cache.

    Example: tc demo --out demo/ --recipe static
    """
    from pipeline.demo import run_demo

    cfg = build(DemoConfig, settings)
    if cfg.epochs is not None and cfg.epochs < 1:
        raise UserError(f"--epochs {cfg.epochs}: must be at least 1")
    typer.echo("\n" + run_demo(cfg))
