"""Neighbour-search speed for probes: exact (torch, faiss flat) vs approximate (faiss IVF, HNSW) at 100k and 1M.

Usage: .venv/bin/python -m benchmarks.probe --cache benchmarks/work/cache100k [--cache more_cache/]
       [--sizes 100000,1000000]
The vectors are the caches' real teacher vectors, concatenated in the order given; a size beyond them is filled
with draws from a Gaussian with the real vectors' mean and covariance (then L2-normalised), and the table says so.
Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import append_results, machine
from pipeline.neighbours import build_index, exact_search, normalize, recall_at_k
from teacher_cache import open_cache


def make_vectors(real: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`size` unit vectors: the real ones first, then Gaussian draws with their mean and covariance."""
    if size <= len(real):
        return normalize(real[:size])
    rng = np.random.default_rng(seed)
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    extra = rng.multivariate_normal(mean, cov, size - len(real), method="cholesky").astype(np.float32)
    return normalize(np.concatenate([real, extra]))


def main() -> None:
    """Measure and append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, action="append", help="teacher cache (repeatable)")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--skip", default="", help="comma-separated methods to skip, e.g. faiss-flat,hnsw")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    real = np.concatenate([open_cache(path).vectors() for path in args.cache])
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        data = make_vectors(real, size)
        rng = np.random.default_rng(1)
        q_idx = rng.choice(size, args.queries, replace=False)
        queries = data[q_idx] + rng.normal(0, 0.01, (args.queries, data.shape[1])).astype(np.float32)
        queries = normalize(queries)
        start = time.perf_counter()
        _, exact_ids = exact_search(data, queries, args.k)
        fill = "" if size <= len(real) else f"{size - len(real):,} Gaussian fill"
        rows.append((size, "exact, torch matmul + topk (blocked)", 0.0, time.perf_counter() - start, 1.0, fill))
        print(rows[-1], flush=True)
        if "faiss-flat" not in args.skip:
            start = time.perf_counter()
            flat = faiss.IndexFlatIP(data.shape[1])
            flat.add(data)
            t_build = time.perf_counter() - start
            start = time.perf_counter()
            _, ids = flat.search(queries, args.k)
            rows.append((size, "exact, faiss IndexFlatIP", t_build, time.perf_counter() - start,
                         recall_at_k(exact_ids, ids), fill))
            print(rows[-1], flush=True)
            del flat
        for kind in ("ivf", "hnsw"):
            if kind in args.skip:
                continue
            start = time.perf_counter()
            index = build_index(data, kind, args.k, tune_queries=queries[:200])
            t_build = time.perf_counter() - start
            start = time.perf_counter()
            _, ids = index.search(queries, args.k)
            t_query = time.perf_counter() - start
            knob = "nprobe" if kind == "ivf" else "efSearch"
            notes = [f"{knob}={index.param}", f"build+tune {t_build:.1f} s", fill]
            rows.append((size, f"faiss {kind.upper()} (auto-tuned)", index.build_s, t_query,
                         recall_at_k(exact_ids, ids), "; ".join(filter(None, notes))))
            print(rows[-1], flush=True)
            del index
    table = ["| vectors | method | build s | s per 1,000 queries | recall@10 vs exact | notes |",
             "|---|---|---|---|---|---|"]
    table += [f"| {size:,} | {name} | {build:.1f} | {query * 1000 / args.queries:.2f} | {recall:.3f} | {note} |"
              for size, name, build, query, recall, note in rows]
    section = "\n".join([
        f"## Probe index: exact vs approximate search ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}. dim {real.shape[1]}, k={args.k}, {args.queries} queries (database rows with a "
        f"little noise). Vectors: {len(real):,} real teacher vectors from {', '.join(args.cache)}, taken in that "
        "order; a size beyond them is filled with Gaussian draws (real mean and covariance), as the notes say. "
        "Approximate indexes are tuned (nprobe / efSearch doubled) on 200 "
        "queries until recall@10 vs exact >= 0.95.", "", *table])
    append_results(section)
    print(section)


if __name__ == "__main__":
    main()
