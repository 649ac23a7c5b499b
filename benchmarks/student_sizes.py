"""What student sizes cost: parameters and encode sentences/s of each architecture and width, next to the teacher.

Usage: .venv/bin/python -m benchmarks.student_sizes --cache benchmarks/work/probe10k [--sentences 3000]
Speed does not depend on the weights, so the students are freshly initialised (no training needed); quality at
each size is what benchmarks/student_quality.py measures for trained students. Every model encodes the same
sentences in this one process, one after the other, after a warm-up batch. Appends a table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import append_results, machine
from teacher_cache import open_cache

# (label, StudentConfig keyword arguments)
SIZES = [
    ("bilstm emb 300, hidden 512 (the paper's; the default)", {"arch": "bilstm"}),
    ("bilstm emb 300, hidden 256", {"arch": "bilstm", "hidden": 256}),
    ("bilstm emb 300, hidden 128", {"arch": "bilstm", "hidden": 128}),
    ("bilstm emb 128, hidden 128", {"arch": "bilstm", "emb_dim": 128, "hidden": 128}),
    ("cnn emb 300, 256 channels x widths 3/5/7", {"arch": "cnn"}),
    ("static emb 256 (mean of token vectors)", {"arch": "static"}),
]


def rate(encode, texts: list[str]) -> float:
    """Sentences per second of encode(texts), after one warm-up call."""
    encode(texts[:64])
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    """Measure every size and the teacher; append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a teacher cache: its texts and tokenizer are used")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    from student import Student, StudentConfig
    from teacher_cache.encode.batching import teacher_encoder

    cache = open_cache(args.cache)
    texts = cache.texts()[:args.sentences]
    teacher = teacher_encoder(cache.manifest.teacher)
    teacher_rate = rate(teacher, texts)
    rows = [("teacher all-MiniLM-L6-v2", sum(p.numel() for p in teacher.teacher.model.parameters()), teacher_rate)]
    print(rows[-1], flush=True)
    for label, kwargs in SIZES:
        model = Student.from_tokenizer_dir(StudentConfig(out_dim=cache.dim, **kwargs), cache.tokenizer_path).eval()
        rows.append((label, model.num_parameters(),
                     rate(lambda s, m=model: m.encode(s, batch_size=args.batch_size), texts)))
        print(rows[-1], flush=True)
    table = ["| model | params (M) | encode sentences/s | × teacher |", "|---|---|---|---|"]
    table += [f"| {name} | {params / 1e6:.1f} | {speed:,.0f} | {speed / teacher_rate:.1f} |"
              for name, params, speed in rows]
    section = "\n".join([
        f"## What student sizes cost: encode speed ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}. {len(texts):,} sentences of "
        f"{args.cache}, each model in turn in one process (students batch {args.batch_size}, the teacher through "
        "this project's length-sorted encoder), one timed run after a warm-up. Students freshly initialised: speed "
        "does not depend on the weights.", "", *table])
    append_results(section)
    print(section)


if __name__ == "__main__":
    main()
