"""`tc compact`: rewrite the newest version's live rows into fresh, full shards and forget the older versions.

The rows (deleted ones dropped, ids renumbered 0..n-1 in id order, every column kept, `key` computed from the
text for shards written before keys) go into shards of `shard_size` rows named with the next generation
(shard-g<g>-NNNNN), never a name the old manifest lists; each side teacher's aligned shards are cut at the same
rows into teachers/<name>/shard-g<g>-NNNNN. Then the version's small file (its duplicate counts, renumbered), then
manifest.json, saved once: the commit point. Only then are the old shards and version files removed.

Killed at any moment, the cache stays readable (before the save the old manifest is whole, after it the new one)
and a rerun finishes: the leftovers (this generation's shards before the swap, the old files after it) match tc's
own names only and are removed before anything else is done (`remove_leftovers`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CacheError, CacheIntegrityError, UserError, first_line, reason
from teacher_cache.base.lock import FolderLock
from teacher_cache.base.progress import Progress
from teacher_cache.base.safe_paths import remove_file
from teacher_cache.base.signals import sigterm_as_interrupt
from teacher_cache.cache_files import file_problem, file_record, remove_strays, shard_problem
from teacher_cache.manifest import VERSIONS_DIR, CacheManifest, ShardInfo, SideTeacher
from teacher_cache.shards import ShardRows, ShardWriter, read_shard, shard_name, vectors_of
from teacher_cache.side_teachers import SideShardWriter, covered, side_shard_name
from teacher_cache.storage import Store
from teacher_cache.versions import KEY_COLUMN, VersionView, table_keys, version_view

# tc's own names, the only ones a compaction removes when no manifest lists them
VERSION_FILE = re.compile(r"^(g\d+-)?v\d{5,}\.safetensors(\.tmp)?$")
SIDE_SHARD = re.compile(r"^shard-(g\d+-)?\d{5,}\.(arrow|h5)(\.tmp)?$")


@dataclass
class CompactResult:
    """What a compaction did: the version kept, rows and shards after and before, bytes freed."""

    version: int
    rows: int
    shards: int
    old_rows: int
    old_shards: int
    freed: int = 0
    leftovers: int = 0  # files an interrupted compaction left, removed first
    done: bool = True  # False: the cache was compact already

    def summary(self) -> str:
        """The final line `tc compact` prints."""
        if not self.done:
            return (f"version {self.version}: nothing to do (one version, no deleted rows: {self.rows:,} rows in "
                    f"{self.shards} shards)")
        return (f"compacted version {self.version}: {self.rows:,} rows in {self.shards} shards (was "
                f"{self.old_rows:,} rows in {self.old_shards} shards), {self.freed / 2**20:,.1f} MiB freed")


@dataclass
class Side:
    """One side teacher to rewrite: its manifest entry (shards aligned with the version's) and its new shards."""

    name: str
    entry: SideTeacher
    writer: SideShardWriter
    new: list[ShardInfo] = field(default_factory=list)


def local_folder(location: str | Path) -> Path:
    """The cache folder of `location`; a store URL is refused in one line."""
    store = Store.open(location)
    if not store.is_local:
        raise UserError(f"{location}: tc compact rewrites a local folder only; compact a local copy and upload it")
    return Path(store.root) if str(location).startswith("file:") else Path(location)


def side_teachers(out: Path, manifest: CacheManifest, view: VersionView) -> list[Side]:
    """Each side teacher, to be cut at the same rows; one that does not cover every shard of the version is refused
    in one line, before anything is written."""
    sides, total = [], len(view.shards)
    for name, entry in manifest.teachers.items():
        done = covered(entry, view.shards)
        if done < total:
            raise CacheError(f"teacher {name} covers {done} of {total} shards: run tc encode --teacher "
                             f"{entry.teacher or name} --out {out} first")
        sides.append(Side(name, entry, SideShardWriter(out, manifest.format, entry.dtype)))
    return sides


def remove_leftovers(out: Path, manifest: CacheManifest) -> int:
    """Remove the shards and version files of tc's own names that `manifest` does not list (an interrupted
    compaction's: its new generation before the swap, the old files after it); how many went."""
    before = sum(1 for _ in out.glob("shard-*"))
    remove_strays(out, manifest)
    removed = before - sum(1 for _ in out.glob("shard-*"))
    listed = {v.file for v in manifest.versions if v.file} | set(manifest.files)
    folders = [(out / VERSIONS_DIR, VERSIONS_DIR, VERSION_FILE, listed)]
    for entry in manifest.teachers.values():  # CacheManifest.load checked each folder lies inside `out`
        folders.append((out / entry.folder, entry.folder, SIDE_SHARD, {s.file for s in entry.shards}))
    for path, rel, pattern, keep in folders:
        if not path.is_dir() or path.is_symlink():
            continue
        for file in sorted(path.iterdir()):
            if pattern.match(file.name) and f"{rel}/{file.name}" not in keep and not file.is_dir():
                remove_file(file)
                removed += 1
    return removed


def checked_table(out: Path, info: ShardInfo, where: str) -> pa.Table:
    """A shard read back once its size and checksum match the manifest (a bad one is never copied on)."""
    problem = shard_problem(out, info)
    if problem:
        raise CacheIntegrityError(f"{problem}; run `tc verify` (nothing was changed)")
    try:
        return read_shard(out / info.file)
    except Exception as exc:  # a readable checksum but an unparsable file
        raise CacheIntegrityError(f"{where}: unreadable shard ({first_line(exc)}); run `tc verify`") from None


def main_columns(table: pa.Table, where: str) -> list[str]:
    """The column order of a compacted main shard: id, text, the vector columns, n_tokens, key."""
    vectors = [f.name for f in table.schema if pa.types.is_fixed_size_list(f.type)]
    unknown = set(table.column_names) - {"id", "text", "n_tokens", KEY_COLUMN, *vectors}
    if unknown or not {"id", "text", "n_tokens"} <= set(table.column_names):
        raise CacheError(f"{where}: columns {table.column_names} are not those tc compact knows how to rewrite")
    return ["id", "text", *vectors, "n_tokens", KEY_COLUMN]


def live_pieces(out: Path, view: VersionView, sides: list[Side], progress: Progress
                ) -> Iterator[tuple[pa.Table, np.ndarray, list[pa.Table]]]:
    """Per old shard of the version: its live rows (with keys), how often each row's text occurred, and each side
    teacher's same rows."""
    for index, info in enumerate(view.shards):
        table = checked_table(out, info, str(out / info.file))
        ids = table.column("id").to_numpy()
        if len(ids) != info.rows or (len(ids) and (ids[0], ids[-1]) != (info.id_start, info.id_end)):
            raise CacheIntegrityError(f"{out / info.file}: ids are not {info.id_start}..{info.id_end}; run tc verify")
        if KEY_COLUMN not in table.column_names:
            table = table.append_column(KEY_COLUMN, pa.array(table_keys(table), pa.uint64()))
        mask = view.live(ids)
        keep = pa.array(mask)
        live = table.filter(keep).select(main_columns(table, str(out / info.file)))
        parts = []
        for side in sides:
            shard = side.entry.shards[index]
            side_table = checked_table(out, shard, str(out / shard.file))
            if not np.array_equal(side_table.column("id").to_numpy(), ids):
                raise CacheIntegrityError(f"{out / shard.file}: its ids are not those of {info.file}; run tc verify")
            parts.append(side_table.filter(keep))
        progress.update(len(live))
        yield live, view.counts(ids[mask]), parts


def cut(pieces: Iterator[tuple[pa.Table, np.ndarray, list[pa.Table]]], size: int
        ) -> Iterator[tuple[pa.Table, np.ndarray, list[pa.Table]]]:
    """Regroup the pieces into runs of `size` rows (the last one shorter): (main rows, counts, side rows)."""
    held: list[tuple[pa.Table, np.ndarray, list[pa.Table]]] = []
    rows = 0
    for piece in pieces:
        held.append(piece)
        rows += len(piece[0])
        while rows >= size:
            table, counts, sides = joined(held)
            yield table.slice(0, size), counts[:size], [s.slice(0, size) for s in sides]
            rows -= size
            held = [(table.slice(size), counts[size:], [s.slice(size) for s in sides])] if rows else []
    if rows:
        yield joined(held)


def joined(held: list[tuple[pa.Table, np.ndarray, list[pa.Table]]]) -> tuple[pa.Table, np.ndarray, list[pa.Table]]:
    """The held pieces as one run."""
    sides = [pa.concat_tables(list(s)).combine_chunks() for s in zip(*[p for _, _, p in held], strict=True)]
    return (pa.concat_tables([t for t, _, _ in held]).combine_chunks(), np.concatenate([c for _, c, _ in held]),
            sides)


def renumbered(table: pa.Table, start: int) -> pa.Table:
    """`table` with ids start, start + 1, ..."""
    ids = pa.array(np.arange(start, start + len(table), dtype=np.int64))
    return table.set_column(table.column_names.index("id"), "id", ids)


def write_main_shard(writer: ShardWriter, index: int, table: pa.Table, generation: int) -> ShardInfo:
    """Write one new main shard (temporary name, then rename) from its rows; its ShardInfo."""
    vectors = {name: vectors_of(table, name) for name in table.column_names[2:-2]}
    rows = ShardRows(ids=table.column("id").to_numpy(), texts=table.column("text").to_pylist(), vectors=vectors,
                     n_tokens=table.column("n_tokens").to_numpy(), keys=table.column(KEY_COLUMN).to_numpy())
    path, checksum = writer.write(index, rows, generation)
    return ShardInfo(file=path.name, rows=len(rows.ids), id_start=int(rows.ids[0]), id_end=int(rows.ids[-1]),
                     sha256=checksum, n_tokens=int(rows.n_tokens.sum()), bytes=path.stat().st_size, keys=True)


def write_side_shard(side: Side, name: str, table: pa.Table) -> ShardInfo:
    """Write one new side-teacher shard (id, its vector columns, n_tokens) as `name`; its ShardInfo."""
    vectors = {c: vectors_of(table, c) for c in table.column_names if pa.types.is_fixed_size_list(table.schema.field(
        c).type)}
    rows = ShardRows(ids=table.column("id").to_numpy(), texts=[], vectors=vectors,
                     n_tokens=table.column("n_tokens").to_numpy())
    path, checksum = side.writer.write_named(name, rows)
    return ShardInfo(file=name, rows=len(rows.ids), id_start=int(rows.ids[0]), id_end=int(rows.ids[-1]),
                     sha256=checksum, n_tokens=int(rows.n_tokens.sum()), bytes=path.stat().st_size)


def version_file_name(number: int, generation: int) -> str:
    """The compacted version's small file: versions/g<generation>-v<number>.safetensors."""
    return f"{VERSIONS_DIR}/g{generation}-v{number:05d}.safetensors"


def write_version_file(out: Path, number: int, generation: int, dup_ids: np.ndarray,
                       dup_counts: np.ndarray) -> str | None:
    """The compacted version's small file (no deleted ids; its duplicate counts), under a name of this generation
    (the old manifest's file stays as it is until the swap); None when there are no duplicates."""
    from safetensors.numpy import save_file

    if not len(dup_ids):
        return None
    name = version_file_name(number, generation)
    (out / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
    arrays = {"deleted": np.zeros(0, dtype=np.int64), "dup_ids": dup_ids, "dup_counts": dup_counts}
    try:
        with atomic_path(out / name) as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}, str(tmp))
    except OSError as exc:
        raise CacheError(f"{out / name}: cannot write ({reason(exc)}); the cache is unchanged") from None
    return name


def old_names(manifest: CacheManifest) -> list[str]:
    """The shards (main and side) and version files a manifest lists."""
    names = [s.file for s in manifest.shards] + [v.file for v in manifest.versions if v.file]
    for entry in manifest.teachers.values():
        names += [s.file for s in entry.shards]
    return names


def size_of(out: Path, names: list[str]) -> int:
    """Bytes of the named files that exist."""
    return sum((out / n).stat().st_size for n in names if (out / n).is_file())


def forget(out: Path, written: list[str], generation: int) -> None:
    """After an error or Ctrl-C before the swap: remove what this run wrote (the old manifest lists none of it).
    Only while manifest.json on disk is still the old one: a signal landing just after the swap keeps the new
    files, and a rerun removes the old ones."""
    try:
        still_old = CacheManifest.load(out).generation == generation
    except Exception:  # unreadable now: leave everything for the rerun to sort out
        still_old = False
    if still_old:
        for rel in written:
            remove_file(out / rel)


def swap(out: Path, manifest: CacheManifest) -> None:
    """Save the compacted manifest: the one moment the cache changes for a reader."""
    manifest.save(out)


def remove_old(out: Path, old: CacheManifest, new: CacheManifest) -> None:
    """After the swap: remove the files the old manifest listed and the new one does not (tc's own names only)."""
    keep = set(old_names(new)) | set(new.files)
    for rel in old_names(old):
        if rel not in keep:
            remove_file(out / rel)


def rewrite(out: Path, manifest: CacheManifest, view: VersionView, sides: list[Side], quiet: bool) -> CompactResult:
    """Write the new shards, the version file and the manifest (once), then remove the old files."""
    generation = manifest.generation + 1
    writer = ShardWriter(out, manifest.format, manifest.dtype)
    shards: list[ShardInfo] = []
    dup_ids, dup_counts, written = [], [], []
    progress = Progress("compact", view.info.rows, quiet=quiet)
    try:
        for table, counts, parts in cut(live_pieces(out, view, sides, progress), manifest.shard_size):
            start = sum(s.rows for s in shards)
            written.append(shard_name(len(shards), manifest.format, generation))  # before it exists: see below
            info = write_main_shard(writer, len(shards), renumbered(table, start), generation)
            for side, part in zip(sides, parts, strict=True):
                written.append(side_shard_name(side.entry, info.file))  # the main shard's base name, in its folder
                side.new.append(write_side_shard(side, written[-1], renumbered(part, start)))
            shards.append(info)
            many = np.flatnonzero(counts > 1)
            dup_ids.append(many + start)
            dup_counts.append(counts[many])
        progress.close()
        if not shards:
            raise CacheError(f"{out}: version {view.info.version} holds no rows; nothing to compact")
        written.append(version_file_name(view.info.version, generation))
        file = write_version_file(out, view.info.version, generation, np.concatenate(dup_ids),
                                  np.concatenate(dup_counts))
        new = compacted_manifest(out, manifest, view, shards, sides, generation, file)
        swap(out, new)
    except BaseException:
        forget(out, written, manifest.generation)
        raise
    before = size_of(out, old_names(manifest))
    remove_old(out, manifest, new)
    freed = before - size_of(out, old_names(new))
    return CompactResult(view.info.version, new.rows, len(shards), sum(s.rows for s in manifest.shards),
                         len(manifest.shards), freed=max(freed, 0))


def compacted_manifest(out: Path, old: CacheManifest, view: VersionView, shards: list[ShardInfo], sides: list[Side],
                       generation: int, file: str | None) -> CacheManifest:
    """The manifest after compaction: the new shards, one version (the newest, same number), the side teachers'
    new shards, the old version files' records replaced by the new one's."""
    new = copy.deepcopy(old)
    new.shards, new.generation, new.complete = shards, generation, True
    rows = sum(s.rows for s in shards)
    new.versions = [dataclasses.replace(view.info, shards=len(shards), rows=rows, file=file)]
    old_files = {v.file for v in old.versions if v.file}
    new.files = {k: v for k, v in old.files.items() if k not in old_files}
    if file:
        new.files[file] = file_record(out / file)
    for side in sides:
        new.teachers[side.name] = dataclasses.replace(side.entry, shards=side.new, complete=True)
    return new


def compact_cache(location: str | Path, quiet: bool = False) -> CompactResult:
    """Compact the cache at `location` (a local folder): the newest version's live rows into fresh shards."""
    out = local_folder(location)
    CacheManifest.load(out)  # a missing folder or no cache: one line, before the lock makes anything
    with sigterm_as_interrupt(), FolderLock(out, "tc compact", flag="tc compact"):
        manifest = CacheManifest.load(out)
        if not manifest.complete:
            raise CacheError(f"{out}: the cache is incomplete (an encode is under way or was interrupted); rerun tc "
                             "encode first, then tc compact")
        view = version_view(manifest, None, out, str(out))
        record = manifest.files.get(view.info.file or "")
        problem = record and file_problem(out, view.info.file, record)  # the version file read above, as recorded
        if problem:
            raise CacheIntegrityError(f"{problem}; run `tc verify` (nothing was changed)")
        if len(manifest.all_versions()) == 1 and not len(view.deleted):
            leftovers = remove_leftovers(out, manifest)
            rows = view.info.rows
            return CompactResult(view.info.version, rows, len(view.shards), rows, len(view.shards),
                                 leftovers=leftovers, done=False)
        sides = side_teachers(out, manifest, view)
        leftovers = remove_leftovers(out, manifest)
        result = rewrite(out, manifest, view, sides, quiet)
        result.leftovers = leftovers
        return result
