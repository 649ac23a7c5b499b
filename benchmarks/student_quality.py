"""Student quality: STS-B (cosine Spearman x100) and kNN@10 agreement with the teacher, against model2vec.

Usage: .venv/bin/python -m benchmarks.student_quality --probe-cache benchmarks/work/probe10k \
           --student bilstm=benchmarks/work/students/bilstm-teacher [--student NAME=PATH ...] [--note TEXT]
The probe cache holds sentences none of the students trained on; agreement is measured with 1,000 of its rows as
queries against the rest, exactly (faiss brute force). model2vec is `distill(teacher, pca_dims=256)` (needs the bench
extra). Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import append_results, machine
from pipeline.neighbours import exact_search, normalize
from pipeline.sts import load_task, sts_spearman
from teacher_cache import open_cache


def agreement(teacher: np.ndarray, student: np.ndarray, queries: int = 1000, k: int = 10, seed: int = 0) -> float:
    """Mean overlap of the k nearest neighbours, teacher vs student, for held-out query rows."""
    rng = np.random.default_rng(seed)
    is_query = np.zeros(len(teacher), bool)
    is_query[rng.choice(len(teacher), queries, replace=False)] = True
    t, s = normalize(teacher), normalize(student)
    _, t_ids = exact_search(t[~is_query], t[is_query], k)
    _, s_ids = exact_search(s[~is_query], s[is_query], k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(t_ids, s_ids, strict=True)]))


def measure(name: str, encode, texts: list[str], teacher_vecs: np.ndarray, params: int, sts_tasks) -> dict:
    """STS scores, agreement and encode speed of one model."""
    start = time.perf_counter()
    vectors = np.asarray(encode(texts), dtype=np.float32)
    rate = len(texts) / (time.perf_counter() - start)
    row = {"model": name, "params_M": params / 1e6, "sentences_per_s": rate,
           "knn10": agreement(teacher_vecs, vectors)}
    for pairs in sts_tasks:
        row[pairs.name] = sts_spearman(encode, pairs)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    """Evaluate the teacher, each student and model2vec; append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-cache", required=True)
    parser.add_argument("--student", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-model2vec", action="store_true")
    args = parser.parse_args()
    from student import Student
    from teacher_cache.encode import teacher_encoder

    cache = open_cache(args.probe_cache)
    texts, teacher_vecs = cache.texts(), cache.vectors()
    sts_tasks = [load_task("sts-b"), load_task("sts-b-dev")]
    teacher = teacher_encoder(cache.manifest.teacher)
    rows = [measure("teacher all-MiniLM-L6-v2", teacher, texts, teacher_vecs,
                    sum(p.numel() for p in teacher.teacher.model.parameters()), sts_tasks)]
    for spec in args.student:
        name, path = spec.split("=", 1)
        model = Student.from_pretrained(path)
        metrics = json.loads((Path(path) / "metrics.json").read_text()) if (Path(path) / "metrics.json").exists() \
            else {}
        label = f"{name} ({metrics.get('rows_seen', 0):,} rows seen, {metrics.get('train_seconds', 0) / 60:.0f} min)"
        rows.append(measure(label, lambda s, m=model: m.encode(s, batch_size=256), texts, teacher_vecs,
                            model.num_parameters(), sts_tasks))
        rows[-1]["train_per_s"] = metrics.get("sentences_per_second")
    if not args.no_model2vec:
        from model2vec.distill import distill

        start = time.perf_counter()
        m2v = distill(model_name=cache.manifest.teacher, pca_dims=256)
        label = f"model2vec distill(pca_dims=256) ({time.perf_counter() - start:.0f} s to make)"
        rows.append(measure(label, m2v.encode, texts, teacher_vecs, int(m2v.embedding.size), sts_tasks))
    teacher_test = rows[0]["STS-B test"]
    table = ["| model | STS-B test | × teacher | STS-B dev | kNN@10 agreement | params (M) | encode sentences/s | "
             "encode × teacher | training sentences/s |", "|---|---|---|---|---|---|---|---|---|"]
    teacher_rate = rows[0]["sentences_per_s"]
    table += [f"| {r['model']} | {r['STS-B test']:.2f} | {r['STS-B test'] / teacher_test:.3f} | "
              f"{r['STS-B dev']:.2f} | {r['knn10']:.3f} | {r['params_M']:.1f} | {r['sentences_per_s']:,.0f} | "
              f"{r['sentences_per_s'] / teacher_rate:.1f} | "
              f"{'' if r.get('train_per_s') is None else format(r['train_per_s'], ',.0f')} |" for r in rows]
    section = "\n".join([
        f"## Student quality vs teacher{'' if args.no_model2vec else ' and model2vec'} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine()}. STS-B: bundled sts-test/sts-dev, cosine Spearman x100. kNN@10: {len(texts):,} "
        "held-out Wikipedia sentences (never trained on), 1,000 queries vs the rest, exact search. Encode "
        "sentences/s: encoding those sentences in this process, one model after the other, 2 threads (the teacher "
        "through this project's length-sorted encoder). Training sentences/s: the training loop's own rate, from "
        "the student's metrics.json (threads as the note says).", args.note, "", *table])
    append_results(section)
    print(section)


if __name__ == "__main__":
    main()
