"""Reading ahead for `tc encode`: the corpus cut into shard-sized chunks, read and tokenised in a background thread
while the teacher runs on the chunk before, and a cheap row count for the progress line's ETA."""

from __future__ import annotations

import gzip
import itertools
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from teacher_cache.encode.corpus import is_table


def chunked(rows: Iterator[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of `size` rows (the last one shorter)."""
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def prefetch(chunks: Iterator[list[str]], tokenize, depth: int = 1) -> Iterator[tuple[list[str], list]]:
    """Read and tokenise the next chunk in a background thread while the teacher runs on this one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for chunk in chunks:
                item = (chunk, tokenize(chunk))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # re-raised in the consumer, which owns the error reporting
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="tc-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def count_rows(files: list[Path]) -> int | None:
    """Line/row count for the ETA (blank lines included); None where it is not cheap to know or not readable."""
    try:
        return _count_rows(files)
    except Exception:  # a corrupt file: the reader itself reports it, in one line, with its name
        return None


def _count_rows(files: list[Path]) -> int:
    total = 0
    for path in files:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            total += sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 22), b""))
        if is_table(path) and path.name.endswith((".csv", ".tsv", ".csv.gz")):
            total -= 1  # header
    return total
