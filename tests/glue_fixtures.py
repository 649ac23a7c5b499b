"""A tiny GLUE folder in the exact layouts of GLUE's download script, so the fine-tuning tests run on any clone.

`write_glue_fixture(folder)` writes `folder/glue/<TASK>/...` (SST-2, MRPC, RTE, CoLA, STS-B: a few dozen rows per
split, 200 SST-2 training rows) plus `folder/stsbenchmark/sts-test.csv` (the STS-B test gold that the stsb task reads
as `../stsbenchmark/sts-test.csv`) and returns `folder/glue`. Each file keeps its real quirks: SST-2's trailing space
before the tab, MRPC's UTF-8 BOM on the header and its labelled `msr_paraphrase_test.txt`, CoLA without a header
(4 columns, `*` marking unacceptable rows) and its dev file without a newline at the end, STS-B's 10 columns and
unscored test.tsv. Labels of every split are balanced (or 1:2, like MRPC and CoLA) by construction: FIXTURE_COUNTS.

Texts: SST-2 and CoLA sentences are written here from templates (sentiment words / grammatical vs. scrambled word
order); STS-B, MRPC and RTE pairs are real sentence pairs of the STS Benchmark bundled in data/stsbenchmark
(CC BY-SA 4.0): STS-B keeps their scores, MRPC takes MSRpar pairs (paraphrase: score >= 3.4, not: <= 2.6), RTE the
other genres (entailment: score >= 3.8, not_entailment: <= 1.2). Nothing is read from ../shared.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_STS = ROOT / "data" / "stsbenchmark"
REAL_GLUE = ROOT.parent / "shared" / "data" / "glue"  # a development checkout's sibling folder (SOURCES.md there)
MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
STSB_COLUMNS = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2")

# Rows and label counts (in each task's label order: spec.labels) per labelled split, as the fixture writes them;
# the same shape as the published counts tests/test_finetune_tasks.py checks on the real folder.
FIXTURE_COUNTS = {
    "sst2": {"train": (200, [100, 100]), "dev": (72, [36, 36])},
    "mrpc": {"train": (72, [24, 48]), "dev": (40, [14, 26]), "test": (40, [14, 26])},
    "rte": {"train": (72, [36, 36]), "dev": (40, [20, 20])},
    "cola": {"train": (72, [24, 48]), "dev": (40, [14, 26])},
    "stsb": {"train": (120, None), "dev": (64, None), "test": (40, None)},
}
UNLABELLED_TEST_ROWS = {"SST-2": 30, "CoLA": 20, "RTE": 20}  # test.tsv files with an `index` column, no labels

SUBJECTS = ("the film", "this movie", "the acting", "the script", "the story", "the second half", "the cast",
            "the ending", "the dialogue", "the soundtrack", "the direction", "the sequel", "the premise",
            "the whole thing")
POSITIVE = ("is a charming and often affecting journey", "is sharp , funny and genuinely moving",
            "is a warm , witty delight", "never loses its nerve", "rewards patience with real beauty",
            "is smart , tender and beautifully played", "makes the two hours fly by", "feels fresh and alive",
            "is gripping from start to finish", "is wonderfully acted and hugely enjoyable",
            "earns every one of its tears", "is a joy to watch")
NEGATIVE = ("is a dull , lifeless mess", "never finds a reason to exist", "is tedious and badly paced",
            "feels like a chore", "is flat , stale and forgettable", "wastes a talented cast",
            "drags on far too long", "is an embarrassment for everyone involved", "falls apart in the last act",
            "is loud , ugly and pointless", "makes no sense at all", "is a bore from start to finish")
COLA_SUBJECTS = ("The teacher", "My sister", "The old man", "A small dog", "The children", "Our neighbour",
                 "The pilot", "Every student", "The farmer", "Her brother")
COLA_VERBS = ("praised", "visited", "followed", "painted", "found", "chased", "watched", "carried")
COLA_OBJECTS = ("the new house", "a red bicycle", "the letter", "the garden", "a wooden box", "the river",
                "the small boat", "the map")
COLA_SOURCES = ("gj04", "bc01", "ad03", "c-05", "r-67")


def real_glue_dir() -> Path | None:
    """../shared/data/glue beside the checkout, or None when absent (or hidden by TC_TEST_NO_SHARED=1)."""
    if os.environ.get("TC_TEST_NO_SHARED") == "1" or not REAL_GLUE.is_dir():
        return None
    return REAL_GLUE


def _write(path: Path, lines: list[str], final_newline: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(lines)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text if final_newline else text.rstrip("\n"))


def _mix(negatives: list, positives: list, n_neg: int, n_pos: int, rng: random.Random) -> list[tuple[object, int]]:
    """n_neg negatives (label 0) and n_pos positives (label 1), taken from the front of each list, shuffled."""
    rows = [(x, 0) for x in negatives[:n_neg]] + [(x, 1) for x in positives[:n_pos]]
    del negatives[:n_neg], positives[:n_pos]
    rng.shuffle(rows)
    return rows


def _sts_rows(name: str) -> list[list[str]]:
    """The bundled STS Benchmark file's rows (tab-separated, no quoting): genre filename year id score s1 s2 [...]."""
    text = (BUNDLED_STS / name).read_text(encoding="utf-8")
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def _counts(name: str, split: str) -> tuple[int, int]:
    """How many rows of the task's first and second label the split holds."""
    first, second = FIXTURE_COUNTS[name][split][1]
    return first, second


def _sst2(glue: Path, rng: random.Random) -> None:
    pos = [f"{s} {p} ." for s in SUBJECTS for p in POSITIVE]
    neg = [f"{s} {p} ." for s in SUBJECTS for p in NEGATIVE]
    rng.shuffle(pos)
    rng.shuffle(neg)
    for split in ("train", "dev"):
        rows = _mix(neg, pos, *_counts("sst2", split), rng)
        _write(glue / "SST-2" / f"{split}.tsv", ["sentence\tlabel\n"] + [f"{t} \t{lab}\n" for t, lab in rows])
    rest = _mix(neg, pos, UNLABELLED_TEST_ROWS["SST-2"] // 2, UNLABELLED_TEST_ROWS["SST-2"] // 2, rng)
    _write(glue / "SST-2" / "test.tsv", ["index\tsentence\n"] + [f"{i}\t{t}\n" for i, (t, _) in enumerate(rest)])


def _cola(glue: Path, rng: random.Random) -> None:
    triples = [(s, v, o) for s in COLA_SUBJECTS for v in COLA_VERBS for o in COLA_OBJECTS]
    rng.shuffle(triples)
    good = [f"{s} {v} {o}." for s, v, o in triples[:200]]
    bad = [f"{s} {o} {v}." if i % 2 else f"{s} did {v} {o}." for i, (s, v, o) in enumerate(triples[200:400])]
    for split in ("train", "dev"):
        rows = _mix(bad, good, *_counts("cola", split), rng)
        lines = [f"{rng.choice(COLA_SOURCES)}\t{lab}\t{'' if lab else '*'}\t{t}\n" for t, lab in rows]
        _write(glue / "CoLA" / f"{split}.tsv", lines, final_newline=split != "dev")  # GLUE's dev ends unterminated
    test = good[:UNLABELLED_TEST_ROWS["CoLA"] // 2] + bad[:UNLABELLED_TEST_ROWS["CoLA"] // 2]
    rng.shuffle(test)
    _write(glue / "CoLA" / "test.tsv", ["index\tsentence\n"] + [f"{i}\t{t}\n" for i, t in enumerate(test)])


def _mrpc(glue: Path, dev_rows: list[list[str]], test_rows: list[list[str]], rng: random.Random) -> None:
    def split_by_score(rows: list[list[str]]) -> tuple[list, list]:
        par = [r for r in rows if r[1] == "MSRpar"]
        return [r for r in par if float(r[4]) <= 2.6], [r for r in par if float(r[4]) >= 3.4]

    def line(first: str, row: list[str]) -> str:
        sid = int(row[3])
        return f"{first}\t{1_000_000 + 17 * sid}\t{1_000_005 + 17 * sid}\t{row[5]}\t{row[6]}\n"

    neg, pos = split_by_score(dev_rows)
    for split in ("train", "dev"):
        rows = _mix(neg, pos, *_counts("mrpc", split), rng)
        _write(glue / "MRPC" / f"{split}.tsv", [MRPC_HEADER] + [line(str(lab), r) for r, lab in rows])
    neg, pos = split_by_score(test_rows)
    rows = _mix(neg, pos, *_counts("mrpc", "test"), rng)  # the same pairs, in the same order, in both files
    _write(glue / "MRPC" / "msr_paraphrase_test.txt", [MRPC_HEADER] + [line(str(lab), r) for r, lab in rows])
    _write(glue / "MRPC" / "test.tsv", ["index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"]
           + [line(str(i), r) for i, (r, _) in enumerate(rows)])


def _rte(glue: Path, dev_rows: list[list[str]], test_rows: list[list[str]], rng: random.Random) -> None:
    other = [r for r in dev_rows if r[1] != "MSRpar"]
    rng.shuffle(other)
    entailed = [r for r in other if float(r[4]) >= 3.8]
    not_entailed = [r for r in other if float(r[4]) <= 1.2]
    labels = ("entailment", "not_entailment")
    for split in ("train", "dev"):
        n_entailed, n_not = _counts("rte", split)
        rows = _mix(not_entailed, entailed, n_not, n_entailed, rng)
        _write(glue / "RTE" / f"{split}.tsv", ["index\tsentence1\tsentence2\tlabel\n"]
               + [f"{i}\t{r[5].strip()}\t{r[6].strip()}\t{labels[1 - lab]}\n" for i, (r, lab) in enumerate(rows)])
    test = [r for r in test_rows if r[1] != "MSRpar"][::25][:UNLABELLED_TEST_ROWS["RTE"]]
    _write(glue / "RTE" / "test.tsv", ["index\tsentence1\tsentence2\n"]
           + [f"{i}\t{r[5].strip()}\t{r[6].strip()}\n" for i, r in enumerate(test)])


def _stsb(glue: Path, dev_rows: list[list[str]], test_lines: list[str]) -> None:
    def line(i: int, r: list[str], score: bool) -> str:
        fields = [str(i), *r[:4], "none", "none", r[5].strip(), r[6].strip()] + ([r[4]] if score else [])
        return "\t".join(fields) + "\n"

    head = "\t".join(STSB_COLUMNS)
    train, dev = dev_rows[::12][:FIXTURE_COUNTS["stsb"]["train"][0]], dev_rows[6::23][:FIXTURE_COUNTS["stsb"]["dev"][0]]
    for split, rows in (("train", train), ("dev", dev)):
        _write(glue / "STS-B" / f"{split}.tsv", [f"{head}\tscore\n"] + [line(i, r, True) for i, r in enumerate(rows)])
    test = [t.split("\t") for t in test_lines]
    _write(glue / "STS-B" / "test.tsv", [f"{head}\n"] + [line(i, r, False) for i, r in enumerate(test)])
    _write(glue.parent / "stsbenchmark" / "sts-test.csv", [f"{t}\n" for t in test_lines])  # gold, as released


def write_glue_fixture(folder: Path) -> Path:
    """Write the tiny GLUE folder (and its ../stsbenchmark/sts-test.csv) under `folder`; return folder / "glue"."""
    glue = Path(folder) / "glue"
    rng = random.Random(0)
    dev_rows, test_rows = _sts_rows("sts-dev.csv"), _sts_rows("sts-test.csv")
    test_lines = [t for t in (BUNDLED_STS / "sts-test.csv").read_text(encoding="utf-8").splitlines() if t.strip()]
    _sst2(glue, rng)
    _cola(glue, rng)
    _mrpc(glue, dev_rows, test_rows, rng)
    _rte(glue, dev_rows, test_rows, rng)
    _stsb(glue, dev_rows, test_lines[:FIXTURE_COUNTS["stsb"]["test"][0]])
    return glue
