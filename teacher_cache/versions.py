"""Rows keyed by their text, and the versions of a cache: which rows each version holds, how often each text occurred.

A row's key is blake2b-64 of the text as stored (the corpus reader has stripped and cut it: the text the teacher
saw), so the same text always has the same key and a rerun on a changed corpus encodes only the keys the cache does
not hold. Shards are only ever appended (until `tc compact`); a version is the first `shards` shards less the ids
its small file lists as deleted (texts that left the corpus, and second copies in caches made before keys), with
the count of every text seen more than once. That file is a few bytes per changed row: 1% of 100k rows removed is
8 KB, where a live-row table would be 800 KB per version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, CacheIntegrityError, first_line
from teacher_cache.manifest import VERSIONS_DIR, CacheManifest, ShardInfo, VersionInfo

KEY_COLUMN = "key"
VERSION_ARRAYS = ("deleted", "dup_ids", "dup_counts")


def text_key(text: str) -> int:
    """The row key of one text: blake2b-64 of its UTF-8 bytes, as an unsigned integer."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def text_keys(texts: Iterable[str], count: int = -1) -> np.ndarray:
    """uint64 keys of `texts`, in order (~0.6 s per million sentences)."""
    return np.fromiter((text_key(t) for t in texts), dtype=np.uint64, count=count)


def table_keys(table: pa.Table) -> np.ndarray:
    """The keys of a shard table: its `key` column, or (a format-1 shard) its texts hashed."""
    if KEY_COLUMN in table.column_names:
        return table.column(KEY_COLUMN).to_numpy().astype(np.uint64, copy=False)
    column = table.column("text")
    return text_keys(column.to_pylist(), len(column))


def cache_keys(shards: list[ShardInfo], read: Callable[[ShardInfo, list[str]], pa.Table]) -> np.ndarray:
    """Every row's key, by id (ids are positions), reading each shard's key column (its texts for older shards)
    with `read(shard, columns)`."""
    parts = [table_keys(read(info, [KEY_COLUMN] if info.keys else ["text"])) for info in shards]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def version_file_name(number: int) -> str:
    """The small file of version `number`: versions/v00002.safetensors."""
    return f"{VERSIONS_DIR}/v{number:05d}.safetensors"


def write_version_file(out: Path, number: int, deleted: np.ndarray, dup_ids: np.ndarray,
                       dup_counts: np.ndarray) -> str | None:
    """Write version `number`'s deleted ids and duplicate counts (temporary name, then rename); its name, or None
    when it has neither (nothing to write)."""
    from safetensors.numpy import save_file

    if not len(deleted) and not len(dup_ids):
        return None
    name = version_file_name(number)
    (out / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
    arrays = {"deleted": deleted, "dup_ids": dup_ids, "dup_counts": dup_counts}
    with atomic_path(out / name) as tmp:
        save_file({k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}, str(tmp))
    return name


@dataclass
class VersionView:
    """One version as a reader sees it: its shards, its deleted ids (sorted) and its duplicate counts."""

    info: VersionInfo
    shards: list[ShardInfo]
    deleted: np.ndarray  # int64, sorted
    dup_ids: np.ndarray  # int64, sorted
    dup_counts: np.ndarray  # int64, >= 2 each

    @property
    def id_rows(self) -> int:
        """Ids of this version run over [0, id_rows): its shards' rows, deleted ones included."""
        return self.shards[-1].id_end + 1 if self.shards else 0

    def live(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are live rows of this version."""
        if not len(self.deleted):
            return np.ones(len(ids), dtype=bool)
        at = np.searchsorted(self.deleted, ids)
        return ~((at < len(self.deleted)) & (self.deleted[np.minimum(at, len(self.deleted) - 1)] == ids))

    def counts(self, ids: np.ndarray) -> np.ndarray:
        """How often each row's text occurred in this version's corpus (1 for most)."""
        out = np.ones(len(ids), dtype=np.int64)
        if len(self.dup_ids):
            at = np.searchsorted(self.dup_ids, ids)
            hit = (at < len(self.dup_ids)) & (self.dup_ids[np.minimum(at, len(self.dup_ids) - 1)] == ids)
            out[hit] = self.dup_counts[at[hit]]
        return out

    def deleted_below(self, end: int) -> int:
        """Deleted ids below `end`."""
        return int(np.searchsorted(self.deleted, end))


def empty_ids() -> np.ndarray:
    """An empty int64 id array."""
    return np.zeros(0, dtype=np.int64)


def version_view(manifest: CacheManifest, number: int | None, folder: Path, where: str) -> VersionView:
    """Version `number` (None: the newest finished one) of `manifest`, its file read from `folder` (the cache's
    small files); a version that does not exist, or a torn file, is one line naming `where`."""
    try:
        info = manifest.find_version(number)
    except CacheError as exc:
        raise CacheError(f"{where}: {exc}") from None
    if info.shards > len(manifest.shards):
        raise CacheIntegrityError(f"{where}: version {info.version} needs {info.shards} shards, the manifest lists "
                                  f"{len(manifest.shards)}; run `tc verify`")
    shards = manifest.shards[:info.shards]
    deleted, dup_ids, dup_counts = empty_ids(), empty_ids(), empty_ids()
    if info.file is not None:
        deleted, dup_ids, dup_counts = read_version_file(folder / info.file, sum(s.rows for s in shards))
    view = VersionView(info, shards, deleted, dup_ids, dup_counts)
    live = sum(s.rows for s in shards) - len(deleted)
    if live != info.rows:
        raise CacheIntegrityError(f"{where}: version {info.version} lists {info.rows:,} rows, its shards and file "
                                  f"leave {live:,}; run `tc verify`")
    return view


def read_version_file(path: Path, id_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(deleted, dup_ids, dup_counts) from a version file, each checked (sorted, unique, ids in range) in one line."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
        deleted, dup_ids, dup_counts = (np.asarray(arrays[k], dtype=np.int64) for k in VERSION_ARRAYS)
    except Exception as exc:  # missing, truncated, foreign: one line naming it
        raise CacheIntegrityError(f"{path}: unreadable version file ({first_line(exc)}); run `tc verify`") from None
    for name, ids in (("deleted", deleted), ("dup_ids", dup_ids)):
        if ids.ndim != 1 or (len(ids) and (ids[0] < 0 or ids[-1] >= id_rows or np.any(np.diff(ids) <= 0))):
            raise CacheIntegrityError(f"{path}: {name} are not sorted unique ids below {id_rows:,}; run `tc verify`")
    if dup_counts.shape != dup_ids.shape or (len(dup_counts) and dup_counts.min() < 2):
        raise CacheIntegrityError(f"{path}: dup_counts do not match dup_ids; run `tc verify`")
    return deleted, dup_ids, dup_counts


class VersionReads:
    """What TeacherCache reads of the version it opened (`self.view`; None: an unfinished cache read as it is)."""

    view: VersionView | None
    manifest: CacheManifest

    @property
    def shards(self) -> list:
        """The ShardInfo of each shard of the version read, in id order."""
        return self.view.shards if self.view is not None else self.manifest.shards

    @property
    def version(self) -> VersionInfo | None:
        """The version read (None for an unfinished cache opened with allow_partial)."""
        return self.view.info if self.view is not None else None

    @property
    def id_rows(self) -> int:
        """Ids of the version read run over [0, id_rows) (deleted rows included)."""
        return self.view.id_rows if self.view is not None else sum(s.rows for s in self.manifest.shards)

    @property
    def deleted_ids(self) -> np.ndarray:
        """Sorted ids of the rows the version read no longer holds (texts that left the corpus)."""
        return self.view.deleted if self.view is not None else np.zeros(0, dtype=np.int64)

    def live(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are rows of the version read."""
        return self.view.live(ids) if self.view is not None else np.ones(len(ids), dtype=bool)

    def row_counts(self, ids: np.ndarray) -> np.ndarray:
        """How often each row's text occurred in the corpus of the version read (1 for most rows)."""
        return self.view.counts(ids) if self.view is not None else np.ones(len(ids), dtype=np.int64)
