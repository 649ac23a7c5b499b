"""tc encode vs sentence-transformers, whole process against whole process, same sentences and teacher.

Usage: .venv/bin/python benchmarks/encode.py [--rows 4000] [--runs 3]
Appends a table to benchmarks/RESULTS.md: wall time, sentences/s, ratio, peak RSS, shard-writing share, and the
vectors' cosine to sentence-transformers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, append_results, machine, median, paired

CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "wikipedia_en_sentences.txt.gz"


def make_corpus(rows: int, path: Path) -> Path:
    """`rows` real sentences spread over the shared Wikipedia corpus (or the bundled sample if it is absent)."""
    if CORPUS.exists():
        with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
            lines = [line for i, line in enumerate(fh) if i % 97 == 5][:rows]
    else:
        lines = (ROOT / "data" / "sample_corpus.txt").read_text().splitlines(keepends=True)[:rows]
    path.write_text("".join(lines))
    return path


def main() -> None:
    """Run the comparison and append it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from teacher_cache.encode.teacher import default_teacher_path

    teacher = default_teacher_path()
    tmp = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    corpus = make_corpus(args.rows, tmp / "corpus.txt")
    tc = str(Path(sys.executable).parent / "tc")
    commands = {
        "tc encode (auto precision)": [tc, "encode", "--corpus", str(corpus), "--out", str(tmp / "auto"),
                                       "--force", "--quiet"],
        "tc encode --precision fp32": [tc, "encode", "--corpus", str(corpus), "--out", str(tmp / "fp32"),
                                       "--force", "--quiet", "--precision", "fp32"],
        "sentence-transformers encode(batch_size=64)": [sys.executable, str(ROOT / "benchmarks" / "st_encode.py"),
                                                        str(corpus), teacher, str(tmp / "st.npy")],
    }
    print(f"benchmark: {args.rows} sentences, {args.runs} paired runs", file=sys.stderr)
    results = paired(commands, args.runs)
    st_name = list(commands)[-1]
    st_wall = median(results[st_name]["wall"])
    reference = np.load(tmp / "st.npy")
    rows = []
    for name, res in results.items():
        wall = median(res["wall"])
        ratios = [b / a for a, b in zip(res["wall"], results[st_name]["wall"], strict=True)]
        cosine, write_share = "", ""
        if name.startswith("tc"):
            out = tmp / ("auto" if "auto" in name else "fp32")
            from teacher_cache import open_cache

            cache = open_cache(out)
            ours = cache.vectors()
            cosine = f"{float(((ours * reference).sum(1)).min()):.6f} ({cache.manifest.precision})"
            last = json.loads((out / "manifest.json").read_text())["extra"]["last_run"]
            write_share = f"{100 * last['write_s'] / max(last['encode_s'], 1e-9):.2f}%"
        rows.append(f"| {name} | {wall:.1f} | {args.rows / wall:.0f} | {median(ratios):.2f}x "
                    f"(min {min(ratios):.2f}, max {max(ratios):.2f}) | {median(res['rss']):.0f} | {write_share} "
                    f"| {cosine} |")
    section = "\n".join([
        f"## Encode: tc encode vs sentence-transformers ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine()}. {args.rows} Wikipedia sentences (every 97th line of the shared corpus), teacher "
        f"all-MiniLM-L6-v2, max length 256; whole process against whole process (start-up, model load, writing "
        f"included), {args.runs} paired runs after a warm-up, medians. Speed-up = sentence-transformers wall / "
        f"this wall, per pair. Write share = time in the shard writer / time in the teacher.",
        "",
        "| command | wall s | sentences/s | speed-up vs ST | peak RSS MiB | write share | min cosine to ST |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"(sentence-transformers median wall {st_wall:.1f} s.)",
    ])
    append_results(section)
    print(section)


if __name__ == "__main__":
    main()
