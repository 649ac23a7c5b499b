"""The held-out validation rows: which ids (a fixed hash of the id, the same for every seed, run and resume), and
reading their texts and vectors (a remote cache keeps them in its local mirror, since they touch every shard)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from teacher_cache.base.atomic import atomic_path
from teacher_cache.reader import TeacherCache
from teacher_cache.shards import vectors_of

VAL_SALT = 0x5EED_7A1  # fixed: the validation rows do not change with the training seed


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-spread hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def validation_ids(n_rows: int, val_rows: int, chunk: int = 1 << 20, exclude: np.ndarray | None = None) -> np.ndarray:
    """The `val_rows` ids in [0, n_rows) with the smallest hash, less the sorted ids `exclude` (rows a version
    deleted): sorted, stable across runs, seeds and resumes."""
    if val_rows <= 0:
        return np.zeros(0, dtype=np.int64)
    best_ids, best_keys = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    for start in range(0, n_rows, chunk):
        ids = np.arange(start, min(start + chunk, n_rows), dtype=np.int64)
        if exclude is not None and len(exclude):
            ids = ids[~np.isin(ids, exclude, assume_unique=True)]
        keys = _mix64(ids.astype(np.uint64) + np.uint64(VAL_SALT))
        ids, keys = np.concatenate([best_ids, ids]), np.concatenate([best_keys, keys])
        keep = np.argpartition(keys, val_rows - 1)[:val_rows] if len(keys) > val_rows else slice(None)
        best_ids, best_keys = ids[keep], keys[keep]
    return np.sort(best_ids)


def read_rows(cache: TeacherCache, ids: np.ndarray, column: str,
              targets: tuple[str, ...] | None = None) -> tuple[list[str], np.ndarray]:
    """Texts and float32 vectors (`column`, or the targets of the teachers `targets`: TeacherCache.read_targets)
    of the given sorted ids, reading only the shards that hold them.

    A remote cache keeps them in its local mirror (an Arrow file named by the cache's content and the ids), since
    validation ids touch every shard: the first run fetches each shard once for them, later runs and resumes none.
    """
    kept = remembered_rows(cache, ids, column)
    if kept is not None:
        return kept
    texts: list[str] = []
    parts: list[np.ndarray] = []
    cache.schedule([i for i, s in enumerate(cache.manifest.shards)
                    if np.any((ids >= s.id_start) & (ids <= s.id_end))])
    for index, info in enumerate(cache.manifest.shards):
        local = ids[(ids >= info.id_start) & (ids <= info.id_end)] - info.id_start
        if len(local) == 0:
            continue
        if targets is not None:  # several teachers (or a side one): their vectors of the shard, then these rows
            texts += cache.read_shard(index, ["text"]).take(pa.array(local)).column("text").to_pylist()
            parts.append(cache.read_targets(index, list(targets), column)[local])
            continue
        table = cache.read_shard(index, ["text", column]).take(pa.array(local))
        texts += table.column("text").to_pylist()
        parts.append(np.asarray(vectors_of(table, column), dtype=np.float32))
    dim = cache.dim if targets is None else cache.target_dim(list(targets))
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    if cache.remote and len(ids):
        remember_rows(cache, ids, column, texts, vectors)
    return texts, vectors


def rows_file(cache: TeacherCache, ids: np.ndarray, column: str) -> Path:
    """Where a remote cache's mirror keeps the rows of `ids` (named by the cache's content, column and ids)."""
    key = hashlib.sha256(f"{cache.manifest.content_fingerprint()}:{column}:".encode() + ids.tobytes()).hexdigest()
    return cache.directory / f"rows-{key[:24]}.arrow"


def remembered_rows(cache: TeacherCache, ids: np.ndarray, column: str) -> tuple[list[str], np.ndarray] | None:
    """The rows of `ids` kept in a remote cache's mirror by an earlier run, or None."""
    if not cache.remote or not len(ids):
        return None
    path = rows_file(cache, np.asarray(ids, dtype=np.int64), column)
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid):  # not there (or a torn copy): read the shards
        return None
    if table.num_rows != len(ids) or not np.array_equal(table.column("id").to_numpy(), ids):
        return None
    return table.column("text").to_pylist(), np.array(vectors_of(table, "vector"), dtype=np.float32)  # a copy:
    # the mapped file is read-only, and torch will not take a read-only array without a warning


def remember_rows(cache: TeacherCache, ids: np.ndarray, column: str, texts: list[str], vectors: np.ndarray) -> None:
    """Keep the rows of `ids` in a remote cache's mirror (temporary name, then rename)."""
    table = pa.table({"id": pa.array(np.asarray(ids, dtype=np.int64)), "text": pa.array(texts, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])})
    path = rows_file(cache, np.asarray(ids, dtype=np.int64), column)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, pa.ipc.new_file(str(tmp), table.schema) as writer:
            writer.write_table(table)
    except OSError:  # only a saving for the next run: a full disk must not stop this one
        pass
