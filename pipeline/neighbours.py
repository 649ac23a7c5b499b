"""Nearest-neighbour search for probes: exact (faiss brute force) or faiss IVF/HNSW with measured recall."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from teacher_cache.base.errors import UserError

INDEXES = ("auto", "flat", "ivf", "hnsw")
# Exact search costs rows x queries, building HNSW costs rows: measured at 100k and 1M rows, a build (~4e-4 s per
# row on 2 cores) is repaid only after ~50,000 queries (~8e-9 s per row per query), whatever the row count.
APPROX_FROM_QUERIES = 50_000


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so inner product is cosine."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def faiss_with_torch_threads():
    """The faiss module, set to use as many threads as torch does."""
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


def exact_search(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product with faiss's brute-force kNN (no index copy of the database)."""
    # faiss's brute force beat a blocked torch matmul + topk on both machines measured (benchmarks/RESULTS.md).
    faiss = faiss_with_torch_threads()
    sims, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                          np.ascontiguousarray(database, dtype=np.float32), min(k, len(database)),
                          metric=faiss.METRIC_INNER_PRODUCT)
    return sims, ids.astype(np.int64)


@dataclass
class NeighbourIndex:
    """A searchable index over unit vectors, with what it is and how well it matches exact search."""

    kind: str
    database: np.ndarray
    index: object = None
    build_s: float = 0.0
    recall: float | None = None  # recall@k against exact search on a sample of queries
    param: int | None = None  # nprobe (ivf) or efSearch (hnsw)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, row ids) of the k nearest rows for each query."""
        if self.kind == "flat":
            return exact_search(self.database, queries, k)
        sims, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, ids.astype(np.int64)


def build_index(database: np.ndarray, kind: str = "auto", k: int = 10, target_recall: float = 0.95,
                tune_queries: np.ndarray | None = None, seed: int = 0, n_queries: int = 1000) -> NeighbourIndex:
    """Build an index over unit vectors; approximate kinds are tuned until recall@k vs exact reaches the target.

    auto: exact search unless n_queries (how many searches the index will serve) would repay an HNSW build.
    """
    if kind not in INDEXES:
        raise UserError(f"--index {kind}: choose one of {', '.join(INDEXES)}")
    if kind == "auto":
        kind = "hnsw" if n_queries >= APPROX_FROM_QUERIES else "flat"
    if kind == "flat":
        return NeighbourIndex("flat", database)
    faiss = faiss_with_torch_threads()
    dim = database.shape[1]
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    if kind == "ivf":
        nlist = max(1, int(4 * math.sqrt(len(database))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = database[rng.choice(len(database), min(len(database), 40 * nlist), replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.add(database)
        values = [v for v in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if v <= nlist] or [nlist]
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(database)
        values = [16, 32, 64, 128, 256, 512]
    built = NeighbourIndex(kind, database, index, time.perf_counter() - start)
    if tune_queries is None:
        tune_queries = database[rng.choice(len(database), min(200, len(database)), replace=False)]
    _, exact_ids = exact_search(database, tune_queries, k)
    for value in values:
        if kind == "ivf":
            index.nprobe = value
        else:
            index.hnsw.efSearch = value
        _, ids = built.search(tune_queries, k)
        built.recall, built.param = recall_at_k(exact_ids, ids), value
        if built.recall >= target_recall:
            break
    return built


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate search also returns."""
    k = exact_ids.shape[1]
    return float(np.mean([len(set(e) & set(a)) / k for e, a in zip(exact_ids, approx_ids, strict=True)]))
