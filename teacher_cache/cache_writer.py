"""The one writer of a cache (`tc encode` and `tc cache-logits`): shards committed one at a time, the manifest saved
after each and last, resume, --force and the lock, into a local folder or an object store.

Every file is first written into a local folder, `out`: the cache itself when --out is local, or a staging folder
under the user cache dir when --out is a URL (s3://bucket/prefix, ...). A remote cache is then *published* object
by object: each shard is uploaded (atomic per object) and its local copy dropped, the small files (tokenizer/,
token embeddings, token outputs) are uploaded, and the manifest goes last, after every object it lists. So a
reader of the store sees complete objects only, and a killed run resumes after the last shard the manifest lists.

The lock is local: one writer per folder on this machine (the staging folder of a URL). pyarrow sends no S3
conditional write (If-None-Match), so two machines writing one prefix are not stopped: the README says so.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

import pyarrow as pa

from teacher_cache.base.errors import CacheMismatchError, UserError
from teacher_cache.base.lock import FolderLock
from teacher_cache.base.progress import warn
from teacher_cache.base.safe_paths import remove_file
from teacher_cache.cache_files import (
    STRAY_FILES,
    TOKENIZER_DIR,
    cache_out,
    carry_over,
    other_files,
    previous_cache,
    record_files,
    resume,
    wipe_cache,
)
from teacher_cache.manifest import MANIFEST_NAME, CacheManifest, ShardInfo
from teacher_cache.remote_out import staging_dir
from teacher_cache.remote_reader import load_remote_manifest
from teacher_cache.shards import ShardRows, ShardWriter, read_shard, shard_prefix
from teacher_cache.storage import Store


class CacheWriter:
    """Writes one cache at `location` (a local folder or a store URL): begin, commit each shard, finish."""

    def __init__(self, location: str | Path, command: str, fmt: str = "arrow", dtype: str = "float32"):
        """Prepare to write the cache at `location` for `command` (named in the lock and in messages)."""
        self.store = Store.open(location)
        self.remote = not self.store.is_local
        if self.remote and fmt != "arrow":
            raise UserError(f"--format {fmt} with --out {self.store.url}: HDF5 shards need a local folder "
                            "(write them locally, or use --format arrow for an object store)")
        self.out = staging_dir("staging", self.store.url) if self.remote else Path(location)
        self.where = self.store.url if self.remote else str(location)
        self.command, self.shards = command, ShardWriter(self.out, fmt, dtype)
        self.lock: FolderLock | None = None
        self.published: set[str] = set()  # small files already in the store, with the bytes recorded

    def acquire(self) -> CacheWriter:
        """Take the folder lock (the staging folder for a URL): one writer at a time on this machine."""
        self.lock = FolderLock(self.out, self.command).acquire()
        return self

    def release(self) -> None:
        """Release the lock; the files stay as they are."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def previous(self, force: bool) -> tuple[CacheManifest | None, CacheManifest | bool]:
        """What --out holds: the manifest to resume (None with --force or when none), and what a --force run
        replaces at its first shard (that manifest, True when unreadable, False when there is no cache)."""
        if not self.remote:
            return previous_cache(self.out, force)
        names = [n for n in self.store.list() if not n.startswith(".")]
        has_manifest = MANIFEST_NAME in names
        if not has_manifest and names and not force:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise CacheMismatchError(f"--out {self.where}: not empty and no cache (holds {shown}); choose an empty "
                                     "prefix or pass --force (which removes only cache files)")
        try:
            existing = load_remote_manifest(self.store) if has_manifest else None
        except UserError:
            if not force:
                raise
            existing = None  # replaced all the same, but none of its names is used
        # the staging folder mirrors the store: what it held from an earlier run is re-checked object by object
        self._clear_staging()
        if force:
            return None, ((existing or True) if names else False)
        return existing, False

    def _clear_staging(self) -> None:
        cache_out(self.out).clear_own()

    def resume(self, manifest: CacheManifest, existing: CacheManifest, more_differences: list[str] = (),
               ignore: tuple[str, ...] = ()) -> bool:
        """Continue `existing` as `manifest` (refused on other settings, but those in `ignore`); True when it is
        complete already."""
        if not self.remote:
            return resume(self.out, manifest, existing, more_differences, ignore)
        differences = manifest.differences(existing, ignore) + list(more_differences)
        if differences:
            raise CacheMismatchError(f"--out {self.where}: holds a cache made with other settings "
                                     f"({'; '.join(differences)}); use --force to start afresh")
        for note in self._recheck_remote(existing):
            warn(note)
        if existing.complete:
            return True
        carry_over(manifest, existing)
        manifest.extra["other_files"] = existing.extra.get("other_files", [])
        self._remove_remote_strays(manifest)
        return False

    def _recheck_remote(self, manifest: CacheManifest) -> list[str]:
        """Before a resume: keep the listed shards whose objects are there whole (sizes; the upload is atomic per
        object and the manifest was saved after it), drop the first missing or short one and every later one; the
        small files are fetched back into staging when their checksums match, else written again."""
        notes = []
        sizes = self.store.sizes("shard-*")  # one listing, not a request per shard
        for index, info in enumerate(manifest.shards):
            size = sizes.get(info.file)
            if size is None or (info.bytes and size != info.bytes):
                found = "missing" if size is None else f"{size:,} bytes, the manifest says {info.bytes:,}"
                notes.append(f"{self.store.where(info.file)}: {found}; encoding again from shard {index} "
                             f"({len(manifest.shards) - index} shard(s) dropped)")
                del manifest.shards[index:]
                manifest.complete = False
                break
        gone = manifest.drop_versions_beyond_shards()
        if gone:
            notes.append(f"version(s) {', '.join(map(str, gone))} lost a shard: the rerun makes the newest again")
        for rel, record in list(manifest.files.items()):
            if not self._fetch_small(rel, record):
                notes.append(f"{self.store.where(rel)}: missing or changed; writing it again")
                for name in ([n for n in manifest.files if n.startswith(TOKENIZER_DIR + "/")]
                             if rel.startswith(TOKENIZER_DIR + "/") else [rel]):
                    manifest.files.pop(name, None)
                    remove_file(self.out / name)
                manifest.complete = False
        return notes

    def _fetch_small(self, rel: str, record: dict) -> bool:
        """Copy one recorded small file from the store into staging; False when it is missing or differs."""
        from teacher_cache.base.atomic import atomic_path

        if not self.store.exists(rel):
            return False
        data = self.store.read_bytes(rel)
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            return False
        target = self.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        self.published.add(rel)
        return True

    def _remove_remote_strays(self, manifest: CacheManifest) -> None:
        keep = {s.file for s in manifest.shards}
        for name in self.store.list("shard-*"):
            if name not in keep and any(fnmatch.fnmatchcase(name, p) for p in STRAY_FILES):
                self.store.remove(name)

    def wipe(self, old: CacheManifest | bool) -> None:
        """--force: remove the replaced cache's files (only cache files: own names and what its manifest lists)."""
        if not self.remote:
            wipe_cache(self.out, old)
            return
        listed = set(old.files) | {s.file for s in old.shards} if isinstance(old, CacheManifest) else set()
        own = cache_out(self.out)  # the same own names as a local cache's (base/out_folder.py)
        for name in self.store.list():
            if (own.is_own(name) or name in listed) and name != MANIFEST_NAME:
                self.store.remove(name)
        self.store.remove(MANIFEST_NAME)  # last: until now a reader still saw the old cache's manifest
        self.published.clear()

    def user_files(self) -> list[str]:
        """Names in --out that are not the cache's (kept, never removed)."""
        if not self.remote:
            return other_files(self.out)
        own = cache_out(self.out)
        return [n for n in self.store.list() if not n.startswith(".") and not own.is_own(n)]

    def save(self, manifest: CacheManifest) -> None:
        """Save the manifest (locally; for a URL also uploaded, after every object it lists)."""
        self.publish_files(manifest)
        manifest.save(self.out)
        if self.remote:
            self.store.put(MANIFEST_NAME, self.out / MANIFEST_NAME)

    def publish_files(self, manifest: CacheManifest) -> None:
        """Record the checksum of every small file written so far and upload those not in the store yet."""
        record_files(self.out, manifest)
        if not self.remote:
            return
        for rel in manifest.files:
            if rel not in self.published:
                self.store.put(rel, self.out / rel)
                self.published.add(rel)

    def commit(self, manifest: CacheManifest, rows: ShardRows) -> ShardInfo:
        """Write the next shard (temporary name, then rename; for a URL then upload), list it, save the manifest."""
        index = sum(1 for s in manifest.shards if s.file.startswith(shard_prefix(manifest.generation)))
        path, checksum = self.shards.write(index, rows, manifest.generation)
        size = path.stat().st_size
        if self.remote:
            self.store.put(path.name, path)  # one object, whole or not at all
            path.unlink()
        info = ShardInfo(file=path.name, rows=len(rows.ids), id_start=int(rows.ids[0]) if len(rows.ids) else 0,
                         id_end=int(rows.ids[-1]) if len(rows.ids) else -1, sha256=checksum,
                         n_tokens=int(rows.n_tokens.sum()), bytes=size, keys=rows.keys is not None)
        manifest.shards.append(info)
        self.save(manifest)
        return info

    def read_columns(self, info: ShardInfo, columns: list[str]) -> pa.Table:
        """Some columns of a shard already written (for a URL, only those columns' bytes are fetched)."""
        if not self.remote:
            return read_shard(self.out / info.file, columns)
        with self.store.open_input(info.file) as source:
            reader = pa.ipc.open_file(source)
            fields = [reader.schema.get_field_index(c) for c in columns]
            options = pa.ipc.IpcReadOptions(included_fields=fields)
            return pa.ipc.open_file(source, options=options).read_all()

    def finish(self, manifest: CacheManifest) -> CacheManifest:
        """Mark the cache complete: every small file recorded and published, then the manifest, last (save)."""
        manifest.complete = True
        self.save(manifest)
        return manifest
