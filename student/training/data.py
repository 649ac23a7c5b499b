"""Streaming the cache into training batches: shuffled shards, bounded buffers (the validation rows: val_rows.py).

Memory is set by the open shards' texts (one, or --interleave-shards N read at once so that a batch mixes N
shards: a cache written in corpus order holds one book or one source per shard), the shuffle buffer and the
bucketing pool, never by the size of the cache.
Every random choice comes from (seed, epoch, stream), so an epoch can be replayed exactly to resume it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from student.tokenizer import WordPieceTokenizer
from teacher_cache.reader import TeacherCache, open_cache
from teacher_cache.shards import vectors_of

Row = tuple[int, str, np.ndarray, int]  # id, text, teacher vector, n_tokens
Segment = tuple[int, int, int]  # shard index, first and end (exclusive) position among its training rows


def interleave(streams: Iterator[tuple[int, Iterator[Row]]], width: int, pick: np.random.Generator) -> Iterator[Row]:
    """The rows of (size, rows) `streams`, `width` of them open at once in order: each next row is drawn (by `pick`)
    from an open stream with probability proportional to the rows it has left, so the open ones run out together."""
    open_: list[list] = []  # [rows left, row iterator] of each open stream
    uniforms: Iterator[float] = iter(())
    while True:
        while len(open_) < width and (stream := next(streams, None)) is not None:
            open_.append(list(stream))
        if not open_:
            return
        u = next(uniforms, None)
        if u is None:  # draws in blocks: one numpy call per 4,096 rows, not per row
            uniforms = iter(pick.random(4096).tolist())
            u = next(uniforms)
        target, chosen = u * sum(n for n, _ in open_), 0
        while target >= open_[chosen][0] and chosen < len(open_) - 1:
            target -= open_[chosen][0]
            chosen += 1
        open_[chosen][0] -= 1
        yield next(open_[chosen][1])
        if open_[chosen][0] == 0:
            open_.pop(chosen)


@dataclass
class Batch:
    """One training batch: padded token ids, lengths, teacher vectors and the cache ids of its rows."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> Batch:
        """A copy in page-locked memory (DataLoader calls this when pin_memory=True)."""
        return Batch(self.input_ids.pin_memory(), self.lengths.pin_memory(), self.targets.pin_memory(),
                     self.ids.pin_memory())


class StreamingCacheDataset(IterableDataset):
    """Length-bucketed batches over a cache's training rows; shuffled shards, shuffle buffer, worker-aware."""

    def __init__(self, cache_dir: str | Path | TeacherCache, column: str, tokenizer: WordPieceTokenizer,
                 batch_size: int, seed: int = 0, val_ids: np.ndarray | None = None, max_rows: int | None = None,
                 buffer_size: int = 10_000, pool_batches: int = 50, rank: int = 0, world_size: int = 1,
                 dedup: str = "keep-first", targets: tuple[str, ...] | None = None, interleave: int = 1):
        """Stream `column` of the cache (opened, or its folder or URL), skipping `val_ids`, ids >= `max_rows` and
        rows the version read deleted; with dedup 'count' a row comes as often as its text was in the corpus.
        `targets`: the teachers whose vectors to stream instead (TeacherCache.read_targets; None: `column`);
        `interleave`: shard segments read at once, each next row drawn from one of them in proportion to the rows
        it has left (1: one shard after the other)."""
        self.column, self.tokenizer, self.targets = column, tokenizer, targets
        self.batch_size, self.seed, self.buffer_size, self.pool_batches = batch_size, seed, buffer_size, pool_batches
        self.val_ids = np.zeros(0, dtype=np.int64) if val_ids is None else np.asarray(val_ids, dtype=np.int64)
        self.max_rows, self.rank, self.world_size, self.dedup = max_rows, rank, world_size, dedup
        self.interleave = interleave
        # every epoch reads the shards of this one manifest; the trainer re-checks between epochs that it still holds
        self.cache = cache_dir if isinstance(cache_dir, TeacherCache) else open_cache(cache_dir)
        self.cache.pinned_shards = max(self.cache.pinned_shards, interleave)  # a remote cache keeps the open ones
        self.cache_dir = self.cache.location
        self.shards = self.cache.shards  # the version read: a prefix of the manifest's shards
        self.epoch, self.skip_batches = 0, 0
        self.done_ids = np.zeros(0, dtype=np.int64)  # rows of this epoch trained on before an elastic resume
        self._rows_in: dict[int, int] = {}  # shard -> training rows, for the done_ids of now

    def set_epoch(self, epoch: int, skip_batches: int = 0, done_ids: np.ndarray | None = None) -> None:
        """Choose the epoch to stream next and how many of its first batches to pass over (a resume on as many
        processes), or which of its rows were trained on already (`done_ids`: a resume on another number of
        processes, whose share of the rest is cut afresh)."""
        self.epoch, self.skip_batches = epoch, skip_batches
        self.done_ids = np.zeros(0, dtype=np.int64) if done_ids is None else np.sort(
            np.asarray(done_ids, dtype=np.int64))
        self._rows_in = {}

    def shard_order(self, epoch: int) -> list[int]:
        """All shard indices (those below max_rows) in this epoch's order, the same for every worker and rank."""
        usable = [i for i, s in enumerate(self.shards) if self.max_rows is None or s.id_start < self.max_rows]
        return [usable[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(usable))]

    def rank_segments(self, epoch: int, rank: int | None = None) -> list[Segment]:
        """One rank's share of the epoch: the training rows in epoch shard order, cut into world_size equal ranges.

        With one process that is every shard whole; with several, a shard may be split between two ranks at a
        row (so ranks get equal shares even when there are fewer shards than ranks). Disjoint, covering.
        """
        rank = self.rank if rank is None else rank
        order = self.shard_order(epoch)
        sizes = [self.rows_in(s) for s in order]
        total = sum(sizes)
        lo, hi = total * rank // self.world_size, total * (rank + 1) // self.world_size
        segments, pos = [], 0
        for shard, n in zip(order, sizes, strict=True):
            first, end = max(lo, pos), min(hi, pos + n)
            if first < end:
                segments.append((shard, first - pos, end - pos))
            pos += n
        return segments

    def stream_segments(self, epoch: int, worker: int, num_workers: int, rank: int | None = None) -> list[Segment]:
        """The segments one stream (rank x DataLoader worker) reads this epoch: disjoint across streams."""
        return self.rank_segments(epoch, rank)[worker::num_workers]

    def stream_shards(self, epoch: int, worker: int, num_workers: int) -> list[int]:
        """The shards one stream reads (in part or whole) this epoch."""
        return [shard for shard, _, _ in self.stream_segments(epoch, worker, num_workers)]

    def rows_in(self, shard: int) -> int:
        """Training rows of one shard (validation ids and ids past max_rows excluded)."""
        if shard not in self._rows_in:
            self._rows_in[shard] = self._count_rows(shard)
        return self._rows_in[shard]

    def _count_rows(self, shard: int) -> int:
        info = self.shards[shard]
        end = info.id_end if self.max_rows is None else min(info.id_end, self.max_rows - 1)
        if end < info.id_start:
            return 0
        ids = np.arange(info.id_start, end + 1, dtype=np.int64)
        keep = self.training_rows(ids)
        if self.dedup == "count":
            return int(self.cache.row_counts(ids[keep]).sum())
        return int(np.count_nonzero(keep))

    def training_rows(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` (one shard's) are trained on: live in the version read, not validation, not done."""
        keep = self.cache.live(ids) & ~np.isin(ids, self.val_ids)
        if len(self.done_ids):
            keep &= ~np.isin(ids, self.done_ids)
        if self.max_rows is not None:
            keep &= ids < self.max_rows
        return keep

    def batches_per_epoch(self, epoch: int, num_workers: int = 0, rank: int | None = None) -> int:
        """Exact number of batches a rank (default this one) yields in `epoch` (only each stream's last is short)."""
        streams = max(num_workers, 1)
        rows = [sum(end - first for _, first, end in self.stream_segments(epoch, w, streams, rank))
                for w in range(streams)]
        return sum(math.ceil(r / self.batch_size) for r in rows)

    def steps_per_epoch(self, epoch: int, num_workers: int = 0) -> int:
        """Batches every rank takes in `epoch`: the fewest any rank has, so that DDP ranks step in lockstep."""
        return min(self.batches_per_epoch(epoch, num_workers, r) for r in range(self.world_size))

    def _rows(self, cache: TeacherCache, segments: list[Segment], rng: np.random.Generator,
              pick: np.random.Generator) -> Iterator[Row]:
        """Training rows of `segments`, each segment's rows permuted: one segment after the other, or with
        `self.interleave` > 1 that many open at once, every row drawn (by `pick`) from one of them with
        probability proportional to the rows it has left, so they all run out together and a batch mixes them."""
        cache.schedule([index for index, _, _ in segments])  # a remote cache fetches them ahead, in this order
        if self.interleave <= 1:
            for segment in segments:
                yield from self._segment_rows(cache, segment, rng)
            return
        sized = ((end - first, self._segment_rows(cache, (index, first, end), rng))
                 for index, first, end in segments if end > first)
        yield from interleave(sized, self.interleave, pick)

    def _segment_rows(self, cache: TeacherCache, segment: Segment, rng: np.random.Generator) -> Iterator[Row]:
        """The training rows of one segment, permuted."""
        index, first, end = segment
        columns = ["id", "text", self.column, "n_tokens"] if self.targets is None else ["id", "text", "n_tokens"]
        table = cache.read_shard(index, columns)
        ids = table.column("id").to_numpy()
        kept = np.flatnonzero(self.training_rows(ids))
        if self.dedup == "count":  # a text the corpus held n times comes n times, as in the corpus
            kept = np.repeat(kept, self.cache.row_counts(ids[kept]))
        kept = kept[first:end]
        rows = kept[rng.permutation(len(kept))]
        texts = table.column("text").to_pylist()
        vectors = vectors_of(table, self.column) if self.targets is None else cache.read_targets(
            index, list(self.targets), self.column)
        n_tokens = table.column("n_tokens").to_numpy()
        for r in rows:
            yield int(ids[r]), texts[r], vectors[r].astype(np.float32), int(n_tokens[r])  # copy, not a view

    def _shuffle(self, rows: Iterator[Row], rng: np.random.Generator) -> Iterator[Row]:
        """A bounded shuffle buffer: hold `buffer_size` rows, emit a random one as each new row arrives."""
        buffer: list[Row] = []
        for row in rows:
            if len(buffer) < self.buffer_size:
                buffer.append(row)
                continue
            pick = int(rng.integers(len(buffer)))
            buffer[pick], row = row, buffer[pick]
            yield row
        for pick in rng.permutation(len(buffer)):
            yield buffer[pick]

    def _bucket(self, rows: Iterator[Row], rng: np.random.Generator) -> Iterator[list[Row]]:
        """Pools of `pool_batches` batches' worth of rows, sorted by length, cut into batches, batches shuffled."""
        pool_size = self.batch_size * self.pool_batches
        pool: list[Row] = []
        for row in rows:
            pool.append(row)
            if len(pool) == pool_size:
                yield from self._cut(pool, rng)
                pool = []
        if pool:
            yield from self._cut(pool, rng)

    def _cut(self, pool: list[Row], rng: np.random.Generator) -> Iterator[list[Row]]:
        order = np.argsort([min(r[3], self.tokenizer.max_length) for r in pool], kind="stable")
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b in rng.permutation(len(batches)):
            yield [pool[i] for i in batches[b]]

    def collate(self, rows: list[Row]) -> Batch:
        """Tokenize and pad a list of rows into a Batch."""
        input_ids, lengths = self.tokenizer([r[1] for r in rows])
        targets = torch.from_numpy(np.stack([r[2] for r in rows]))
        return Batch(input_ids, lengths, targets, torch.tensor([r[0] for r in rows], dtype=torch.long))

    def __iter__(self) -> Iterator[Batch]:
        """This stream's batches for the current epoch, after passing over `skip_batches` (one stream only)."""
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            self.cache.detach()  # a worker process fetches its own shards: no download state of the parent's
        stream = self.rank * num_workers + worker
        rng = np.random.default_rng([self.seed, self.epoch, stream, 1])
        segments = self.stream_segments(self.epoch, worker, num_workers)
        skip = self.skip_batches if info is None else 0  # with workers, the trainer drops batches itself
        pick = np.random.default_rng([self.seed, self.epoch, stream, 2])  # interleaving's own draws
        stream_rows = self._rows(self.cache, segments, rng, pick)
        for i, rows in enumerate(self._bucket(self._shuffle(stream_rows, rng), rng)):
            if i >= skip:
                yield self.collate(rows)
