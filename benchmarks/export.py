"""Exported students: ONNX vs torch encode speed, quantisation (size on disk, STS-B test change), static vs model2vec.

Usage: .venv/bin/python -m benchmarks.export [--students benchmarks/work/students/static ...] [--sentences 5000]
       [--threads 2] [--no-append]

Every trained student folder under benchmarks/work/students/ is taken when --students is not given. For each,
in this one process, one after the other on the same sentences (the bundled sample corpus): Student.encode
(torch) and OnnxStudent.encode (onnxruntime, the same thread count) at float32 / float16 / int8, each export's
size on disk and STS-B test Spearman; for static students also the model2vec exports (float32 / float16 / int8)
encoded by model2vec's own StaticModel, and a 256-wide random StaticModel of the teacher's vocabulary (the shape
of model2vec's distill(pca_dims=256) baseline). Encode rates are the best of --repeats runs after a warm-up; the
teacher (the bundled all-MiniLM-L6-v2 through this project's length-sorted encoder, or --teacher) encodes the same
sentences once in the same process, so every "x teacher" ratio comes from one run (--no-teacher leaves it out).
Appends one section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, append_results, machine

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rate(encode: Callable[[list[str]], np.ndarray], texts: list[str], repeats: int) -> float:
    """Sentences per second of encode(texts): best of `repeats`, after a warm-up call."""
    encode(texts[:256])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def measure_teacher(name: str | None, texts: list[str]) -> float:
    """The teacher's sentences/s on `texts` (this project's length-sorted encoder): one pass after a warm-up."""
    from teacher_cache.encode.batching import teacher_encoder

    rate_ = rate(teacher_encoder(name), texts, repeats=1)
    print("teacher", f"{rate_:,.1f}/s", flush=True)
    return rate_


def find_students(root: Path) -> list[Path]:
    """Student folders (config.json with an "arch") up to two levels below `root`."""
    import json

    found = []
    for config in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
        try:
            if "arch" in json.loads(config.read_text()):
                found.append(config.parent)
        except (OSError, ValueError):
            continue
    return found


def main() -> None:
    """Export every student, measure, append the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="*", type=Path, help="student folders (default: every one under "
                                                                   "benchmarks/work/students/)")
    parser.add_argument("--sentences", type=int, default=5000, help="sample-corpus sentences encoded for speed")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help="print the section only")
    parser.add_argument("--teacher", default=None, help="teacher folder or hub name (default: the bundled one)")
    parser.add_argument("--no-teacher", action="store_true", help="leave the teacher's speed out")
    args = parser.parse_args()

    import torch
    from model2vec import StaticModel

    from pipeline.sts import load_task, sts_spearman
    from student import OnnxStudent, Student
    from student.export.run import export_student, min_cosine
    from teacher_cache.base.bundled import bundled_data

    torch.set_num_threads(args.threads)
    students = args.students or find_students(ROOT / "benchmarks" / "work" / "students")
    if not students:
        raise SystemExit("no student folders: pass --students or train into benchmarks/work/students/")
    texts = bundled_data("sample_corpus.txt").read_text().splitlines()[:args.sentences]
    stsb = load_task("sts-b")
    bs = args.batch_size
    speed_rows, quant_rows, m2v_rows = [], [], []
    teacher_rate = None if args.no_teacher else measure_teacher(args.teacher, texts)
    work = Path(tempfile.mkdtemp(prefix="tc-export-bench-"))
    for folder in students:
        student = Student.from_pretrained(folder)
        arch, name = student.config.arch, folder.name
        reference = student.encode(texts[:1000], batch_size=bs)
        torch_rate = rate(lambda s, m=student: m.encode(s, batch_size=bs), texts, args.repeats)
        torch_sts = sts_spearman(lambda s, m=student: m.encode(s, batch_size=bs), stsb)
        weights_bytes = (folder / "model.safetensors").stat().st_size
        quant_rows.append((name, "torch (student folder)", "float32", weights_bytes, torch_sts, torch_sts, 1.0))
        print(name, "torch", f"{torch_rate:,.0f}/s", f"STS-B {torch_sts:.2f}", flush=True)
        speed = {"float32": None, "float16": None, "int8": None}
        for dtype in speed:
            out = work / f"{name}-onnx-{dtype}"
            export_student(folder, "onnx", out, dtype=dtype)
            model = OnnxStudent.from_pretrained(out, threads=args.threads)
            speed[dtype] = rate(lambda s, m=model: m.encode(s, batch_size=bs), texts, args.repeats)
            sts = sts_spearman(lambda s, m=model: m.encode(s, batch_size=bs), stsb)
            cos = min_cosine(reference, model.encode(texts[:1000], batch_size=bs))
            quant_rows.append((name, "onnx", dtype, (out / "model.onnx").stat().st_size, sts, torch_sts, cos))
            print(name, "onnx", dtype, f"{speed[dtype]:,.0f}/s", f"STS-B {sts:.2f}", f"cos {cos:.6f}", flush=True)
        speed_rows.append((name, arch, torch_rate, speed["float32"], speed["int8"]))
        if arch != "static":
            continue
        for dtype in ("float32", "float16", "int8"):
            out = work / f"{name}-m2v-{dtype}"
            export_student(folder, "model2vec", out, dtype=dtype)
            m2v = StaticModel.from_pretrained(out)
            encode = lambda s, m=m2v: m.encode(s, use_multiprocessing=False)  # noqa: E731
            sts = sts_spearman(encode, stsb)
            cos = min_cosine(reference, encode(texts[:1000]))
            quant_rows.append((name, "model2vec", dtype, (out / "model.safetensors").stat().st_size, sts, torch_sts,
                               cos))
            m2v_rows.append((name, f"model2vec StaticModel, exported {dtype}", rate(encode, texts, args.repeats)))
            print(name, "model2vec", dtype, f"{m2v_rows[-1][2]:,.0f}/s", f"STS-B {sts:.2f}", flush=True)
        from tokenizers import Tokenizer

        shape = StaticModel(np.random.default_rng(0).standard_normal(
            (student.config.vocab_size, 256)).astype(np.float32),
            Tokenizer.from_str(student.tokenizer_files["tokenizer.json"].decode()), normalize=True)
        m2v_rows.append((name, "model2vec StaticModel, random 256-wide (distill(pca_dims=256)'s shape)",
                         rate(lambda s, m=shape: m.encode(s, use_multiprocessing=False), texts, args.repeats)))
        m2v_rows.append((name, "Student.encode (torch, this student)", torch_rate))

    lines = [f"## Exported students: ONNX, model2vec, quantised weights ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}. `benchmarks/export.py`, {args.threads} threads for torch and onnxruntime, "
             f"{len(texts):,} sample-corpus sentences, batch {bs}, best of {args.repeats} runs after a warm-up, "
             "every model in one process one after the other. STS-B: bundled test set, cosine Spearman x100. "
             "Cosine: the smallest over 1,000 sentences between the export and the torch student.", "",
             "### Encode speed: onnxruntime vs torch", "",
             "| student | arch | torch sentences/s | onnxruntime float32 | × torch | onnxruntime int8 | × torch |"
             + (" torch × teacher | onnx float32 × teacher | onnx int8 × teacher |" if teacher_rate else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|---|" if teacher_rate else "")]
    if teacher_rate:
        lines.insert(-2, f"Teacher: {teacher_rate:,.1f} sentences/s on the same sentences in this process (one pass "
                         "after a warm-up).\n")
    lines += [f"| {n} | {a} | {t:,.0f} | {o:,.0f} | {o / t:.2f} | {q:,.0f} | {q / t:.2f} |"
              + (f" {t / teacher_rate:.1f} | {o / teacher_rate:.1f} | {q / teacher_rate:.1f} |" if teacher_rate else "")
              for n, a, t, o, q in speed_rows]
    lines += ["", "### Quantised weights: size on disk and STS-B test", "",
              "| student | format | dtype | weights on disk (MiB) | STS-B test | change (points) | min cosine |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {f} | {d} | {b / 2**20:,.1f} | {s:.2f} | {s - base:+.2f} | {c:.5f} |"
              for n, f, d, b, s, base, c in quant_rows]
    if m2v_rows:
        lines += ["", "### Static student vs model2vec, same sentences, same run", "",
                  "| student | encoder | sentences/s |", "|---|---|---|"]
        lines += [f"| {n} | {label} | {r:,.0f} |" for n, label, r in m2v_rows]
    shutil.rmtree(work, ignore_errors=True)
    section = "\n".join(lines)
    if not args.no_append:
        append_results(section)
    print(section)


if __name__ == "__main__":
    main()
