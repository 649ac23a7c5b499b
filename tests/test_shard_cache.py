"""teacher_cache.shard_cache: a bounded local copy of an S3 cache's shards (a real S3 HTTP server: moto, 127.0.0.1)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from teacher_cache.base.errors import CacheIntegrityError, UserError
from teacher_cache.manifest import ShardInfo
from teacher_cache.shard_cache import START_AHEAD, ShardCache, format_size, parse_size, prefetch_depth
from teacher_cache.shards import sha256_file
from teacher_cache.storage import Store

pytest.importorskip("moto.server")

N_SHARDS = 10


def write_shard(path: Path, seed: int) -> None:
    """A real Arrow IPC file of ~200 KB: 50 rows of 4000 random bytes."""
    rng = np.random.default_rng(seed)
    table = pa.table({"id": np.arange(50) + 50 * seed,
                      "blob": pa.array([rng.bytes(4000) for _ in range(50)], pa.binary())})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)


class Remote:
    """A cache's shards in an S3 bucket, with the original bytes to compare against."""

    def __init__(self, store: Store, infos: list[ShardInfo], originals: list[bytes]) -> None:
        self.store, self.infos, self.originals = store, infos, originals

    def max_bytes(self) -> int:
        return max(i.bytes for i in self.infos)


@pytest.fixture
def remote(s3_env, tmp_path) -> Remote:
    store = Store.open(f"s3://{s3_env}/cache")
    infos, originals = [], []
    for k in range(N_SHARDS):
        path = tmp_path / f"shard-{k:05d}.arrow"
        write_shard(path, k)
        store.put(path.name, path)
        infos.append(ShardInfo(file=path.name, rows=50, id_start=50 * k, id_end=50 * k + 49, sha256=sha256_file(path),
                               bytes=path.stat().st_size))
        originals.append(path.read_bytes())
    return Remote(store, infos, originals)


def on_disk(folder: Path) -> dict[str, int]:
    """Every file in the cache folder (partials included) and its size; one the prefetch thread removes or renames
    while listing is skipped (a rename reappears under its new name only if listed after it)."""
    sizes = {}
    for entry in os.scandir(folder):
        try:
            sizes[entry.name] = entry.stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def use(cache: ShardCache, index: int) -> Path:
    """Get shard `index` and release it at once."""
    path = cache.get(index)
    cache.release(index)
    return path


def wait_for(condition, timeout: float = 30.0) -> None:
    """Poll `condition` until true; a generous timeout only guards against a hang (no speed is asserted)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_every_shard_comes_back_whole(remote, tmp_path):
    folder = tmp_path / "local"
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=10**9) as cache:
        for k in (3, 0, 9, 1, 2, 8, 4, 7, 5, 6):
            path = cache.get(k)
            assert path == folder / remote.infos[k].file
            assert path.read_bytes() == remote.originals[k]
            assert pa.ipc.open_file(pa.memory_map(str(path))).read_all().num_rows == 50
            cache.release(k)
        assert cache.get(3).read_bytes() == remote.originals[3]  # again: already here
        cache.release(3)
        stats = cache.stats
    assert stats["downloads"] == N_SHARDS and stats["hits"] == 1 and stats["refetches"] == 0
    assert stats["bytes_downloaded"] == sum(len(b) for b in remote.originals)


def test_a_local_store_works_the_same(remote, tmp_path):
    source = Store.open(tmp_path / "source")
    for info, data in zip(remote.infos[:3], remote.originals, strict=False):
        source.put(info.file, data)
    with ShardCache(source, remote.infos[:3], tmp_path / "local", limit_bytes=10**9, max_ahead=1) as cache:
        cache.schedule([0, 1, 2])
        for k in range(3):
            assert cache.get(k).read_bytes() == remote.originals[k]
            cache.release(k)
        assert cache.stats["downloads"] == 3


def test_limit_bounds_the_disk_while_all_shards_are_served_in_order(remote, tmp_path):
    folder, limit = tmp_path / "local", int(2.5 * remote.max_bytes())
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=limit) as cache:
        cache.schedule(list(range(N_SHARDS)))
        for k in range(N_SHARDS):
            path = cache.get(k)
            assert path.read_bytes() == remote.originals[k]
            assert sum(on_disk(folder).values()) <= limit
            cache.release(k)
        stats = cache.stats
    assert stats["peak_bytes"] <= limit
    assert stats["downloads"] == N_SHARDS  # no shard fetched twice, none thrown away unused
    assert len(on_disk(folder)) <= 2


def test_eviction_is_least_recently_used(remote, tmp_path):
    folder = tmp_path / "local"
    names = [i.file for i in remote.infos]
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=int(2.5 * remote.max_bytes())) as cache:
        for k in (0, 1, 0, 2):
            use(cache, k)
        assert set(on_disk(folder)) == {names[0], names[2]}  # 1 was the least recently used
        use(cache, 3)
        assert set(on_disk(folder)) == {names[2], names[3]}
        assert cache.stats["hits"] == 1 and cache.stats["downloads"] == 4


def test_pinned_shards_stay_and_too_many_pins_is_one_line_naming_the_flag(remote, tmp_path):
    folder = tmp_path / "local"
    names = [i.file for i in remote.infos]
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=int(2.5 * remote.max_bytes()),
                    flag="--shard-cache") as cache:
        cache.get(0)  # held
        use(cache, 1)
        cache.get(2)  # room from 1, not from 0 although 0 was used longer ago: 0 is pinned
        assert set(on_disk(folder)) == {names[0], names[2]}
        with pytest.raises(UserError) as info:
            cache.get(3)  # 0 and 2 held, no room for a third: an error, not a hang
        assert str(info.value).startswith("--shard-cache ") and "too small" in str(info.value)
        assert "\n" not in str(info.value)
        cache.release(0)
        assert cache.get(3).read_bytes() == remote.originals[3]


def test_shard_corrupt_in_the_bucket_fails_after_exactly_two_downloads(remote, tmp_path):
    folder = tmp_path / "local"
    remote.store.put(remote.infos[3].file, b"x" * remote.infos[3].bytes)  # same size, other bytes
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=10**9) as cache:
        with pytest.raises(CacheIntegrityError) as info:
            cache.get(3)
        stats = cache.stats
    message = str(info.value)
    assert message.startswith(f"{remote.store.where(remote.infos[3].file)}: checksum mismatch after two downloads")
    assert f"run `tc verify {remote.store.url}`" in message and "\n" not in message
    assert stats["downloads"] == 2 and stats["refetches"] == 1
    assert on_disk(folder) == {}  # neither the bad copy nor a partial


def test_prefetch_thread_errors_surface_in_get_as_one_line(remote, tmp_path):
    remote.store.put(remote.infos[1].file, b"short")
    remote.store.remove(remote.infos[2].file)
    with ShardCache(remote.store, remote.infos, tmp_path / "local", limit_bytes=10**9) as cache:
        cache.schedule([1])
        wait_for(lambda: cache.stats["downloads"] >= 2)  # the thread's two tries at shard 1
        with pytest.raises(CacheIntegrityError, match="checksum mismatch after two downloads") as info:
            cache.get(1)
        assert "\n" not in str(info.value) and cache.stats["downloads"] == 2  # get() did not fetch it again
        cache.schedule([2, 0])
        with pytest.raises(UserError) as info:
            cache.get(2)  # the thread's error, or get()'s own: the same line
        assert str(info.value) == f"{remote.store.where(remote.infos[2].file)}: no such object"
        assert cache.get(0).read_bytes() == remote.originals[0]


def test_local_copy_corrupted_between_runs_is_fetched_again(remote, tmp_path):
    folder = tmp_path / "local"
    with ShardCache(remote.store, remote.infos[:3], folder, limit_bytes=10**9) as cache:
        for k in range(3):
            use(cache, k)
    damaged = bytearray((folder / remote.infos[1].file).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / remote.infos[1].file).write_bytes(bytes(damaged))  # same size: only the hash can tell
    (folder / remote.infos[2].file).write_bytes(b"truncated")
    with ShardCache(remote.store, remote.infos[:3], folder, limit_bytes=10**9) as cache:
        assert cache.get(0).read_bytes() == remote.originals[0]
        assert cache.stats["downloads"] == 0  # the earlier run's copy, re-hashed and used
        assert cache.get(1).read_bytes() == remote.originals[1]
        assert cache.stats["downloads"] == 1 and cache.stats["refetches"] == 1
        assert cache.get(2).read_bytes() == remote.originals[2]
        assert cache.stats["downloads"] == 2


def test_an_earlier_runs_copies_over_a_lower_limit_are_trimmed(remote, tmp_path):
    folder = tmp_path / "local"
    with ShardCache(remote.store, remote.infos[:4], folder, limit_bytes=10**9) as cache:
        for k in range(4):
            use(cache, k)
    limit = int(2.5 * remote.max_bytes())
    with ShardCache(remote.store, remote.infos[:4], folder, limit_bytes=limit) as cache:
        assert sum(on_disk(folder).values()) <= limit and cache.stats["peak_bytes"] <= limit


def test_limit_smaller_than_one_shard_is_one_line_naming_the_flag(remote, tmp_path):
    with pytest.raises(UserError) as info:
        ShardCache(remote.store, remote.infos, tmp_path / "local", limit_bytes=1000, flag="--cache-limit")
    message = str(info.value)
    big = max(remote.infos, key=lambda i: i.bytes)
    assert message == (f"--cache-limit 1.0 kB: smaller than one shard ({remote.store.where(big.file)} is "
                       f"{format_size(big.bytes)}); raise it to at least {format_size(big.bytes, round_up=True)}")
    assert parse_size(format_size(big.bytes, round_up=True)) >= big.bytes


def test_after_prefetching_gets_are_hits_and_no_more_is_fetched_than_needed(remote, tmp_path):
    folder = tmp_path / "local"
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=10**9) as cache:
        cache.schedule(list(range(N_SHARDS)))
        wait_for(lambda: cache.stats["downloads"] >= START_AHEAD)
        time.sleep(0.2)  # a chance to overshoot, were it going to
        assert cache.stats["downloads"] == START_AHEAD and len(on_disk(folder)) == START_AHEAD
        for k in range(START_AHEAD):
            use(cache, k)
        assert cache.stats["hits"] == START_AHEAD
        for k in range(START_AHEAD, N_SHARDS):
            assert cache.get(k).read_bytes() == remote.originals[k]
            cache.release(k)
        assert cache.stats["downloads"] == N_SHARDS


def test_max_ahead_caps_the_prefetch(remote, tmp_path):
    folder = tmp_path / "local"
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=10**9, max_ahead=1) as cache:
        cache.schedule(list(range(N_SHARDS)))
        wait_for(lambda: cache.stats["downloads"] >= 1)
        time.sleep(0.2)
        assert cache.stats["downloads"] == 1 and set(on_disk(folder)) == {remote.infos[0].file}


def test_prefetch_depth_follows_download_over_consume_time():
    assert prefetch_depth(None, 1.0) == START_AHEAD and prefetch_depth(2.0, None) == START_AHEAD
    assert prefetch_depth(2.0, 1.0) == 3
    assert prefetch_depth(0.5, 1.0) == 2
    assert prefetch_depth(0.0, 1.0) == 1
    assert prefetch_depth(10.0, 1.0, max_ahead=4) == 4
    assert prefetch_depth(1.0, 0.0) > 1000  # a consumer that never waits: the limit is the only cap


def test_rate_limited_downloads_are_still_whole(remote, tmp_path):
    with ShardCache(remote.store, remote.infos[:3], tmp_path / "local", limit_bytes=10**9,
                    rate_limit=4e6) as cache:  # 4 MB/s: several throttled blocks per shard
        cache.schedule([0, 1, 2])
        for k in range(3):
            assert cache.get(k).read_bytes() == remote.originals[k]
            cache.release(k)
        assert cache.stats["downloads"] == 3


def test_close_leaves_no_partial_files(remote, tmp_path):
    folder = tmp_path / "local"
    cache = ShardCache(remote.store, remote.infos, folder, limit_bytes=10**9, rate_limit=1e5)  # a download in flight
    cache.schedule(list(range(N_SHARDS)))
    wait_for(lambda: any(name.endswith(".part") for name in on_disk(folder)))
    cache.close()
    assert not any(name.endswith(".part") for name in on_disk(folder))
    for name, size in on_disk(folder).items():  # whatever arrived is whole
        k = int(name[len("shard-"):-len(".arrow")])
        assert (folder / name).read_bytes() == remote.originals[k] and size == remote.infos[k].bytes


def test_a_dead_processs_old_partial_is_removed(remote, tmp_path):
    folder = tmp_path / "local"
    folder.mkdir()
    stale = folder / f".{remote.infos[0].file}.{2**22 + 1}.7.part"  # above Linux's pid_max: no such process
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = folder / f".{remote.infos[1].file}.{os.getpid()}.7.part"  # a live process's: maybe still being written
    live.write_bytes(b"ours")
    os.utime(live, (time.time() - 3600, time.time() - 3600))
    cache = ShardCache(remote.store, remote.infos, folder, limit_bytes=10**9)
    assert not stale.exists() and live.exists()
    cache.close()
    assert not live.exists()  # close() removes this process's partials


@pytest.mark.parametrize(("text", "size"), [("500MB", 500 * 10**6), ("20GB", 20 * 10**9), ("1.5GiB", 3 * 2**29),
                                             ("1000000", 10**6), ("64 KiB", 65536), ("2k", 2000), ("0.5mb", 500_000),
                                             ("12b", 12), ("1TB", 10**12)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "ten GB", "-1GB", "1.2.3MB", "5 XB", "1e9", "5iB"])
def test_bad_size_is_one_line_naming_the_flag(text):
    with pytest.raises(UserError) as info:
        parse_size(text, flag="--cache-limit")
    assert str(info.value).startswith(f"--cache-limit {text!r}: not a size") and "\n" not in str(info.value)


def test_format_size():
    assert format_size(0) == "0 B" and format_size(999) == "999 B"
    assert format_size(1000) == "1.0 kB" and format_size(4_234_567) == "4.2 MB"
    assert format_size(4_234_567, round_up=True) == "4.3 MB" and format_size(4_200_000, round_up=True) == "4.2 MB"
    assert format_size(20 * 10**9) == "20.0 GB" and format_size(3 * 10**12) == "3.0 TB"


def test_a_shard_another_cache_holds_is_never_removed_under_it(remote, tmp_path):
    # two caches on one folder stand for two processes: each flocks its own open file of a pinned shard
    folder, limit = tmp_path / "local", int(2.5 * remote.max_bytes())
    with ShardCache(remote.store, remote.infos, folder, limit_bytes=limit) as first, \
            ShardCache(remote.store, remote.infos, folder, limit_bytes=limit) as second:
        held = first.get(0)
        assert use(second, 0).read_bytes() == remote.originals[0]  # the first's copy, checked and used
        assert second.stats["downloads"] == 0
        use(second, 1)
        use(second, 2)  # needs 0's room: 0 is only forgotten by the second, since the first holds it
        assert held.read_bytes() == remote.originals[0]
        first.release(0)
        use(second, 3)
        assert use(first, 0).read_bytes() == remote.originals[0]
