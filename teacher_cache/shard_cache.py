"""A bounded local cache of a remote teacher cache's shards (mosaicml-streaming's local shard cache, kept small).

`ShardCache` keeps copies of a Store's shards (an S3 prefix, ...) in a local folder, as `folder/<shard file name>`:

- Fetch: a shard is copied in blocks into a partial file of a unique name beside it (`.<name>.<pid>.<thread>.part`),
  hashed on the way, checked against the manifest's size and sha256, and only then renamed to its final name
  (os.replace): a final name only ever holds a whole, checked shard. A mismatch is fetched once more; a second one is
  a CacheIntegrityError. A file already at the final name (an earlier run, another process) is re-hashed once per
  process before its first use, and fetched again when bad.
- Bound: the bytes of shard files this cache keeps in the folder, counting pinned shards and downloads in flight (a
  shard's bytes are reserved before its download starts), never exceed `limit_bytes`. Room is made by removing the
  least-recently-used shards nobody holds: get() pins a shard until release().
- Prefetch: `schedule(order)` tells the order get() will ask for shards in; a background thread fetches ahead in that
  order, as far as the limit allows but no further than

      ahead = ceil(download_s / consume_s) + 1

  shards from the next one to be asked for. download_s is the moving average of one shard's download time, consume_s
  the moving average of the time the consumer spends between get() calls (from one get() returning to the next one
  called). `ahead` downloads in a row take about as long as consuming them, so the next shard is there when asked
  without filling the disk and the link with shards not needed yet. Until both are measured, ahead is START_AHEAD.
  `max_ahead` caps it; so does the limit, since the thread never removes a shard due within those `ahead` get()
  calls (it waits for a release instead).
- get() of a shard the thread has not reached fetches it in the calling thread; one process never fetches a shard
  twice at once (a get() waits for the thread's download). An error of the thread (the network, a checksum) is raised
  by the next get() of that shard, as the one-line error it is; prefetching pauses until then.

Several processes (DataLoader workers, DDP ranks on one machine) may share one folder: unique partial names and
atomic renames keep every final name whole, and a shard another process fetched is verified and used. A pinned shard
is flocked (shared) for as long as it is pinned, and removal takes an exclusive flock first: a process never deletes
a shard another one holds, it only stops counting it (the holder counts it). Accounting is per process, though: each
keeps the shards it counts under its own limit, so give each its share of the disk; a shard another process removed
is fetched again. Make the cache in each worker, after any fork.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

import pyarrow as pa

from teacher_cache.base.atomic import fresh_file
from teacher_cache.base.errors import CacheError, CacheIntegrityError, UserError, first_line, reason
from teacher_cache.manifest import ShardInfo
from teacher_cache.shards import sha256_file
from teacher_cache.storage import Store

BLOCK = 4 << 20
START_AHEAD = 2
SMOOTHING = 0.3  # weight of the newest measurement in the moving averages
STALE_PART_S = 600  # a partial unwritten this long, of a process that is gone, is a leftover
ABSENT, BUSY, LOCAL = "absent", "busy", "local"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i?))?b?\s*$", re.IGNORECASE)
_PART = re.compile(r"^\..+\.(\d+)\.\d+\.part$")


def parse_size(text: str, flag: str = "--cache-limit") -> int:
    """Bytes in a size such as 500MB or 20GB (powers of 1000), 1.5GiB (powers of 1024), or 1000000 (bytes)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise UserError(f"{flag} {text!r}: not a size (write e.g. 500MB, 20GB, 1.5GiB or a number of bytes)")
    number, prefix, binary = match.groups()
    scale = (1024 if binary else 1000) ** ("kmgtp".index(prefix.lower()) + 1) if prefix else 1
    return round(float(number) * scale)


def format_size(n: int, round_up: bool = False) -> str:
    """`n` bytes in words, e.g. '4.2 MB' (powers of 1000; `round_up` for a minimum that must not fall short)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            tenths = -(-n * 10 // scale) if round_up else round(n * 10 / scale)  # integers: no float ceil surprises
            return f"{tenths / 10:.1f} {unit}"
    return f"{n} B"


def prefetch_depth(download_s: float | None, consume_s: float | None, max_ahead: int | None = None) -> int:
    """How many shards to have fetched ahead: ceil(download_s / consume_s) + 1, START_AHEAD until both are known."""
    if download_s is None or consume_s is None:
        depth = START_AHEAD
    else:
        depth = math.ceil(min(download_s / max(consume_s, 1e-6), 1e6)) + 1
    return depth if max_ahead is None else min(depth, max_ahead)


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


class _Stopped(Exception):
    """The prefetch thread was asked to stop in the middle of a download."""


class _Throttle:
    """A cap on the bytes per second of all downloads together: each block waits for its slot on one clock."""

    def __init__(self, rate: float) -> None:
        self.rate, self.free_at, self.lock = rate, 0.0, threading.Lock()
        self.block = max(64 << 10, min(BLOCK, int(rate / 20)))  # ~20 sleeps a second: a smooth rate, not bursts

    def take(self, n: int, stop: threading.Event | None) -> None:
        """Wait until `n` more bytes fit under the rate."""
        with self.lock:
            now = time.monotonic()
            self.free_at = max(self.free_at, now) + n / self.rate
            delay = self.free_at - now
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            raise _Stopped


class ShardCache:
    """A bounded local copy of a remote cache's shards: fetched ahead in a background thread, sha256-checked on
    arrival, evicted least-recently-used."""

    def __init__(self, store: Store, shards: list[ShardInfo], folder: Path, limit_bytes: int,
                 rate_limit: float | None = None, max_ahead: int | None = None, flag: str = "--cache-limit") -> None:
        self.store, self.shards, self.folder = store, list(shards), Path(folder)
        self.limit, self.max_ahead, self.flag = int(limit_bytes), max_ahead, flag
        self._sizes = [s.bytes or store.size(s.file) for s in self.shards]  # old manifests recorded no sizes
        if self._sizes and max(self._sizes) > self.limit:
            big = self._sizes.index(max(self._sizes))
            raise UserError(f"{flag} {format_size(self.limit)}: smaller than one shard "
                            f"({store.where(self.shards[big].file)} is {format_size(self._sizes[big])}); "
                            f"raise it to at least {format_size(self._sizes[big], round_up=True)}")
        self._cv = threading.Condition()
        self._state = [ABSENT] * len(self.shards)
        self._held = [0] * len(self.shards)  # bytes counted for each shard (on disk or reserved)
        self._used = 0
        self._lru: OrderedDict[int, None] = OrderedDict()  # shards on disk and idle, least recently used first
        self._verified: set[int] = set()
        self._pins: Counter[int] = Counter()
        self._fds: dict[int, int] = {}  # pinned shard -> its file, flocked shared for as long as it is pinned
        self._errors: dict[int, UserError] = {}  # the prefetch thread's, for get() to raise
        self._crash: CacheError | None = None
        self._order: list[int] = []
        self._pos = 0  # the position in _order of the next get()
        self._download_s: float | None = None
        self._consume_s: float | None = None
        self._returned_at: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._throttle = _Throttle(rate_limit) if rate_limit else None
        self._stats = {"bytes_downloaded": 0, "downloads": 0, "hits": 0, "wait_s": 0.0, "refetches": 0,
                       "peak_bytes": 0}
        self._adopt_folder()

    def _local(self, index: int) -> Path:
        return self.folder / self.shards[index].file

    def _adopt_folder(self) -> None:
        """Count the shards an earlier run left (checked later, on first use); remove dead processes' partials."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise UserError(f"{self.folder}: cannot use it as the shard cache folder ({reason(exc)})") from None
        index_of = {s.file: i for i, s in enumerate(self.shards)}
        found = []
        for entry in entries:
            part, i = _PART.match(entry.name), index_of.get(entry.name)
            try:
                info = entry.stat(follow_symlinks=False)
                if part and time.time() - info.st_mtime > STALE_PART_S and not _alive(int(part.group(1))):
                    os.unlink(entry.path)
                elif i is not None and info.st_size != self._sizes[i]:
                    os.unlink(entry.path)  # cannot be the shard: not worth a hash
                elif i is not None:
                    found.append((info.st_mtime, i))
            except OSError:
                continue  # gone meanwhile (another process), or not ours to remove
        for _, i in sorted(found):  # oldest first: the first to go if the limit is lower than last time
            self._state[i], self._held[i], self._lru[i] = LOCAL, self._sizes[i], None
            self._used += self._sizes[i]
        with self._cv:
            self._make_room(0, set())
            self._stats["peak_bytes"] = self._used

    @property
    def stats(self) -> dict:
        """bytes_downloaded, downloads (whole transfers), hits, wait_s (time get() waited), refetches (downloads
        because a copy was bad), peak_bytes (the most bytes of shard files this cache held in the folder)."""
        with self._cv:
            return dict(self._stats)

    @property
    def ahead(self) -> int:
        """How many shards the prefetch thread keeps fetched ahead now (see the module docstring)."""
        return prefetch_depth(self._download_s, self._consume_s, self.max_ahead)

    def schedule(self, order: list[int]) -> None:
        """Tell the shard indices in the order get() will ask for them; (re)starts the prefetch thread on it."""
        bad = [i for i in order if not 0 <= i < len(self.shards)]
        if bad:
            raise ValueError(f"shard index {bad[0]} out of range (the cache has {len(self.shards)} shards)")
        with self._cv:  # the same order again (set-up, then the loop): the downloads under way go on
            if list(order) == self._order and self._thread is not None and self._thread.is_alive():
                return
        self._stop_thread()
        with self._cv:
            self._order, self._pos, self._crash = list(order), 0, None
            self._errors.clear()  # stale: the new thread tries those shards again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="shard-prefetch", daemon=True)
        self._thread.start()

    def get(self, index: int) -> Path:
        """Block until shard `index` is present and verified locally; return its local path, pinned until release."""
        if not 0 <= index < len(self.shards):
            raise IndexError(f"shard index {index} out of range (the cache has {len(self.shards)} shards)")
        start = time.monotonic()
        waited = False
        with self._cv:
            if self._returned_at is not None:
                self._consume_s = _average(self._consume_s, start - self._returned_at)
            try:  # the prefetch window moves on (quick: in schedule order the shard is the next one)
                self._pos = self._order.index(index, self._pos) + 1
            except ValueError:
                pass  # not scheduled (any more): the window stays
            self._cv.notify_all()
        while True:
            with self._cv:
                if self._crash is not None:
                    raise self._crash
                if index in self._errors:
                    error = self._errors.pop(index)
                    self._cv.notify_all()  # the thread resumes
                    raise error
                state = self._state[index]
                if state == LOCAL and index in self._verified:
                    if self._hold(index):  # pinned before the lock goes: nothing removes it in between
                        return self._pin(index, start, waited)
                    self._drop(index)  # another process removed it: fetch it again
                    continue
                waited = True
                if state == BUSY or not (state == LOCAL or self._make_room(self._sizes[index], self._window())
                                         or self._make_room(self._sizes[index], set())):
                    if state != BUSY and BUSY not in self._state:
                        raise UserError(f"{self.flag} {format_size(self.limit)}: too small for the "
                                        f"{len(self._pins) + 1} shards held at once (release shards before getting "
                                        "more, or raise it)")
                    self._cv.wait(timeout=1.0)  # for that download, or for the thread's to end and free room
                    continue
                self._claim(index)
            try:
                self._materialize(index, None)
            except BaseException:
                with self._cv:
                    self._unclaim(index)
                    self._cv.notify_all()
                raise
            with self._cv:
                self._settle(index)

    def _hold(self, index: int) -> bool:
        """Take a shared flock on the local file of `index` (held while pinned, so that no other process sharing
        the folder removes it); False when it is gone or being removed."""
        if index in self._fds:
            return True
        path = self._local(index)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not removed between our open and flock
                self._fds[index] = fd
                return True
        except OSError:  # BlockingIOError: a process is removing it; FileNotFoundError: it has
            pass
        os.close(fd)
        return False

    def _pin(self, index: int, start: float, waited: bool) -> Path:
        """Pin a present shard for the caller (under the lock) and count the get()."""
        self._pins[index] += 1
        self._lru.pop(index, None)  # not evictable; back in the LRU order on release
        self._returned_at = time.monotonic()
        if waited:
            self._stats["wait_s"] += self._returned_at - start
        else:
            self._stats["hits"] += 1
        self._cv.notify_all()
        return self._local(index)

    def release(self, index: int) -> None:
        """The caller is done with shard `index` (evictable again once every get() of it is released)."""
        with self._cv:
            if self._pins[index] <= 0:
                raise ValueError(f"shard {index} released more often than got")
            self._pins[index] -= 1
            if not self._pins[index]:
                del self._pins[index]
                os.close(self._fds.pop(index))
                self._lru[index] = None  # the most recently used
            self._cv.notify_all()

    def close(self) -> None:
        """Stop the thread and remove this process's partial downloads; the shards stay for a later run."""
        self._stop_thread()
        for part in self.folder.glob(f".*.{os.getpid()}.*.part"):
            part.unlink(missing_ok=True)
        with self._cv:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._pins.clear()

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- under the lock ---------------------------------------------------------------------------------------------

    def _make_room(self, need: int, protect: set[int]) -> bool:
        """Remove least-recently-used idle shards (not in `protect`) until `need` more bytes fit; False, removing
        nothing, when they cannot."""
        short = self._used + need - self.limit
        victims, freed = [], 0
        for i in self._lru:
            if freed >= short:
                break
            if i not in protect:
                victims.append(i)
                freed += self._held[i]
        if freed < short:
            return False
        for i in victims:
            self._remove(i)
        return True

    def _remove(self, index: int) -> None:
        """Delete the local file of idle shard `index`, unless another process holds it: then only stop counting
        it (that process counts it, and removes it in its turn)."""
        path = self._local(index)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        except OSError as exc:
            raise UserError(f"{path}: cannot remove it to keep {self.flag} ({reason(exc)})") from None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise UserError(f"{path}: cannot remove it to keep {self.flag} ({reason(exc)})") from None
            finally:
                os.close(fd)
        self._drop(index)

    def _drop(self, index: int) -> None:
        self._lru.pop(index, None)
        self._verified.discard(index)
        self._state[index] = ABSENT
        self._used -= self._held[index]
        self._held[index] = 0

    def _claim(self, index: int) -> None:
        """Mark `index` as being fetched or checked by the calling thread, its bytes reserved."""
        if self._state[index] == ABSENT:
            self._held[index] = self._sizes[index]
            self._used += self._sizes[index]
            self._stats["peak_bytes"] = max(self._stats["peak_bytes"], self._used)
        self._lru.pop(index, None)
        self._state[index] = BUSY

    def _unclaim(self, index: int) -> None:
        self._state[index] = LOCAL  # so that _drop gives its reservation back
        self._drop(index)

    def _settle(self, index: int) -> None:
        self._state[index] = LOCAL
        self._verified.add(index)
        self._lru[index] = None

    def _window(self) -> set[int]:
        """The shards due in the next `ahead` get() calls: the prefetch thread never removes one of them."""
        return set(self._order[self._pos:self._pos + self.ahead])

    def _next_job(self) -> int | None:
        """Claim the first shard of the prefetch window that is not ready, if there is room for it."""
        if self._errors:
            return None  # paused until get() raises it
        window = self._window()
        for i in self._order[self._pos:self._pos + self.ahead]:
            if self._state[i] == BUSY or (self._state[i] == LOCAL and i in self._verified):
                continue
            if self._state[i] == ABSENT and not self._make_room(self._sizes[i], window):
                return None  # only shards due soon are left to remove: wait for a release
            self._claim(i)
            return i
        return None

    # --- the work, outside the lock ---------------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        try:
            while True:
                with self._cv:
                    job = None
                    while not stop.is_set() and (job := self._next_job()) is None:
                        self._cv.wait(timeout=1.0)
                    if job is None:
                        return
                ok, error = False, None
                try:
                    self._materialize(job, stop)
                    ok = True
                except _Stopped:
                    pass
                except UserError as exc:
                    error = exc
                except Exception as exc:  # a bug must still reach get() as one line, not hang it
                    error = CacheError(f"{self.store.where(self.shards[job].file)}: prefetch failed "
                                       f"({type(exc).__name__}: {first_line(exc)})")
                with self._cv:
                    if ok:
                        self._settle(job)
                    else:
                        self._unclaim(job)
                        if error is not None:
                            self._errors[job] = error
                    self._cv.notify_all()
        except Exception as exc:
            with self._cv:
                self._crash = CacheError(f"{self.folder}: the shard prefetch thread failed ({first_line(exc)})")
                self._cv.notify_all()

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            with self._cv:
                self._cv.notify_all()
            thread.join()  # a download in flight stops within a block

    def _materialize(self, index: int, stop: threading.Event | None) -> None:
        """Make the claimed shard `index` present and checked: an unchecked file there re-hashed, else downloaded."""
        info, final = self.shards[index], self._local(index)
        bad_copy = False
        try:  # an earlier run's, or another process's: checked once per process
            if final.stat().st_size == self._sizes[index] and sha256_file(final) == info.sha256:
                return
            final.unlink(missing_ok=True)
            bad_copy = True
        except FileNotFoundError:
            pass  # not there (or removed meanwhile by another process)
        except OSError as exc:
            raise UserError(f"{final}: cannot check the local copy ({reason(exc)})") from None
        for attempt in range(2):
            if attempt or bad_copy:
                with self._cv:
                    self._stats["refetches"] += 1
            if self._download(index, stop):
                return
        raise CacheIntegrityError(f"{self.store.where(info.file)}: checksum mismatch after two downloads (the object "
                                  f"in the store is not the one the manifest lists); run `tc verify {self.store.url}`")

    def _download(self, index: int, stop: threading.Event | None) -> bool:
        """Copy shard `index` into a partial file, hashing it; rename it into place when its size and sha256 are
        the manifest's. Whether they were."""
        info, final, expected = self.shards[index], self._local(index), self._sizes[index]
        part = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.part")
        block = self._throttle.block if self._throttle else BLOCK
        digest, got, start = hashlib.sha256(), 0, time.monotonic()
        try:
            with self.store.open_stream(info.file) as source:
                try:
                    fresh_file(part)
                    out = open(part, "wb")
                except OSError as exc:
                    raise UserError(f"{part}: cannot write the local copy ({reason(exc)})") from None
                with out:
                    while got <= expected:  # one byte more than the manifest's size is enough to know it is wrong
                        if stop is not None and stop.is_set():
                            raise _Stopped
                        try:
                            data = source.read(min(block, expected + 1 - got))
                        except (OSError, pa.ArrowException) as exc:
                            raise self.store.error(exc, info.file, "read it") from None
                        if not data:
                            break
                        got += len(data)
                        if got > expected:
                            break  # not written: the reservation is the manifest's size
                        digest.update(data)
                        try:
                            out.write(data)
                        except OSError as exc:
                            raise UserError(f"{part}: cannot write the local copy ({reason(exc)})") from None
                        if self._throttle:
                            self._throttle.take(len(data), stop)
            ok = got == expected and digest.hexdigest() == info.sha256
            if ok:
                try:
                    os.replace(part, final)
                except OSError as exc:
                    raise UserError(f"{final}: cannot write the local copy ({reason(exc)})") from None
        finally:
            part.unlink(missing_ok=True)
        with self._cv:
            self._stats["downloads"] += 1
            self._stats["bytes_downloaded"] += got
            if ok:
                self._download_s = _average(self._download_s, time.monotonic() - start)
        return ok


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (ours is alive: another cache of ours may be writing)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        pass  # someone else's (PermissionError), or no pid at all: leave it be
    return True
