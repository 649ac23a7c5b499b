"""STS evaluation: Spearman x100 of cosine similarity against gold scores (STS-B, SICK-R, STS12-16)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from teacher_cache.base.bundled import bundled_data
from teacher_cache.base.errors import UserError

BUNDLED_STSB = bundled_data("stsbenchmark")
TASKS = ("sts-b", "sts-b-dev", "sick-r", "sts12", "sts13", "sts14", "sts15", "sts16")
EncodeFn = Callable[[list[str]], np.ndarray]


@dataclass
class StsPairs:
    """Sentence pairs with gold similarity scores, from one file or a folder of files."""

    name: str
    left: list[str]
    right: list[str]
    gold: np.ndarray


def read_stsbenchmark(path: Path, name: str) -> StsPairs:
    """sts-{dev,test}.csv: tab-separated, no quoting (some lines hold a bare `"`), extra columns on some rows."""
    left, right, gold = [], [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) < 7:
                raise UserError(f"{path}:{lineno}: expected at least 7 tab-separated columns, found {len(row)}")
            gold.append(float(row[4]))
            left.append(row[5])
            right.append(row[6])
    return StsPairs(name, left, right, np.asarray(gold))


def read_senteval_sts(folder: Path, name: str) -> StsPairs:
    """SentEval STS12-16 layout: STS.input.<set>.txt (two sentences per line) + STS.gs.<set>.txt (score or blank)."""
    left, right, gold = [], [], []
    inputs = sorted(folder.glob("STS.input.*.txt"))
    if not inputs:
        raise UserError(f"{folder}: no STS.input.*.txt files")
    for path in inputs:
        gs_path = path.with_name(path.name.replace("STS.input.", "STS.gs."))
        if not gs_path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        scores = gs_path.read_text(encoding="utf-8").splitlines()
        for line, score in zip(lines, scores, strict=False):
            parts = line.split("\t")
            if score.strip() and len(parts) >= 2:
                left.append(parts[0])
                right.append(parts[1])
                gold.append(float(score))
    return StsPairs(name, left, right, np.asarray(gold))


def read_sick(path: Path) -> StsPairs:
    """SICK_test_annotated.txt: header, then pair_ID, sentence_A, sentence_B, relatedness_score, ..."""
    left, right, gold = [], [], []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        a, b, s = header.index("sentence_A"), header.index("sentence_B"), header.index("relatedness_score")
        for line in fh:
            row = line.rstrip("\n").split("\t")
            if len(row) > s:
                left.append(row[a])
                right.append(row[b])
                gold.append(float(row[s]))
    return StsPairs("sick-r", left, right, np.asarray(gold))


def find(data_dir: Path, pattern: str) -> Path | None:
    """First path under data_dir matching a glob pattern, searching recursively."""
    hits = sorted(data_dir.rglob(pattern))
    return hits[0] if hits else None


def load_task(task: str, data_dir: Path | None = None) -> StsPairs:
    """Load one STS task: STS-B from the bundled files unless --data-dir has them; others need --data-dir."""
    if task not in TASKS:
        raise UserError(f"--tasks {task}: unknown task; choose from {', '.join(TASKS)}")
    if task in ("sts-b", "sts-b-dev"):
        file = "sts-test.csv" if task == "sts-b" else "sts-dev.csv"
        path = (find(data_dir, file) if data_dir else None) or BUNDLED_STSB / file
        return read_stsbenchmark(path, "STS-B test" if task == "sts-b" else "STS-B dev")
    if data_dir is None:
        raise UserError(f"--tasks {task}: needs --data-dir with the SentEval files")
    if task == "sick-r":
        path = find(data_dir, "SICK_test_annotated.txt")
        if path is None:
            raise UserError(f"--data-dir {data_dir}: no SICK_test_annotated.txt for sick-r")
        return read_sick(path)
    folder = next((p for p in sorted(data_dir.rglob(f"{task.upper()}*")) if p.is_dir()), None)
    if folder is None:
        raise UserError(f"--data-dir {data_dir}: no {task.upper()}* folder with STS.input.*.txt files")
    return read_senteval_sts(folder, task.upper())


def sts_spearman(encode: EncodeFn, pairs: StsPairs) -> float:
    """Spearman x100 between the cosine of each pair's vectors and the gold score."""
    unique = sorted(set(pairs.left) | set(pairs.right))
    vectors = np.asarray(encode(unique), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    index = {s: i for i, s in enumerate(unique)}
    a = vectors[[index[s] for s in pairs.left]]
    b = vectors[[index[s] for s in pairs.right]]
    return float(spearmanr((a * b).sum(1), pairs.gold).statistic * 100)
