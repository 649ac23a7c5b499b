"""Write the sentence files the benchmarks encode, from ../shared/data, so every cache in RESULTS.md can be rebuilt.

Usage: .venv/bin/python -m benchmarks.corpora [--data ../shared/data] [--out benchmarks/work]
Writes, one sentence per line:
  probe10k.txt   Wikipedia lines 7, 67, 127, ... (every 60th): the held-out probe set, first 10,000
  train100k.txt  every 6th of the other Wikipedia lines, first 100,000: the students' training set
  rest900k.txt   every other unique sentence (Wikipedia, Wikinews, all GLUE/STS texts) not in train100k, first
                 900,000: with train100k, the 1M real vectors of benchmarks/probe.py
  distill.txt    the students' large training set: train100k, then every other unique Wikipedia (never a probe
                 line) and Wikinews sentence in a seeded shuffle; no GLUE/STS text, since hidden STS test sets are
                 drawn from the same sources (MRPC, STS-B)
  probe-mix.txt  held out from the three newer files (Wikipedia 2014, Wikipedia 2018, Gutenberg books): every 60th
                 line of each, first 3,000 per source interleaved: the held-out mix kNN agreement is checked on
  probe-wiki.txt the 6,000 Wikipedia lines of probe-mix.txt (its books left out): held-out Wikipedia alone, so
                 that a genre mix which helps STS-B but hurts kNN agreement on Wikipedia shows
  distill-new.txt  every other line of those three files (never a probe-mix line, none already in distill.txt) in
                 one seeded shuffle across sources (a book's lines are spread over every shard): grows the
                 students' text to ~4.4M sentences with `--shards cache-distill --shards cache-new`
  distill-new-wiki.txt  distill-new.txt without the lines of the Gutenberg file, in the same order: with
                 distill.txt, the Wikipedia-only corpus of the data curve's by-source rows (an update of the
                 cache that removes the books)
then the caches are, e.g.:
  tc encode --corpus benchmarks/work/train100k.txt --out benchmarks/work/cache100k --pooling mean,cls --shard-size 10000
  tc encode --corpus benchmarks/work/rest900k.txt --out benchmarks/work/cache900k --pooling mean
  tc encode --corpus benchmarks/work/distill.txt --out benchmarks/work/cache-distill --pooling mean
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
from collections.abc import Iterator
from pathlib import Path

# (file under glue/, text columns, has a header row)
GLUE_TEXTS = [
    ("SST-2/train.tsv", [0], True), ("SST-2/dev.tsv", [0], True), ("SST-2/test.tsv", [1], True),
    ("CoLA/train.tsv", [3], False), ("CoLA/dev.tsv", [3], False), ("CoLA/test.tsv", [1], True),
    ("MRPC/msr_paraphrase_train.txt", [3, 4], True), ("MRPC/msr_paraphrase_test.txt", [3, 4], True),
    ("RTE/train.tsv", [1, 2], True), ("RTE/dev.tsv", [1, 2], True), ("RTE/test.tsv", [1, 2], True),
    ("QNLI/dev.tsv", [1, 2], True),
    ("STS-B/train.tsv", [7, 8], True), ("STS-B/dev.tsv", [7, 8], True), ("STS-B/test.tsv", [7, 8], True),
]


def gz_lines(path: Path) -> list[str]:
    """Lines of a gzipped text file, without line ends."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().split("\n")


def glue_texts(glue: Path) -> Iterator[str]:
    """Every sentence of the GLUE/STS-B files listed in GLUE_TEXTS."""
    for name, columns, header in GLUE_TEXTS:
        with open(glue / name, encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        for row in rows[1 if header else 0:]:
            yield from (row[c] for c in columns if c < len(row))


def write_lines(path: Path, lines: list[str]) -> None:
    """One sentence per line."""
    path.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")
    print(f"{path}: {len(lines):,} sentences")


def main() -> None:
    """Write the three files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/work"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wiki = gz_lines(args.data / "corpus/wikipedia_en_sentences.txt.gz")
    probe = [line for i, line in enumerate(wiki, 1) if i % 60 == 7]
    others = [line for i, line in enumerate(wiki, 1) if i % 60 != 7]
    train = [line for i, line in enumerate(others, 1) if i % 6 == 1][:100_000]
    write_lines(args.out / "probe10k.txt", probe[:10_000])
    write_lines(args.out / "train100k.txt", train)
    seen, rest = set(train), []
    for text in [*wiki, *gz_lines(args.data / "corpus/wikinews_en_sentences.txt.gz"),
                 *glue_texts(args.data / "glue")]:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            rest.append(text)
    write_lines(args.out / "rest900k.txt", rest[:900_000])
    probe_all, seen = set(probe), set(train)
    extra = []
    for text in [*others, *gz_lines(args.data / "corpus/wikinews_en_sentences.txt.gz")]:
        text = text.strip()
        if text and text not in seen and text not in probe_all:
            seen.add(text)
            extra.append(text)
    random.Random(0).shuffle(extra)
    write_lines(args.out / "distill.txt", train + extra)
    write_new_sources(args.data / "corpus", args.out, seen | probe_all)


NEW_SOURCES = ["wikipedia2014_en_sentences.txt.gz", "wikipedia2018_en_sentences.txt.gz",
               "gutenberg_en_sentences.txt.gz"]


def write_new_sources(corpus: Path, out: Path, taken: set[str]) -> None:
    """probe-mix.txt and distill-new.txt from the three newer corpus files (see the module docstring)."""
    probes, rest = [], []
    for name in NEW_SOURCES:
        lines = [line.strip() for line in gz_lines(corpus / name)]
        probes.append([line for i, line in enumerate(lines, 1) if i % 60 == 7 and line][:3_000])
        rest.extend(line for i, line in enumerate(lines, 1) if i % 60 != 7 and line)
    probe_mix = [text for group in zip(*probes, strict=False) for text in group]
    held = set(probe_mix)
    seen, new = set(taken), []
    for text in rest:
        if text not in seen and text not in held:
            seen.add(text)
            new.append(text)
    random.Random(1).shuffle(new)
    write_lines(out / "probe-mix.txt", probe_mix)
    write_lines(out / "probe-wiki.txt", [text for group in zip(*probes[:2], strict=False) for text in group])
    write_lines(out / "distill-new.txt", new)
    books = {line.strip() for line in gz_lines(corpus / NEW_SOURCES[-1])}
    write_lines(out / "distill-new-wiki.txt", [text for text in new if text not in books])


if __name__ == "__main__":
    main()
