"""Fine-tuning tasks: the GLUE files as they ship (SST-2, MRPC, RTE, CoLA, STS-B) or a user's TSV/CSV/JSONL.

A task names where its texts and label sit in each file, its label set (None: a regression score) and its
metrics (the first is the headline one). Readers check every label against the set, one line per problem.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from teacher_cache.base.errors import UserError

GLUE_DIR_ENV = "TC_GLUE_DIR"  # the GLUE folder when --data-dir is not given
Column = str | int  # a header name, or a 0-based position in a file without header


@dataclass(frozen=True)
class Layout:
    """One file of a task: its path (relative to the data folder), text column(s), label column, header."""

    file: str
    text_columns: tuple[Column, ...]
    label_column: Column | None
    header: bool = True
    required: bool = True  # an optional evaluation file is skipped when absent
    tab_separated: bool = False  # read as TSV whatever the suffix (STS Benchmark's .csv files)


@dataclass
class TaskSpec:
    """What a task is: its files, labels (None for regression), metrics and, for F1, the positive label."""

    name: str
    train: Layout
    evals: dict[str, Layout]
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    predict_columns: tuple[str, ...] = ()  # column names in the task's unlabelled test file
    positive: str | None = None
    score_range: tuple[float, float] | None = None
    glue: bool = True

    @property
    def pair(self) -> bool:
        """True for sentence-pair tasks."""
        return len(self.train.text_columns) == 2

    @property
    def regression(self) -> bool:
        """True when the label is a real-valued score."""
        return self.labels is None

    @property
    def n_outputs(self) -> int:
        """Width of a model's output: one logit per label, or one score."""
        return 1 if self.labels is None else len(self.labels)

    def to_dict(self) -> dict:
        """Plain-JSON form, for task.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        """Rebuild from task.json."""
        def layout(d: dict) -> Layout:
            """A Layout from its JSON form."""
            return Layout(**{**d, "text_columns": tuple(d["text_columns"])})

        d = dict(data)
        d["train"], d["evals"] = layout(d["train"]), {k: layout(v) for k, v in d["evals"].items()}
        for key in ("labels", "metrics", "predict_columns", "score_range"):
            d[key] = tuple(d[key]) if d.get(key) is not None else d.get(key)
        return cls(**d)


def _glue(folder: str, cols: tuple[Column, ...], label: Column) -> tuple[Layout, dict[str, Layout]]:
    return Layout(f"{folder}/train.tsv", cols, label), {"dev": Layout(f"{folder}/dev.tsv", cols, label)}


def glue_tasks() -> dict[str, TaskSpec]:
    """The five GLUE tasks of the paper's table, laid out as GLUE's download script writes them."""
    mrpc_cols = ("#1 String", "#2 String")
    sst2, mrpc, rte = _glue("SST-2", ("sentence",), "label"), _glue("MRPC", mrpc_cols, "Quality"), \
        _glue("RTE", ("sentence1", "sentence2"), "label")
    mrpc[1]["test"] = Layout("MRPC/msr_paraphrase_test.txt", mrpc_cols, "Quality", required=False)
    stsb = _glue("STS-B", ("sentence1", "sentence2"), "score")
    stsb[1]["test"] = Layout("../stsbenchmark/sts-test.csv", (5, 6), 4, header=False, required=False,
                              tab_separated=True)
    cola = (Layout("CoLA/train.tsv", (3,), 1, header=False),
            {"dev": Layout("CoLA/dev.tsv", (3,), 1, header=False)})
    return {
        "sst2": TaskSpec("sst2", *sst2, labels=("0", "1"), metrics=("accuracy",), predict_columns=("sentence",)),
        "mrpc": TaskSpec("mrpc", *mrpc, labels=("0", "1"), metrics=("f1", "accuracy"), positive="1",
                         predict_columns=mrpc_cols),
        "rte": TaskSpec("rte", *rte, labels=("entailment", "not_entailment"), metrics=("accuracy",),
                        predict_columns=("sentence1", "sentence2")),
        "cola": TaskSpec("cola", *cola, labels=("0", "1"), metrics=("matthews", "accuracy"),
                         predict_columns=("sentence",)),
        "stsb": TaskSpec("stsb", *stsb, labels=None, metrics=("pearson", "spearman"),
                         predict_columns=("sentence1", "sentence2"), score_range=(0.0, 5.0)),
    }


TASKS = glue_tasks()
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".txt")


def custom_task(train_file: str, text_columns: list[str] | None, label_column: str, labels: list[str] | None,
                regression: bool, dev_file: str | None) -> TaskSpec:
    """A user's own task: a TSV/CSV/JSONL training file (with header) and optional dev file."""
    path = Path(train_file)
    if not text_columns or len(text_columns) > 2:
        raise UserError(f"--task {train_file}: a task of your own needs --text-columns NAME or NAME1,NAME2")
    cols = tuple(text_columns)
    evals = {"dev": Layout(str(Path(dev_file).resolve()), cols, label_column)} if dev_file else {}
    if labels is None and not regression:
        labels = sorted({r.label for r in read_raw(Layout(str(path.resolve()), cols, label_column), Path("."))})
    return TaskSpec(name=f"custom:{path.stem}", train=Layout(str(path.resolve()), cols, label_column), evals=evals,
                    labels=None if regression else tuple(labels), glue=False,
                    metrics=("pearson", "spearman") if regression else ("accuracy",), predict_columns=cols)


def resolve_task(task: str, text_columns: list[str] | None = None, label_column: str = "label",
                 labels: list[str] | None = None, regression: bool = False, dev_file: str | None = None) -> TaskSpec:
    """A GLUE task by name, or a user's task from a training file; one-line error otherwise."""
    if task.lower() in TASKS:
        return TASKS[task.lower()]
    if Path(task).is_file() and task.lower().endswith(TABLE_SUFFIXES):
        return custom_task(task, text_columns, label_column, labels, regression, dev_file)
    raise UserError(f"--task {task}: unknown task; choose {', '.join(TASKS)}, or give a TSV/CSV/JSONL training "
                     "file with --text-columns and --label-column")


def resolve_data_dir(spec: TaskSpec, data_dir: str | Path | None) -> Path:
    """The GLUE folder: --data-dir, else $TC_GLUE_DIR (one-line error when neither is set); checked for the task."""
    if not spec.glue:
        return Path(".")
    flag = "--data-dir"
    if data_dir is None:
        data_dir, flag = os.environ.get(GLUE_DIR_ENV) or None, GLUE_DIR_ENV
        if data_dir is None:
            raise UserError(f"--data-dir: required (or set {GLUE_DIR_ENV})")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{flag} {data_dir}: no such folder")
    for layout in [spec.train, *spec.evals.values()]:
        if layout.required and not (data_dir / layout.file).is_file():
            raise UserError(f"{flag} {data_dir}: no {layout.file} for task {spec.name} "
                             "(expected GLUE's layout: <data-dir>/<TASK>/train.tsv, dev.tsv)")
    return data_dir


@dataclass
class RawRow:
    """One row as read: line number, text field(s), label field (None when the file has no label column)."""

    line: int
    texts: list[str]
    label: str | None


def iter_records(path: Path, header: bool, tab: bool = False) -> Iterator[tuple[int, list[str] | dict]]:
    """(line, fields) of a TSV/TXT (tab-split, no quoting), CSV or JSONL file; dicts when there is a header."""
    suffix = ".tsv" if tab else path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as fh:
        if suffix in (".jsonl", ".json"):
            for line, text in enumerate(fh, start=1):
                if text.strip():
                    try:
                        yield line, json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}:{line}: not a JSON object ({exc.msg})") from None
            return
        rows = csv.reader(fh) if suffix == ".csv" else (t.rstrip("\r\n").split("\t") for t in fh)
        names = None
        for line, fields in enumerate(rows, start=1):
            if header and names is None:
                names = fields
                continue
            if fields and any(f.strip() for f in fields):
                yield line, dict(zip(names, fields, strict=False)) if names is not None else fields


def _get(record: list[str] | dict, column: Column, path: Path, line: int) -> str:
    try:
        value = record[column]
    except (KeyError, IndexError):
        what = f"column {column!r}" if isinstance(column, str) else f"column {column + 1}"
        known = f" (columns: {', '.join(map(str, record))})" if isinstance(record, dict) else ""
        raise UserError(f"{path}:{line}: no {what}{known}") from None
    return "" if value is None else str(value)


def read_raw(layout: Layout, data_dir: Path, max_rows: int | None = None, labelled: bool = True) -> list[RawRow]:
    """The rows of one file as strings, refusing a missing file, a missing column and an empty file."""
    path = data_dir / layout.file
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows: list[RawRow] = []
    for line, record in iter_records(path, layout.header, layout.tab_separated):
        texts = [_get(record, c, path, line) for c in layout.text_columns]
        label = _get(record, layout.label_column, path, line) if labelled and layout.label_column is not None else None
        rows.append(RawRow(line, texts, label))
        if max_rows is not None and len(rows) >= max_rows:
            break
    if not rows:
        raise UserError(f"{path}: no rows (empty file)")
    return rows
