"""Student quality: the recipes' frontier against their teacher and model2vec, one table per teacher in RESULTS.md.

Usage: .venv/bin/python -m benchmarks.student_quality --probe-cache benchmarks/work/probe10k \
           --student static=benchmarks/work/students/static [--student NAME=PATH ...] [--note TEXT] [--no-model2vec]
The probe cache holds sentences none of the students trained on; its teacher is the one every row is compared
with. kNN@10 agreement: 1,000 of its rows as queries against the rest, exact search (faiss brute force). STS:
Spearman x100 of cosine on STS-B dev and test (bundled) and STS-B train (../shared/data, when present). Encode
speed: the probe sentences encoded in this process, one model after the other (best of two passes for the fast
models), so the ratios to the teacher come from one run. Each run replaces this teacher's table in RESULTS.md
(between markers), so the table is regenerated, never appended twice. A student's row says which recipe made it
and whether that recipe's goal is met.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import STS_TRAIN, machine, replace_section
from pipeline.neighbours import exact_search, normalize
from pipeline.sts import load_task, read_stsbenchmark, sts_spearman
from teacher_cache import open_cache

# recipe -> (minimum encode speed vs its teacher, STS-B test goal: absolute x100, or a ratio to the teacher if < 2)
# (paper: issue 24's goal for its BiLSTM; paper-512: issue 12's for the paper's sizes)
GOALS = {"static": (30.0, 77.0), "compact": (5.0, 78.0), "paper": (5.0, 0.95), "paper-512": (15.0, 0.95)}


def agreement(teacher: np.ndarray, student: np.ndarray, queries: int = 1000, k: int = 10, seed: int = 0) -> float:
    """Mean overlap of the k nearest neighbours, teacher vs student, for held-out query rows."""
    rng = np.random.default_rng(seed)
    is_query = np.zeros(len(teacher), bool)
    is_query[rng.choice(len(teacher), queries, replace=False)] = True
    t, s = normalize(teacher), normalize(student)
    _, t_ids = exact_search(t[~is_query], t[is_query], k)
    _, s_ids = exact_search(s[~is_query], s[is_query], k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(t_ids, s_ids, strict=True)]))


def measure(name: str, encode, texts: list[str], teacher_vecs: np.ndarray, params: int, sts_tasks,
            passes: int = 1) -> dict:
    """STS scores, agreement and encode speed (best of `passes`) of one model."""
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        vectors = np.asarray(encode(texts), dtype=np.float32)
        rates.append(len(texts) / (time.perf_counter() - start))
    row = {"model": name, "params_M": params / 1e6, "sentences_per_s": max(rates),
           "knn10": agreement(teacher_vecs, vectors)}
    for pairs in sts_tasks:
        row[pairs.name] = sts_spearman(encode, pairs)
    print(json.dumps(row), flush=True)
    return row


def goal_check(recipe: str | None, row: dict, teacher: dict) -> str:
    """'met' / 'not met (...)' against the recipe's goals, or '' for rows that are not a recipe."""
    if recipe not in GOALS:
        return ""
    speed_goal, sts_goal = GOALS[recipe]
    speed = row["sentences_per_s"] / teacher["sentences_per_s"]
    sts_needed = sts_goal * teacher["STS-B test"] if sts_goal < 2 else sts_goal
    misses = ([f"speed {speed:.1f}x < {speed_goal:.0f}x"] if speed < speed_goal else []) + (
        [f"STS-B test {row['STS-B test']:.2f} < {sts_needed:.2f}"] if row["STS-B test"] < sts_needed else [])
    return "met" if not misses else "not met (" + "; ".join(misses) + ")"


def teacher_label(path: str) -> str:
    """A readable teacher name: the bundled default's model name, else the folder (or hub) name."""
    from teacher_cache.encode.teacher import default_teacher_path

    if Path(path).resolve() == Path(default_teacher_path()).resolve():
        return "all-MiniLM-L6-v2"
    return Path(path).name


def main() -> None:
    """Evaluate the teacher, each student and model2vec; regenerate this teacher's table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-cache", required=True)
    parser.add_argument("--student", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-model2vec", action="store_true")
    parser.add_argument("--section", default="", help="a table of its own beside this teacher's main one, e.g. "
                        "'4.4M sentences' (its own markers in RESULTS.md; the main table is left as it is)")
    args = parser.parse_args()
    from student import Student
    from teacher_cache.encode.batching import teacher_encoder

    cache = open_cache(args.probe_cache)
    texts, teacher_vecs = cache.texts(), cache.vectors()
    sts_tasks = [load_task("sts-b"), load_task("sts-b-dev")]
    if STS_TRAIN.exists():
        sts_tasks.append(read_stsbenchmark(STS_TRAIN, "STS-B train"))
    teacher_name = teacher_label(cache.manifest.teacher)
    teacher = teacher_encoder(cache.manifest.teacher)
    rows = [measure(f"teacher {teacher_name}", teacher, texts, teacher_vecs,
                    sum(p.numel() for p in teacher.teacher.model.parameters()), sts_tasks)]
    for spec in args.student:
        name, path = spec.split("=", 1)
        model = Student.from_pretrained(path)
        metrics = json.loads((Path(path) / "metrics.json").read_text())
        train_args = json.loads((Path(path) / "training_args.json").read_text())
        row = measure(name, lambda s, m=model: m.encode(s, batch_size=256), texts, teacher_vecs,
                      model.num_parameters(), sts_tasks, passes=2)
        row |= {"recipe": train_args.get("recipe"), "rows_seen": metrics.get("rows_seen", 0),
                "train_min": metrics.get("train_seconds", 0) / 60, "train_per_s": metrics.get("sentences_per_second"),
                "cache_rows": min(train_args.get("cache", {}).get("rows") or 0, train_args.get("max_rows") or 10**12),
                "arch": train_args.get("arch")}
        rows.append(row)
    if not args.no_model2vec:
        from model2vec.distill import distill

        start = time.perf_counter()
        m2v = distill(model_name=cache.manifest.teacher, pca_dims=256)
        row = measure("model2vec distill(pca_dims=256)", m2v.encode, texts, teacher_vecs, int(m2v.embedding.size),
                      sts_tasks, passes=2)
        rows.append(row | {"train_min": (time.perf_counter() - start) / 60})
    base = rows[0]
    has_train = "STS-B train" in base
    table = ["| model | recipe | rows seen (cache) | training | STS-B test | × teacher | STS-B dev |"
             + (" STS-B train |" if has_train else "") + " kNN@10 | params (M) | encode sentences/s | "
             "× teacher | recipe goal |",
             "|---|---|---|---|---|---|---|" + ("---|" if has_train else "") + "---|---|---|---|---|"]
    for r in rows:
        seen = f"{r['rows_seen']:,} ({r['cache_rows']:,})" if r.get("rows_seen") else ""
        trained = f"{r['train_min']:.1f} min" if r.get("train_min") else ""
        table.append(
            f"| {r['model']} | {r.get('recipe') or ''} | {seen} | {trained} | {r['STS-B test']:.2f} | "
            f"{r['STS-B test'] / base['STS-B test']:.3f} | {r['STS-B dev']:.2f} |"
            + (f" {r['STS-B train']:.2f} |" if has_train else "")
            + f" {r['knn10']:.3f} | {r['params_M']:.1f} | {r['sentences_per_s']:,.0f} | "
            f"{r['sentences_per_s'] / base['sentences_per_s']:.1f} | {goal_check(r.get('recipe'), r, base)} |")
    goals = "; ".join(f"{k}: >= {s:.0f}x the teacher's speed and STS-B test >= "
                      + (f"{g:.2f}x the teacher" if g < 2 else f"{g:.1f}") for k, (s, g) in GOALS.items())
    section = "\n".join([
        f"## Student recipes vs teacher {teacher_name}" + (f", {args.section}" if args.section else "")
        + f" ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}. Regenerated by `python -m benchmarks.student_quality` (it replaces this table). "
        f"STS: cosine Spearman x100; settings were chosen on STS-B dev/train and the validation split, never on "
        f"STS-B test. kNN@10: {len(texts):,} held-out sentences (`{args.probe_cache}`, never trained on), 1,000 "
        "queries vs the rest, exact search. Encode: those sentences in this process, one model after the other, 2 "
        "threads (the teacher through this project's length-sorted encoder; students best of two passes). Training: "
        f"wall time from the student's metrics.json. Goals (issues 12, 24): {goals}.", args.note, "", *table])
    replace_section(f"student_quality:{teacher_name}" + (f":{args.section}" if args.section else ""), section)
    print(section)


if __name__ == "__main__":
    main()
