"""Reading a cache that lives in a store (s3://bucket/prefix, ...): its manifest, its local mirror and small files,
its shards through a bounded shard cache (RemoteShardReads), and the checks that read objects rather than files
(teacher_cache/reader.py's TeacherCache uses these)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, CacheIntegrityError, first_line
from teacher_cache.base.user_dirs import user_cache_dir
from teacher_cache.cache_files import file_problem
from teacher_cache.manifest import MANIFEST_NAME, CacheManifest
from teacher_cache.shard_cache import ShardCache
from teacher_cache.shards import read_shard
from teacher_cache.storage import Store

if TYPE_CHECKING:
    from teacher_cache.reader import TeacherCache

# Shards a remote reader keeps from eviction by default: the one being read (readers copy rows out of a shard before
# the next); a reader with N shards open at once sets TeacherCache.pinned_shards to N, so --cache-limit holds them.
PINNED_SHARDS = 1


class RemoteShardReads:
    """TeacherCache's way to a shard's file: in a local cache's folder, or for a remote cache through its bounded
    ShardCache, fetched ahead in the order `schedule` announces, the last `pinned_shards` read kept from eviction.
    Uses the cache's store, remote, directory, manifest, cache_limit, download_rate, pinned_shards, _shard_cache
    and _pinned."""

    @property
    def shard_cache(self) -> ShardCache:
        """The local shard cache of a remote cache (made on first use, in this process)."""
        if self._shard_cache is None:
            self._shard_cache = ShardCache(self.store, self.manifest.shards, self.directory / "shards",
                                           self.cache_limit, rate_limit=self.download_rate)
        return self._shard_cache

    def schedule(self, order: list[int]) -> None:
        """Tell a remote cache the order its shards will be read in, so they are fetched ahead (local: nothing)."""
        if self.remote:
            self.shard_cache.schedule(list(order))

    def shard_file(self, index: int) -> Path:
        """A local file holding shard `index` (for a remote cache: fetched and checked, kept from eviction while
        it is among the last `pinned_shards` read)."""
        if not self.remote:
            return self.directory / self.manifest.shards[index].file
        if index in self._pinned:  # read again: its pin is renewed by the get below, not doubled
            self._pinned.remove(index)
            self.shard_cache.release(index)
        else:  # room first: the limit need only hold `pinned_shards` shards and the ones fetched ahead
            while len(self._pinned) >= self.pinned_shards:
                self.shard_cache.release(self._pinned.pop(0))
        path = self.shard_cache.get(index)
        self._pinned.append(index)
        return path

    def detach(self) -> None:
        """Forget this process's download state (a forked DataLoader worker makes its own on first use)."""
        self._shard_cache, self._pinned = None, []

    def close(self) -> None:
        """Stop a remote cache's downloads (its local copies stay for the next run)."""
        if self._shard_cache is not None:
            self._shard_cache.close()
            self._shard_cache = None
            self._pinned = []


def remote_mirror(url: str, cache_dir: str | Path | None = None) -> Path:
    """The local folder of one remote cache: its small files and its shard cache (under --cache-dir, default the
    user cache dir), named by a hash of the URL so caches never share one."""
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "remote"
    return root / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def load_remote_manifest(store: Store) -> CacheManifest:
    """The manifest of the cache at a store URL, with the same checks as a local one (types, plain names)."""
    if not store.exists(MANIFEST_NAME):
        if store.bucket_missing():
            raise store.missing(MANIFEST_NAME)
        raise CacheError(f"{store.url}: not a teacher cache (no {MANIFEST_NAME}); make one with `tc encode --out "
                         f"{store.url}`")
    where = store.where(MANIFEST_NAME)
    try:
        data = json.loads(store.read_bytes(MANIFEST_NAME))
    except (ValueError, RecursionError) as exc:
        raise CacheError(f"{where}: unreadable manifest ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise CacheError(f"{where}: malformed manifest (not a JSON object)")
    return CacheManifest.from_dict(data, where)  # every name it holds is checked to be a plain relative name


def fetch_small_files(store: Store, manifest: CacheManifest, folder: Path) -> None:
    """Copy every file the manifest records (tokenizer/, token embeddings, ...) from the store into `folder`,
    each checked against its sha256; copies already there and intact are kept."""
    for rel, record in manifest.files.items():
        target = folder / rel
        if target.is_file() and file_problem(folder, rel, record) is None:
            continue
        data = store.read_bytes(rel)
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise CacheIntegrityError(f"{store.where(rel)}: checksum mismatch (the object changed after it was "
                                      f"written); run `tc verify {store.url}`")
        target.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: DDP ranks on one machine share the mirror and may fetch at once
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            tmp.unlink(missing_ok=True)
            with open(tmp, "xb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def check_object_sizes(store: Store, manifest: CacheManifest) -> None:
    """Raise naming the first listed shard whose object is missing or of another size (one listing, no reads)."""
    sizes = store.sizes("shard-*")
    for info in manifest.shards:
        where = store.where(info.file)
        if info.file not in sizes:
            raise CacheIntegrityError(f"{where}: missing; run `tc verify {store.url}`")
        if info.bytes and sizes[info.file] != info.bytes:
            raise CacheIntegrityError(f"{where}: {sizes[info.file]:,} bytes, the manifest says {info.bytes:,} "
                                      f"(truncated or changed); run `tc verify {store.url}`")


def verify_objects(cache: TeacherCache) -> list[str]:
    """Every problem of a remote cache: each object read once, shards into a scratch file one at a time."""
    problems: list[str] = []
    expected_start = 0
    scratch = cache.directory / "verify"
    scratch.mkdir(parents=True, exist_ok=True)
    for index, info in enumerate(cache.manifest.shards):
        where = cache.store.where(info.file)
        if info.id_start != expected_start:
            problems.append(f"{where}: ids start at {info.id_start}, expected {expected_start}")
        expected_start = info.id_end + 1
        if not cache.store.exists(info.file):
            problems.append(f"{where}: missing")
            continue
        size = cache.store.size(info.file)
        if info.bytes and size != info.bytes:
            problems.append(f"{where}: {size:,} bytes, the manifest says {info.bytes:,} (truncated or changed)")
            continue
        local = scratch / info.file
        try:
            with atomic_path(local, fsync=False) as tmp, open(tmp, "wb") as out, \
                    cache.store.open_stream(info.file) as source:
                digest = hashlib.sha256()
                for block in iter(lambda: source.read(8 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != info.sha256:
                problems.append(f"{where}: checksum mismatch (the object changed after it was written)")
                continue
            try:
                ids = read_shard(local, ["id"]).column("id").to_numpy()
                width = cache.width_problem(index)
            except Exception as exc:
                problems.append(f"{where}: unreadable ({first_line(exc)})")
                continue
        finally:
            local.unlink(missing_ok=True)
        problems += [width] if width else []
        problems += info.id_problems(where, ids)
    for rel, record in cache.manifest.files.items():
        where = cache.store.where(rel)
        if not cache.store.exists(rel):
            problems.append(f"{where}: missing")
        elif hashlib.sha256(cache.store.read_bytes(rel)).hexdigest() != record.get("sha256"):
            problems.append(f"{where}: checksum mismatch (the object changed after it was written)")
    return problems
