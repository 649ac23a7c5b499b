"""`tc probe` and `tc eval`: neighbour probes against the cache, and STS benchmarks for students and teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from teacher_cache.errors import CacheError


def probe(
    shards: Annotated[Path, typer.Option(help="Teacher cache folder (from tc encode).")] = Path("out"),
    student: Annotated[Path, typer.Option(help="Student folder (from tc train-student).")] = Path("student_out"),
    k: Annotated[int, typer.Option("--k", help="Neighbours compared per query.")] = 10,
    queries: Annotated[int, typer.Option(help="Held-out query rows (default: 1000, or a fifth of the rows "
                                              "probed if fewer).")] = None,
    index: Annotated[str, typer.Option(help="auto (exact; HNSW from 50,000 queries, where its build pays), flat, "
                                            "ivf or hnsw.")] = "auto",
    report: Annotated[Path, typer.Option(help="Folder for report.json, report.md and PNG plots.")] = Path("probe"),
    max_rows: Annotated[int, typer.Option(help="Probe a random sample of this many cached rows (0 = all).")] = 20_000,
    column: Annotated[str, typer.Option(help="Cache vector column or pooling (default: the first).")] = None,
    query: Annotated[list[str], typer.Option(help="A sentence of your own; its neighbours are shown "
                                                  "(repeatable). Loads the teacher unless --teacher-free.")] = None,
    teacher_free: Annotated[bool, typer.Option(help="With --query: show the student's side only.")] = False,
    teacher: Annotated[str, typer.Option(help="Teacher for --query (default: the one the cache names).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the row sample and the query split.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress on stderr.")] = False,
) -> None:
    """Compare the student's nearest neighbours with the teacher's on held-out cached rows (no teacher loaded).

    Reports kNN@k agreement, recall of the teacher's top-k in the student's top-10/50/100, Spearman of neighbour
    similarities, mean cosine, the worst queries side by side, and PNG plots.

    Example: tc probe --shards out/ --student student_out/ --k 10 --queries 1000 --query "The cat sat on the mat."
    """
    from pipeline.probe import ProbeConfig, run_probe, summary_line

    cfg = ProbeConfig(shards=shards, student=student, k=k, queries=queries, index=index, report=report,
                      max_rows=max_rows or None, column=column, query_texts=list(query or []),
                      teacher_free=teacher_free, teacher=teacher, seed=seed, quiet=quiet)
    result = run_probe(cfg)
    typer.echo(f"{summary_line(result)}; report in {report}/report.md")


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
    from pipeline.failures import check_positive
    from pipeline.sts import TASKS, load_task, sts_spearman

    check_positive(batch_size, "--batch-size")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    for name in names:
        if name not in TASKS:
            raise CacheError(f"--tasks {name}: unknown task; choose from {', '.join(TASKS)}")
    if data_dir is not None and not data_dir.is_dir():
        raise CacheError(f"--data-dir {data_dir}: no such folder")
    if not student and not teacher:
        raise CacheError("give --student PATH and/or --teacher PATH_OR_NAME (or --teacher default)")
    task_pairs = [load_task(name, data_dir) for name in names]
    rows = []
    for label, encode in model_encoders(student or [], teacher or [], batch_size):
        rows.append((label, [sts_spearman(encode, pairs) for pairs in task_pairs]))
    typer.echo(format_table(["model"] + [p.name for p in task_pairs], rows))


def model_encoders(students: list[Path], teachers: list[str], batch_size: int):
    """(label, encode function) for each model asked for, loaded one at a time."""
    from student import Student

    for path in students:
        model = Student.from_pretrained(path)
        yield f"student {path}", lambda s, m=model: m.encode(s, batch_size=batch_size)
    for name in teachers:
        from teacher_cache.encode import teacher_encoder

        yield f"teacher {name}", teacher_encoder(None if name == "default" else name)


def format_table(header: list[str], rows: list[tuple[str, list[float]]]) -> str:
    """A markdown table of scores with one decimal... two, as STS papers do."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label] + [f"{v:.2f}" for v in values]) + " |" for label, values in rows]
    return "\n".join(lines)


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the cache, student, probe report and summary.")] = Path("demo"),
    corpus: Annotated[list[str], typer.Option(help="Corpus file(s) (default: the bundled 5,000 sentences).")] = None,
    recipe: Annotated[str, typer.Option(help="Student recipe: static (default), compact or paper (see "
                                              "`tc train-student --help`).")] = "static",
    arch: Annotated[str, typer.Option(help="Student: bilstm, cnn or static (default: the recipe's).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs (default: the recipe's).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    max_rows: Annotated[int, typer.Option(help="Use only the first N corpus rows.")] = None,
    force: Annotated[bool, typer.Option(help="Re-encode even if <out>/cache holds another cache.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress lines.")] = False,
) -> None:
    """Run the whole pipeline on the bundled sample: encode -> train-student -> probe -> eval, then one table.

    Takes a few minutes on 2 CPU cores; rerunning reuses the finished cache.

    Example: tc demo --out demo/ --recipe static
    """
    from pipeline.demo import DemoConfig, run_demo

    if epochs is not None and epochs < 1:
        raise CacheError(f"--epochs {epochs}: must be at least 1")
    summary = run_demo(DemoConfig(out=out, corpus=list(corpus) if corpus else None, recipe=recipe, arch=arch,
                                  epochs=epochs, lr=lr, max_rows=max_rows, force=force, quiet=quiet))
    typer.echo("\n" + summary)
