"""A cache of a fine-tuned teacher's logits over a task's training rows (kind "logits", one `logits` column).

The same writer as `tc encode` (teacher_cache/cache_writer.py): Arrow shards written atomically, a manifest saved
after each one, a rerun resumes after the last complete shard and refuses other settings without --force. Ids are
the rows' positions in the task's training file, and each row's text is stored (pairs joined by a tab), so a KD
run can check the rows match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from teacher_cache.base.errors import CacheError
from teacher_cache.base.progress import Progress, log
from teacher_cache.cache_writer import CacheWriter
from teacher_cache.manifest import CacheManifest
from teacher_cache.shards import ShardRows

LOGITS_COLUMN = "logits"
# (first row id, rows of a chunk) -> (logits (rows, n_out), word-pieces per row)
LogitFn = Callable[[int, list[str]], tuple[np.ndarray, np.ndarray]]


def model_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (as Teacher.weights_hash), so caches can name their teacher."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(memoryview(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy()))
    return digest.hexdigest()[:32]


def rows_fingerprint(rows: list[str]) -> str:
    """sha256 of the rows (in order), the logits cache's stand-in for a corpus fingerprint."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def logits_manifest(teacher: str, teacher_hash: str, n_out: int, max_length: int, rows: list[str],
                    source: str, task: str, labels: list[str] | None, shard_size: int) -> CacheManifest:
    """The manifest of a logits cache (no pooling, no tokenizer files, one `logits` column of width n_out)."""
    manifest = CacheManifest(
        teacher=teacher, teacher_hash=teacher_hash, pooling=[], max_length=max_length, dim=n_out, dtype="float32",
        normalize=False, format="arrow", shard_size=shard_size, corpus_fingerprint=rows_fingerprint(rows),
        corpus_files=[source], precision="fp32", columns={LOGITS_COLUMN: LOGITS_COLUMN}, tokenizer_dir=None,
        token_embeddings_file=None, kind="logits")
    manifest.extra.update({"task": task, "labels": labels})
    return manifest


def write_logits_cache(out: str | Path, rows: list[str], compute: LogitFn, manifest: CacheManifest,
                       force: bool = False, quiet: bool = False) -> CacheManifest:
    """Write (or finish) the logits cache of `rows` at `out` (a folder or a store URL), a shard at a time."""
    if not rows:
        raise CacheError("no rows to cache logits for")
    writer = CacheWriter(out, "tc cache-logits").acquire()  # one writer per folder
    try:
        return _write_logits_cache(writer, rows, compute, manifest, force, quiet)
    finally:
        writer.release()


def _write_logits_cache(writer: CacheWriter, rows: list[str], compute: LogitFn, manifest: CacheManifest,
                        force: bool, quiet: bool) -> CacheManifest:
    existing, replacing = writer.previous(force)  # a --force run replaces the old cache at its first shard
    if existing is not None:
        more = [f"{key}: {getattr(existing, key)!r} != {getattr(manifest, key)!r}" for key in ("kind", "dim")
                if getattr(existing, key) != getattr(manifest, key)]
        if existing.extra.get("task") != manifest.extra.get("task"):
            more.append(f"task: {existing.extra.get('task')!r} != {manifest.extra.get('task')!r}")
        if writer.resume(manifest, existing, more):
            log(f"{writer.where}: logits cache already complete ({existing.rows:,} rows); nothing to do")
            return existing
        manifest.extra.setdefault("other_files", [])
    else:
        manifest.extra["other_files"] = [] if replacing else writer.user_files()
    done = sum(s.rows for s in manifest.shards)
    if not replacing:
        writer.save(manifest)
    progress = Progress("logits", len(rows), quiet=quiet, start=done)
    for _ in range(len(manifest.shards), (len(rows) + manifest.shard_size - 1) // manifest.shard_size):
        chunk = rows[done:done + manifest.shard_size]
        logits, n_tokens = compute(done, chunk)
        if logits.shape != (len(chunk), manifest.dim):
            raise CacheError(f"the teacher gave logits of shape {logits.shape}, expected {(len(chunk), manifest.dim)}")
        shard = ShardRows(ids=np.arange(done, done + len(chunk), dtype=np.int64), texts=chunk, vectors={},
                          n_tokens=np.asarray(n_tokens, dtype=np.int32), extra={LOGITS_COLUMN: logits})
        if replacing is not False:  # --force: the old cache goes only now that the new one has its first shard
            writer.wipe(replacing)
            manifest.extra["other_files"], replacing = writer.user_files(), False
        writer.commit(manifest, shard)
        done += len(chunk)
        progress.update(len(chunk))
    progress.close()
    return writer.finish(manifest)
