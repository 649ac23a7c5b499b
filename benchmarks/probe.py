"""Neighbour-search speed for probes: exact (faiss.knn, blocked torch) vs approximate (faiss IVF, HNSW) at 100k and 1M.

Usage: .venv/bin/python -m benchmarks.probe --cache benchmarks/work/cache100k [--cache benchmarks/work/cache900k]
       [--sizes 100000,1000000]     (the caches' sentence files: python -m benchmarks.corpora)
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


def torch_exact_search(database: np.ndarray, queries: np.ndarray, k: int,
                       block_floats: int = 32_000_000) -> tuple[np.ndarray, np.ndarray]:
    """The alternative to faiss for exact search: torch matmul + topk, blocked so rows are read once per block."""
    db = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(k, len(db))
    # Streaming the whole database once per small query chunk made 1M rows memory-bound (3x slower than faiss);
    # blocking rows too keeps each (queries x rows) score block near block_floats and merges running top-k lists.
    q_block = max(1, min(len(q_all), 1024))
    db_block = max(k, block_floats // q_block)
    sims, ids = [], []
    with torch.inference_mode():
        for q_start in range(0, len(q_all), q_block):
            q = q_all[q_start:q_start + q_block]
            best_v = torch.full((len(q), 0), float("-inf"))
            best_i = torch.zeros((len(q), 0), dtype=torch.int64)
            for d_start in range(0, len(db), db_block):
                top = torch.topk(q @ db[d_start:d_start + db_block].T, min(k, len(db) - d_start), dim=1)
                merged_v = torch.cat([best_v, top.values], dim=1)
                merged_i = torch.cat([best_i, top.indices + d_start], dim=1)
                keep = torch.topk(merged_v, min(k, merged_v.shape[1]), dim=1)
                best_v, best_i = keep.values, torch.gather(merged_i, 1, keep.indices)
            sims.append(best_v.numpy())
            ids.append(best_i.numpy())
    return np.concatenate(sims), np.concatenate(ids).astype(np.int64)


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
    parser.add_argument("--skip", default="", help="comma-separated methods to skip, e.g. torch,hnsw")
    args = parser.parse_args()
    real = np.concatenate([open_cache(path).vectors() for path in args.cache])
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        data = make_vectors(real, size)
        rng = np.random.default_rng(1)
        q_idx = rng.choice(size, args.queries, replace=False)
        queries = data[q_idx] + rng.normal(0, 0.01, (args.queries, data.shape[1])).astype(np.float32)
        queries = normalize(queries)
        fill = "" if size <= len(real) else f"{size - len(real):,} Gaussian fill"
        start = time.perf_counter()
        _, exact_ids = exact_search(data, queries, args.k)
        rows.append((size, "exact, faiss.knn (tc probe's exact search)", 0.0, time.perf_counter() - start, 1.0, fill))
        print(rows[-1], flush=True)
        if "torch" not in args.skip:
            start = time.perf_counter()
            _, ids = torch_exact_search(data, queries, args.k)
            rows.append((size, "exact, torch matmul + topk (blocked)", 0.0, time.perf_counter() - start,
                         recall_at_k(exact_ids, ids), fill))
            print(rows[-1], flush=True)
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
