"""The streaming dataset: every training row once per epoch, never a validation row, replayable, worker-aware."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from student.tokenizer import WordPieceTokenizer, read_tokenizer_files
from student.training.data import StreamingCacheDataset, interleave
from student.training.val_rows import read_rows, validation_ids
from teacher_cache import open_cache


@pytest.fixture(scope="module")
def tokenizer(tiny_cache) -> WordPieceTokenizer:
    files = read_tokenizer_files(open_cache(tiny_cache).tokenizer_path)
    return WordPieceTokenizer(files["tokenizer.json"], max_length=64)


def make(tiny_cache, tokenizer, **kw) -> StreamingCacheDataset:
    args = {"column": "embedding", "batch_size": 8, "seed": 3, "val_ids": validation_ids(300, 30),
            "buffer_size": 16, "pool_batches": 3} | kw
    return StreamingCacheDataset(tiny_cache, tokenizer=tokenizer, **args)


def epoch_ids(dataset: StreamingCacheDataset, epoch: int, skip: int = 0) -> list[list[int]]:
    dataset.set_epoch(epoch, skip)
    return [batch.ids.tolist() for batch in dataset]


def test_validation_ids_are_stable():
    ids = validation_ids(1000, 50)
    assert len(ids) == 50 and len(set(ids.tolist())) == 50 and np.all(np.diff(ids) > 0)
    assert ids.min() >= 0 and ids.max() < 1000
    np.testing.assert_array_equal(ids, validation_ids(1000, 50, chunk=7))  # chunking does not matter
    assert validation_ids(1000, 0).size == 0
    assert len(np.intersect1d(ids, validation_ids(1000, 50 * 2))) == 50  # more rows only add ids
    spread = np.histogram(ids, bins=4, range=(0, 1000))[0]
    assert spread.min() > 0  # spread over the whole cache, not the first shard


def test_every_training_row_once_per_epoch_never_val(tiny_cache, tokenizer):
    dataset = make(tiny_cache, tokenizer)
    val = set(validation_ids(300, 30).tolist())
    orders = []
    for epoch in range(2):
        batches = epoch_ids(dataset, epoch)
        seen = Counter(i for b in batches for i in b)
        assert set(seen) == set(range(300)) - val and max(seen.values()) == 1
        assert len(batches) == dataset.batches_per_epoch(epoch) == 34  # ceil(270 / 8)
        assert sum(len(b) < 8 for b in batches) == 1  # one short batch per epoch
        orders.append([i for b in batches for i in b])
    assert orders[0] != orders[1]  # reshuffled each epoch
    assert epoch_ids(make(tiny_cache, tokenizer), 1) == epoch_ids(dataset, 1)  # replayable from (seed, epoch)
    assert epoch_ids(make(tiny_cache, tokenizer, seed=4), 1) != epoch_ids(dataset, 1)


def test_skip_batches_resumes_mid_epoch(tiny_cache, tokenizer):
    dataset = make(tiny_cache, tokenizer)
    full = epoch_ids(dataset, 1)
    assert epoch_ids(dataset, 1, skip=5) == full[5:]


@pytest.mark.parametrize("interleave", [2, 3, 8])
def test_interleaved_shards_cover_the_epoch_mix_shards_and_replay(tiny_cache, tokenizer, interleave):
    dataset = make(tiny_cache, tokenizer, interleave=interleave, buffer_size=1)  # no buffer: the order as read
    val = set(validation_ids(300, 30).tolist())
    batches = epoch_ids(dataset, 0)
    seen = Counter(i for b in batches for i in b)
    assert set(seen) == set(range(300)) - val and max(seen.values()) == 1
    assert len(batches) == dataset.batches_per_epoch(0) == 34
    rows = [i for b in batches for i in b]
    first_rows = {i // 100 for i in rows[:72]}  # 3 whole pools of 24 rows: shards of 100 rows, 90 training rows each
    assert len(first_rows) == min(interleave, 3)
    assert epoch_ids(make(tiny_cache, tokenizer, interleave=interleave, buffer_size=1), 0) == batches
    assert epoch_ids(dataset, 0, skip=5) == batches[5:]
    one_by_one = [i for b in epoch_ids(make(tiny_cache, tokenizer, buffer_size=1), 0) for i in b]
    assert {i // 100 for i in one_by_one[:72]} == {one_by_one[0] // 100}  # without: one shard at a time


def test_batch_contents_and_length_buckets(tiny_cache, tokenizer):
    dataset = make(tiny_cache, tokenizer, pool_batches=100, buffer_size=1000)  # one pool: global length sort
    cache = open_cache(tiny_cache)
    n_tokens = np.concatenate([cache.read_shard(i, ["n_tokens"]).column("n_tokens").to_numpy() for i in range(3)])
    dataset.set_epoch(0)
    spans = []
    for batch in dataset:
        assert batch.input_ids.shape[0] == len(batch) == batch.targets.shape[0] and batch.targets.shape[1] == 32
        assert int(batch.lengths.max()) == batch.input_ids.shape[1]
        np.testing.assert_array_equal(batch.lengths.numpy(), np.minimum(n_tokens[batch.ids.numpy()], 64))
        np.testing.assert_allclose(batch.targets.numpy(), cache.vectors("embedding", batch.ids.numpy()), atol=1e-6)
        spans.append((int(batch.lengths.min()), int(batch.lengths.max())))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # buckets do not overlap


def test_max_rows_limits_the_stream(tiny_cache, tokenizer):
    dataset = make(tiny_cache, tokenizer, max_rows=150, val_ids=validation_ids(150, 15))
    assert dataset.shard_order(0) and set(dataset.shard_order(0)) == {0, 1}
    ids = [i for b in epoch_ids(dataset, 0) for i in b]
    assert sorted(ids) == sorted(set(range(150)) - set(validation_ids(150, 15).tolist()))


def test_streams_get_disjoint_row_ranges(tiny_cache, tokenizer):
    for world_size in (1, 2, 4):
        parts = [make(tiny_cache, tokenizer, rank=r, world_size=world_size).stream_segments(0, w, 2)
                 for r in range(world_size) for w in range(2)]
        rows = [(shard, i) for p in parts for shard, first, end in p for i in range(first, end)]
        assert len(rows) == len(set(rows)) == 270  # 3 shards x 90 training rows, each once
        if world_size == 1:
            assert sorted(s for p in parts for s, _, _ in p) == [0, 1, 2]  # whole shards


def test_dataloader_workers_cover_the_epoch(tiny_cache, tokenizer):
    dataset = make(tiny_cache, tokenizer)
    dataset.set_epoch(2)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    ids = [i for batch in loader for i in batch.ids.tolist()]
    assert sorted(ids) == sorted(set(range(300)) - set(validation_ids(300, 30).tolist()))
    assert sum(1 for _ in loader) == dataset.batches_per_epoch(2, num_workers=2)


def test_read_rows(tiny_cache):
    cache = open_cache(tiny_cache)
    ids = np.array([0, 99, 100, 250])
    texts, vectors = read_rows(cache, ids, "embedding_cls")
    assert texts == cache.texts(ids)
    np.testing.assert_allclose(vectors, cache.vectors("embedding_cls", ids))
    assert torch.from_numpy(vectors).dtype == torch.float32


def test_interleave_keeps_each_stream_in_order_and_runs_the_open_ones_out_together():
    streams = [(n, iter([(s, i) for i in range(n)])) for s, n in enumerate([50, 10, 40, 5])]
    rows = list(interleave(iter(streams), 2, np.random.default_rng(0)))
    assert sorted(rows) == sorted((s, i) for s, n in enumerate([50, 10, 40, 5]) for i in range(n))
    for s in range(4):
        assert [i for t, i in rows if t == s] == list(range([50, 10, 40, 5][s]))  # in order within a stream
    assert {t for t, _ in rows[:20]} == {0, 1}  # two open at a time, in the streams' order
    assert rows.index((2, 0)) > rows.index((1, 9))  # the third opens once the second has run out
