"""Reading a teacher cache: manifest, batches of (ids, texts, vectors) in a chosen order, polars, verification.

A cache is a local folder or a store URL (s3://bucket/prefix, ...). A remote cache is read through a local mirror
(`remote_mirror`): its small files (tokenizer/, token embeddings, token outputs) are fetched once and checked against
the manifest's sha256; its shards go through a bounded ShardCache (teacher_cache/shard_cache.py) that fetches them
ahead of the reader, checks them on arrival and evicts the least recently used, so a reader never holds the whole
cache on disk. The writer's lock is local (see cache_writer.py): it is checked for local caches only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from teacher_cache.base.errors import CacheError, CacheIntegrityError, first_line
from teacher_cache.base.lock import holder
from teacher_cache.base.progress import warn
from teacher_cache.cache_checks import CacheChecks
from teacher_cache.manifest import TOKEN_OUTPUTS_FILE, TOKEN_OUTPUTS_KEY, CacheManifest
from teacher_cache.remote_reader import (
    PINNED_SHARDS,
    RemoteShardReads,
    fetch_small_files,
    load_remote_manifest,
    remote_mirror,
)
from teacher_cache.shard_cache import ShardCache, parse_size
from teacher_cache.shards import column_widths, read_shard, vectors_of
from teacher_cache.side_teachers import SideTeacherReads
from teacher_cache.storage import Store
from teacher_cache.versions import VersionReads, VersionView, version_view

DEFAULT_CACHE_LIMIT = "20GB"  # the local shard cache of a remote cache (--cache-limit)


@dataclass
class CacheBatch:
    """A slice of the cache: ids, texts and the chosen vector column (rows x dim)."""

    ids: np.ndarray
    texts: list[str]
    vectors: np.ndarray
    n_tokens: np.ndarray | None = None


class TeacherCache(VersionReads, SideTeacherReads, RemoteShardReads, CacheChecks):
    """An opened cache folder; reads shards lazily (Arrow shards are memory-mapped, never loaded whole). The rows of
    the version read come from VersionReads (versions.py), the targets of several teachers from SideTeacherReads
    (side_teachers.py), a remote cache's shard files from RemoteShardReads (remote_reader.py), the checks of every
    file from CacheChecks (cache_checks.py)."""

    def __init__(self, directory: str | Path, allow_partial: bool = False, allow_writer: bool = False,
                 cache_dir: str | Path | None = None, cache_limit: str | int | None = None,
                 download_rate: int | None = None, version: int | None = None):
        """Open `directory` (a folder or a store URL) at `version` (None: the newest); refused while a writer holds
        it, unfinished, or when shard 0's widths are not its dim. `cache_dir` and `cache_limit` (bytes, or '20GB')
        size a remote cache's local shard cache; `download_rate` (bytes/s) caps its downloads."""
        self.store = Store.open(directory)
        self.remote = not self.store.is_local
        self.location = self.store.url if self.remote else str(directory)
        self._shard_cache: ShardCache | None = None
        self._pinned: list[int] = []
        self.pinned_shards = PINNED_SHARDS  # shards read at once (a reader interleaving N shards holds N)
        self._synced = False
        self.download_rate = download_rate
        if self.remote:
            self.directory = remote_mirror(self.store.url, cache_dir)
            self.manifest = load_remote_manifest(self.store)
            limit = DEFAULT_CACHE_LIMIT if cache_limit is None else cache_limit
            self.cache_limit = limit if isinstance(limit, int) else parse_size(str(limit), "--cache-limit")
            writer = None
        else:
            self.directory = Path(directory)
            self.manifest = CacheManifest.load(self.directory)
            writer = None if allow_writer else holder(self.directory)
        if writer and not self.manifest.complete:
            raise CacheError(f"{self.location}: the cache is still being written (by {writer}); wait for it "
                             "to finish")
        if writer:  # a resume, grow or --force rewrite: a reader now would mix old and new shards
            raise CacheError(f"{self.location}: the cache is being written again (by {writer}); wait for it to "
                             "finish: reading it meanwhile would mix old and new shards")
        finished = self.manifest.complete or (self.manifest.versions and not writer)
        if not finished and not allow_partial:
            raise CacheError(f"{self.location}: the cache is incomplete (being written, or an encode was "
                             "interrupted); rerun the same `tc encode` command to finish it")
        if not self.manifest.shards:
            raise CacheError(f"{self.location}: the cache holds no shard")
        # the version read: its shards and deleted rows (None: an unfinished cache read as it is, allow_partial)
        self.view: VersionView | None = None
        self.view_problem: str | None = None
        if finished or version is not None:
            if not self.manifest.complete and version is None:
                warn(f"{self.location}: an update of the cache was interrupted; reading version "
                     f"{self.manifest.versions[-1].version}, the newest finished one (rerun `tc encode` to finish)")
            folder = self.local_files() if any(v.file for v in self.manifest.versions) else self.directory
            try:
                self.view = version_view(self.manifest, version, folder, self.location)
            except CacheIntegrityError as exc:
                if not allow_partial or version is not None:
                    raise
                self.view_problem = str(exc)  # `verify` (which opens with allow_partial) reports it with the rest
        try:  # one shard's schema, cheap at any cache size; `verify` checks every shard
            problem = self.width_problem(0)
        except Exception:  # a missing or unreadable shard is named when it is read, and by `verify`
            problem = None
        if problem:
            raise CacheIntegrityError(problem)

    def __len__(self) -> int:
        """Number of (live) rows in the version read."""
        return self.view.info.rows if self.view is not None else sum(s.rows for s in self.manifest.shards)

    def __repr__(self) -> str:
        m = self.manifest
        return f"TeacherCache({self.location!r}, rows={len(self)}, dim={m.dim}, pooling={m.pooling})"

    @property
    def dim(self) -> int:
        """Width of the cached vectors."""
        return self.manifest.dim

    @property
    def shard_paths(self) -> list[Path]:
        """Paths of the shard files, in id order (local caches only: a remote one's come and go)."""
        if self.remote:
            raise CacheError(f"{self.location}: a remote cache's shards are read one at a time, not listed as files")
        return [self.directory / s.file for s in self.manifest.shards]

    def shard_where(self, index: int) -> str:
        """Shard `index` as a path or URL, for messages."""
        file = self.manifest.shards[index].file
        return self.store.where(file) if self.remote else str(self.directory / file)

    def local_files(self) -> Path:
        """The folder of the cache's small files; for a remote cache they are fetched into its mirror first
        (once, each checked against the manifest's sha256)."""
        if self.remote and not self._synced:
            fetch_small_files(self.store, self.manifest, self.directory / "files")
            self._synced = True
        return self.directory / "files" if self.remote else self.directory

    @property
    def tokenizer_path(self) -> Path:
        """Folder holding the teacher's tokenizer files."""
        return self.local_files() / (self.manifest.tokenizer_dir or "tokenizer")

    def token_embeddings(self) -> np.ndarray:
        """The teacher's input token-embedding matrix (vocab x dim, float32)."""
        from safetensors.numpy import load_file

        path = self.local_files() / (self.manifest.token_embeddings_file or "token_embeddings.safetensors")
        if not path.exists():
            raise CacheError(f"{path}: this cache carries no token-embedding matrix")
        try:
            return load_file(str(path))["token_embeddings"].astype(np.float32)
        except Exception as exc:  # a truncated or foreign file: one line naming it
            raise CacheIntegrityError(f"{path}: unreadable ({first_line(exc)}); run `tc verify`") from None

    def token_outputs(self) -> np.ndarray | None:
        """The teacher's output vector for each vocabulary token (vocab x dim, float32), or None when not cached."""
        from safetensors.numpy import load_file

        path = self.local_files() / TOKEN_OUTPUTS_FILE
        return load_file(str(path))[TOKEN_OUTPUTS_KEY].astype(np.float32) if path.exists() else None

    def vector_column(self, column: str | None) -> str:
        """Resolve a pooling name ('mean', 'cls') or column name to the stored column; None means the first."""
        columns = self.manifest.embedding_columns
        if column in self.manifest.columns and column not in columns:  # e.g. `logits` of a logits cache
            return column
        if not columns:
            raise CacheError(f"{self.location}: holds {self.manifest.kind} ({', '.join(self.manifest.columns)}), "
                             "not sentence vectors")
        if column is None:
            return columns[0]
        if column in columns:
            return column
        for name, pooling in self.manifest.columns.items():
            if pooling == column:
                return name
        raise CacheError(f"{self.location}: no vector column {column!r}; it holds "
                         f"{', '.join(f'{c} ({self.manifest.columns.get(c, c)})' for c in columns)}")

    def width_problem(self, index: int) -> str | None:
        """How shard `index`'s vector columns disagree with the manifest's dim (read from its schema), or None."""
        path, dim = self.shard_where(index), self.manifest.dim
        if self.remote:  # the footer only, in a ranged read: no shard is fetched to open a cache
            with self.store.open_input(self.manifest.shards[index].file) as source:
                schema = pa.ipc.open_file(source).schema
            widths = {f.name: f.type.list_size for f in schema if pa.types.is_fixed_size_list(f.type)}
        else:
            widths = column_widths(Path(path))
        for column in dict.fromkeys([*self.manifest.columns, *self.manifest.embedding_columns]):
            if column not in widths:
                return f"{path}: no vector column {column!r}, which the manifest lists"
            if widths[column] != dim:
                return f"{path}: column {column!r} holds vectors of width {widths[column]}, the manifest says dim {dim}"
        return None

    def read_shard(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """One shard as an Arrow table (memory-mapped for Arrow shards)."""
        path = self.shard_file(index)
        if not path.is_file():
            raise CacheError(f"{path}: shard missing")
        try:
            return read_shard(path, columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CacheIntegrityError(f"{self.shard_where(index)}: unreadable shard ({exc}); run `tc verify`") from None

    def iter_batches(self, batch_size: int = 1024, column: str | None = None, shuffle: bool = False,
                     seed: int = 0, shards: list[int] | None = None, with_texts: bool = True,
                     ) -> Iterator[CacheBatch]:
        """Batches over the chosen shards; shuffled means shard order and rows within a shard permuted by seed."""
        col = self.vector_column(column)
        order = list(range(len(self.shards))) if shards is None else list(shards)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(order)
        self.schedule(order)
        wanted = ["id", col, "n_tokens"] + (["text"] if with_texts else [])
        for index in order:
            table = self.read_shard(index, wanted)
            ids = table.column("id").to_numpy()
            vectors = vectors_of(table, col)
            n_tokens = table.column("n_tokens").to_numpy()
            texts = table.column("text") if with_texts else None
            rows = rng.permutation(len(ids)) if shuffle else np.arange(len(ids))
            rows = rows[self.live(ids[rows])]
            for start in range(0, len(rows), batch_size):
                take = rows[start:start + batch_size]
                batch_texts = texts.take(pa.array(take)).to_pylist() if with_texts else []
                yield CacheBatch(ids=ids[take], texts=batch_texts, vectors=np.asarray(vectors[take]),
                                 n_tokens=n_tokens[take])

    def vectors(self, column: str | None = None, ids: np.ndarray | None = None) -> np.ndarray:
        """All vectors of a column (or only those of `ids`), as float32; for probes on a bounded cache."""
        col = self.vector_column(column)
        if ids is None:
            self.schedule(range(len(self.shards)))
            return np.concatenate([np.asarray(vectors_of(self.read_shard(i, [col]), col), dtype=np.float32)[
                self.live(np.arange(info.id_start, info.id_end + 1))] for i, info in enumerate(self.shards)])
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        self.schedule([i for i, info in enumerate(self.shards)
                       if np.any((ids >= info.id_start) & (ids <= info.id_end))])
        for i, info in enumerate(self.shards):
            # ids are row positions, so each shard holds a slice; only the shards touched are read
            lo, hi = np.searchsorted(sorted_ids, [info.id_start, info.id_end + 1])
            if hi > lo:
                out[order[lo:hi]] = vectors_of(self.read_shard(i, [col]), col)[sorted_ids[lo:hi] - info.id_start]
        return out

    def texts(self, ids: np.ndarray | None = None) -> list[str]:
        """Cached texts, all or those of `ids` (ids are row positions: contiguous from 0); only the shards that
        hold them are read."""
        if ids is None:
            self.schedule(range(len(self.shards)))
            texts = []
            for i, info in enumerate(self.shards):
                column = self.read_shard(i, ["text"]).column("text")
                live = self.live(np.arange(info.id_start, info.id_end + 1))
                texts += column.to_pylist() if live.all() else column.filter(pa.array(live)).to_pylist()
            return texts
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        spans = [(i, *np.searchsorted(sorted_ids, [info.id_start, info.id_end + 1]))
                 for i, info in enumerate(self.shards)]
        spans = [(i, lo, hi) for i, lo, hi in spans if hi > lo]
        self.schedule([i for i, _, _ in spans])
        out: list[str | None] = [None] * len(ids)
        for i, lo, hi in spans:
            column = self.read_shard(i, ["text"]).column("text")
            picked = column.take(pa.array(sorted_ids[lo:hi] - self.shards[i].id_start)).to_pylist()
            for position, text in zip(order[lo:hi], picked, strict=True):
                out[position] = text
        if any(t is None for t in out):
            raise CacheError(f"{self.location}: ids beyond the cache's {self.id_rows:,} rows")
        return out

    def lazy(self):
        """A polars LazyFrame over every shard (Arrow caches only)."""
        import polars as pl

        if self.remote:
            raise CacheError(f"{self.location}: polars scans local caches only (copy the cache to a folder first)")
        if self.manifest.format != "arrow":
            raise CacheError(f"{self.location}: polars scans Arrow caches only (this one is {self.manifest.format})")
        return pl.scan_ipc([str(p) for p in self.shard_paths])

    def token_stats(self) -> dict[str, float]:
        """Token-length statistics over the rows of the version read: mean, median, p95, max, total."""
        self.schedule(range(len(self.shards)))
        counts = []
        for i in range(len(self.shards)):
            table = self.read_shard(i, ["id", "n_tokens"])
            n_tokens = table.column("n_tokens").to_numpy()
            counts.append(n_tokens[self.live(table.column("id").to_numpy())] if len(self.deleted_ids) else n_tokens)
        counts = np.concatenate(counts) if counts else np.zeros(1, dtype=np.int64)
        return {"mean": float(counts.mean()), "median": float(np.median(counts)),
                "p95": float(np.percentile(counts, 95)), "max": int(counts.max()), "total": int(counts.sum())}

    def size_on_disk(self) -> int:
        """Bytes used by the cache folder (for a remote cache: by its objects, as the manifest lists them)."""
        if self.remote:
            return sum(s.bytes for s in self.manifest.shards) + sum(r.get("bytes") or 0
                                                                      for r in self.manifest.files.values())
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())


def open_cache(directory: str | Path, allow_partial: bool = False, allow_writer: bool = False,
               cache_dir: str | Path | None = None, cache_limit: str | int | None = None,
               download_rate: int | None = None, version: int | None = None) -> TeacherCache:
    """Open a teacher cache written by `tc encode`: a folder or a store URL such as s3://bucket/prefix, at
    `version` (None: the newest). A local one is refused while a writer holds it, unless `allow_writer`; a remote one
    streams through a bounded local shard cache under `cache_dir`, at most `cache_limit` bytes, downloading at most
    `download_rate` bytes/s."""
    return TeacherCache(directory, allow_partial=allow_partial, allow_writer=allow_writer, cache_dir=cache_dir,
                        cache_limit=cache_limit, download_rate=download_rate, version=version)


def cache_change(directory: str | Path, fingerprint: str, version: int | None = None) -> str | None:
    """Why the cache at `directory` is no longer the one whose content_fingerprint() was `fingerprint`, or None.

    A long reader (training) calls this between epochs: a writer holding the cache now, or one that has been and
    gone, means the shards read so far may come from two caches. With `version`, `fingerprint` is that version's
    (CacheManifest.content_fingerprint(version)).
    """
    store = Store.open(directory)
    writer = holder(directory) if store.is_local else None
    if writer:
        return f"{directory}: a writer took the cache ({writer})"
    try:
        now = CacheManifest.load(directory) if store.is_local else load_remote_manifest(store)
    except CacheError as exc:
        return f"{exc} (the cache changed)"
    if version is not None:  # a reader of one version: a later version added beside it changes nothing it reads
        try:
            now_fingerprint = now.content_fingerprint(now.find_version(version))
        except CacheError as exc:
            return f"{directory}: {exc} (the cache changed)"
    else:
        now_fingerprint = now.content_fingerprint()
    if now_fingerprint != fingerprint:
        return f"{directory}: the cache was rewritten (its manifest lists other shards or files than at the start)"
    return None
