"""task.json, read back: a fine-tuned folder's file is data, so every field is checked before it is used (a wrong
type, a missing key, an absurd size is one UserError line naming the file and the field, never a traceback).

The task's file paths stay as written: a task of one's own records its training file as an absolute path, and a
GLUE task's test file may sit beside the GLUE folder ('../stsbenchmark/...'); they are only ever read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from finetune.tasks import TaskSpec
from teacher_cache.base.errors import UserError, first_line
from teacher_cache.base.safe_paths import a_type, shown

TASK_JSON = "task.json"
KINDS = ("student", "teacher")
HEAD_LIMITS = {"dim": (1, 1 << 14), "n_out": (1, 10_000), "hidden": (0, 1 << 16)}
LAYOUT_FLAGS = ("header", "required", "tab_separated")


def _int(value: object, low: int, high: int) -> bool:
    """True for a JSON integer (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: object) -> bool:
    """True for a finite JSON number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _column(value: object) -> bool:
    """A column: a header name or a 0-based position."""
    return isinstance(value, str) or _int(value, 0, 1 << 20)


def layout_problem(d: object) -> str | None:
    """Why one file layout of a task is malformed, or None."""
    if not isinstance(d, dict):
        return f"{a_type(d)}, not an object"
    unknown = set(d) - {"file", "text_columns", "label_column", *LAYOUT_FLAGS}
    if unknown:
        return f"unknown key {shown(sorted(unknown)[0])}"
    file, columns = d.get("file"), d.get("text_columns")
    if not isinstance(file, str) or not file or "\x00" in file:
        return f"file = {shown(file)}: not a file path"
    if not isinstance(columns, list) or not 1 <= len(columns) <= 2 or not all(map(_column, columns)):
        return f"text_columns = {shown(columns)}: not one or two columns"
    if d.get("label_column") is not None and not _column(d["label_column"]):
        return f"label_column = {shown(d['label_column'])}: not a column"
    bad = next((k for k in LAYOUT_FLAGS if k in d and not isinstance(d[k], bool)), None)
    return f"{bad} = {shown(d[bad])}: not true or false" if bad else None


def task_problem(t: object) -> str | None:
    """Why the 'task' of a task.json is malformed, or None."""
    if not isinstance(t, dict):
        return f"{a_type(t)}, not an object"
    if not isinstance(t.get("name"), str):
        return f"name = {shown(t.get('name'))}: not a string"
    evals = t.get("evals")
    if not isinstance(evals, dict):
        return f"evals = {shown(evals)}: not an object"
    for where, layout in [("train", t.get("train")), *((f"evals.{k}", v) for k, v in evals.items())]:
        problem = layout_problem(layout)
        if problem:
            return f"{where}: {problem}"
    labels = t.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels or len(labels) > 10_000
                               or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels)):
        return f"labels = {shown(labels)}: not a list of distinct label strings"
    allowed = {"pearson", "spearman"} if labels is None else {"accuracy"} | (
        {"f1", "matthews"} if len(labels) == 2 else set())
    metrics = t.get("metrics")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m in allowed for m in metrics):
        return f"metrics = {shown(metrics)}: not a list of {', '.join(sorted(allowed))}"
    columns = t.get("predict_columns", [])
    if not isinstance(columns, list) or not all(map(_column, columns)):
        return f"predict_columns = {shown(columns)}: not a list of columns"
    positive = t.get("positive")
    if positive is not None and (labels is None or positive not in labels):
        return f"positive = {shown(positive)}: not one of the labels"
    span = t.get("score_range")
    if span is not None and not (isinstance(span, list) and len(span) == 2 and all(map(_number, span))
                                 and span[0] < span[1]):
        return f"score_range = {shown(span)}: not [low, high]"
    if not isinstance(t.get("glue", True), bool):
        return f"glue = {shown(t['glue'])}: not true or false"
    return None


def head_problem(head: object, spec: TaskSpec) -> str | None:
    """Why the 'head' settings of a fine-tuned student are malformed or do not fit its task, or None."""
    if not isinstance(head, dict):
        return f"{a_type(head)}, not an object"
    unknown = set(head) - {"dim", "pair", "n_out", "hidden", "dropout", "kind", "score_range"}
    if unknown:
        return f"unknown key {shown(sorted(unknown)[0])}"
    for key, (low, high) in HEAD_LIMITS.items():
        if key in head and not _int(head[key], low, high) or key != "hidden" and key not in head:
            return f"{key} = {shown(head.get(key))}: not an integer in {low}..{high:,}"
    if head.get("pair") is not spec.pair or head["n_out"] != spec.n_outputs:
        return f"pair/n_out = {shown(head.get('pair'))}/{head['n_out']}: do not fit task {shown(spec.name)}"
    if "dropout" in head and not (_number(head["dropout"]) and 0 <= head["dropout"] < 1):
        return f"dropout = {shown(head['dropout'])}: not in [0, 1)"
    if head.get("kind", "features") not in ("features", "cosine"):
        return f"kind = {shown(head['kind'])}: not features or cosine"
    span = head.get("score_range")
    if span is not None and not (isinstance(span, list) and len(span) == 2 and all(map(_number, span))):
        return f"score_range = {shown(span)}: not [low, high]"
    return None


@dataclass(frozen=True)
class TaskJson:
    """A fine-tuned folder's task.json, checked: the model kind it holds, its task (built once), every field."""

    kind: str  # one of KINDS
    spec: TaskSpec
    meta: dict  # the file's contents: 'head' (students), 'max_length' (teachers), 'args', ...


def read_task_json(folder: str | Path) -> TaskJson:
    """task.json of a fine-tuned folder, or a one-line error saying the folder is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--model {folder}: no such folder")
    path = folder / TASK_JSON
    if not path.exists():
        raise UserError(f"--model {folder}: not a fine-tuned model (no {TASK_JSON}); make one with tc finetune")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise UserError(f"{path}: unreadable ({first_line(exc)})") from None
    return check_task_json(meta, path)  # a fine-tuned folder is data: every field checked before it is used


def check_task_json(meta: object, path: Path) -> TaskJson:
    """`meta` (task.json's contents) once every field a loader uses is checked; else one UserError line."""
    if not isinstance(meta, dict):
        raise UserError(f"{path}: malformed (JSON {a_type(meta)}, not an object)")
    if meta.get("kind") not in KINDS:
        raise UserError(f"{path}: kind = {shown(meta.get('kind'))}: not one of {', '.join(KINDS)}")
    problem = task_problem(meta.get("task"))
    if problem:
        raise UserError(f"{path}: task: {problem}")
    try:
        spec = TaskSpec.from_dict(meta["task"])
    except (TypeError, KeyError, ValueError) as exc:  # a key this version does not know, or lacks
        raise UserError(f"{path}: task: malformed ({shown(str(exc))})") from None
    if "max_length" in meta and not _int(meta["max_length"], 2, 1 << 20):
        raise UserError(f"{path}: max_length = {shown(meta['max_length'])}: not an integer in 2..{1 << 20:,}")
    if meta["kind"] == "student":
        problem = head_problem(meta.get("head"), spec)
        if problem:
            raise UserError(f"{path}: head: {problem}")
    return TaskJson(meta["kind"], spec, meta)
