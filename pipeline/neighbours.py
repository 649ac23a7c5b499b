"""Nearest-neighbour search for probes: exact (torch matmul + topk) or faiss IVF/HNSW with measured recall."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from teacher_cache.errors import CacheError

INDEXES = ("auto", "flat", "ivf", "hnsw")
EXACT_UP_TO = 250_000  # above this many rows, auto switches to an approximate index


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so inner product is cosine."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def exact_search(database: np.ndarray, queries: np.ndarray, k: int,
                 block_floats: int = 32_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (torch matmul + topk), blocked so the database is read once per query block."""
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
                tune_queries: np.ndarray | None = None, seed: int = 0) -> NeighbourIndex:
    """Build an index over unit vectors; approximate kinds are tuned until recall@k vs exact reaches the target."""
    if kind not in INDEXES:
        raise CacheError(f"--index {kind}: choose one of {', '.join(INDEXES)}")
    if kind == "auto":
        kind = "flat" if len(database) <= EXACT_UP_TO else "ivf"
    if kind == "flat":
        return NeighbourIndex("flat", database)
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
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
        values = [v for v in (4, 8, 16, 32, 64, 128, 256) if v <= nlist] or [nlist]
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
