"""A task's examples as read: texts (and second texts of pairs) with label indices or scores, for training,
evaluation and `tc predict` (whose input may be the task's own layout, a header naming its columns, or plain text)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.tasks import Layout, RawRow, TaskSpec, read_raw
from teacher_cache.base.errors import UserError

# `read_raw` reads data_dir / layout.file: "." leaves an --input path as given, relative to the current folder or
# absolute ("/" turned SST-2/test.tsv into /SST-2/test.tsv: not found, or worse another file).
AS_GIVEN = Path(".")


@dataclass
class TaskData:
    """Texts (and second texts for pairs) with label indices or scores; labels None when unlabelled."""

    path: Path
    texts: list[str]
    pairs: list[str] | None = None
    labels: np.ndarray | None = None
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.texts)

    def rows(self) -> list[str]:
        """One string per example as a cache stores it: the text, or both texts joined by a tab."""
        return self.texts if self.pairs is None else [f"{a}\t{b}" for a, b in zip(self.texts, self.pairs, strict=True)]

    def take(self, rows: np.ndarray | range) -> TaskData:
        """The chosen examples, in the given order, as a TaskData of the same file."""
        rows = np.asarray(rows, dtype=np.int64)
        return TaskData(self.path, [self.texts[i] for i in rows], [self.pairs[i] for i in rows] if self.pairs else None,
                        None if self.labels is None else self.labels[rows],
                        [self.lines[i] for i in rows] if self.lines else [])


def parse_label(spec: TaskSpec, value: str, where: str) -> float | int:
    """The label index (classification) or score (regression) of a label field, or a one-line error."""
    value = value.strip()
    if spec.labels is not None:
        if value not in spec.labels:
            raise UserError(f"{where}: label {value!r} is not one of the task's labels ({', '.join(spec.labels)})")
        return spec.labels.index(value)
    try:
        score = float(value)
    except ValueError:
        raise UserError(f"{where}: label {value!r} is not a number (task {spec.name} is a regression)") from None
    low, high = spec.score_range or (-np.inf, np.inf)
    if not low <= score <= high:
        raise UserError(f"{where}: score {score} is outside the task's range [{low:g}, {high:g}]")
    return score


def to_task_data(spec: TaskSpec, raw: list[RawRow], path: Path) -> TaskData:
    """Parse the label fields of raw rows (when present) into a TaskData."""
    labels = None
    if raw and raw[0].label is not None:
        values = [parse_label(spec, r.label, f"{path}:{r.line}") for r in raw]
        labels = np.asarray(values, dtype=np.float32 if spec.regression else np.int64)
    return TaskData(path=path, texts=[r.texts[0] for r in raw], pairs=[r.texts[1] for r in raw] if spec.pair else None,
                    labels=labels, lines=[r.line for r in raw])


def load_split(spec: TaskSpec, split: str, data_dir: Path, max_rows: int | None = None) -> TaskData | None:
    """The labelled rows of 'train' or an evaluation split; None for an optional split whose file is absent."""
    layout = spec.train if split == "train" else spec.evals[split]
    if not layout.required and not (data_dir / layout.file).is_file():
        return None
    return to_task_data(spec, read_raw(layout, data_dir, max_rows), data_dir / layout.file)


def load_inputs(spec: TaskSpec, path: str | Path, text_columns: list[str] | None = None) -> TaskData:
    """Rows to predict: the task's column names (labels used if present), its headerless layout, or plain text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    names = tuple(text_columns) if text_columns else None
    with open(path, encoding="utf-8-sig") as fh:
        first = fh.readline().rstrip("\r\n")
    if not first.strip():
        raise UserError(f"--input {path}: empty file (or a blank first line)")
    if path.suffix.lower() == ".jsonl":
        try:
            head = set(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            raise UserError(f"--input {path}:1: not a JSON object") from None
    else:
        head = set(next(csv.reader([first])) if path.suffix.lower() == ".csv" else first.split("\t"))
    label = spec.train.label_column if isinstance(spec.train.label_column, str) else "label"
    for cols in ([names] if names else [spec.train.text_columns, spec.predict_columns]):
        if cols and all(isinstance(c, str) for c in cols) and set(cols) <= head:
            layout = Layout(str(path), tuple(cols), label if label in head else None)
            return to_task_data(spec, read_raw(layout, AS_GIVEN), path)
    if names:
        raise UserError(f"--input {path}: no column(s) {', '.join(names)} in its header")
    width = len(first.split("\t"))
    if not spec.train.header and width > max(c for c in spec.train.text_columns if isinstance(c, int)):
        labelled = spec.train.label_column is not None and width > spec.train.label_column
        layout = Layout(str(path), spec.train.text_columns, spec.train.label_column, header=False)
        return to_task_data(spec, read_raw(layout, AS_GIVEN, labelled=labelled), path)
    if path.suffix.lower() in (".txt", ".tsv") and width == len(spec.train.text_columns):
        return to_task_data(spec, read_raw(Layout(str(path), tuple(range(width)), None, header=False), AS_GIVEN),
                            path)
    want = ", ".join(map(str, spec.predict_columns or spec.train.text_columns))
    raise UserError(f"--input {path}: cannot find the task's text column(s) ({want}); give a header with them, "
                     "plain text (one example per line, pairs tab-separated) or --text-columns")
