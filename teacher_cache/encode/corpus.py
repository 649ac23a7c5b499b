"""Corpus reading: text files (one sentence per line, optionally gzipped) or tables read lazily with polars."""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from teacher_cache.base.bundled import bundled_data
from teacher_cache.base.errors import CorpusError, first_line, printable, reason
from teacher_cache.storage import is_url

TEXT_SUFFIXES = (".txt", ".txt.gz", ".text", ".tsv.gz")
TABLE_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".parquet", ".csv", ".csv.gz", ".tsv")
BAD_UTF8_MODES = ("replace", "skip", "error")
DEFAULT_CORPUS = bundled_data("sample_corpus.txt")


@dataclass
class CorpusStats:
    """What the reader dropped or repaired, reported at the end of an encode."""

    blank_lines: int = 0
    bad_utf8_lines: list[str] = field(default_factory=list)  # "file:line" of each, first 20 kept
    bad_utf8_count: int = 0
    truncated_lines: int = 0
    missing_text: int = 0  # table rows whose text column is null or absent (a JSONL line without the key)
    ragged_rows: list[str] = field(default_factory=list)  # "file:line" of CSV rows with another field count
    ragged_count: int = 0


def resolve_corpus(specs: list[str], text_column: str | None = None) -> list[Path]:
    """Expand files, globs and store URLs (s3://bucket/corpus/*.txt.gz) into an ordered list of readable local
    corpus files, or raise a one-line error."""
    files: list[Path] = []
    for spec in specs:
        if is_url(spec):  # copied into the user cache once (encode/remote_corpus.py)
            from teacher_cache.encode.remote_corpus import fetch_remote_corpus

            files.extend(fetch_remote_corpus(spec))
            continue
        if any(ch in spec for ch in "*?["):
            matched = sorted(glob.glob(spec, recursive=True))
            if not matched:
                raise CorpusError(f"--corpus {spec}: the glob matches no file")
            files.extend(Path(m) for m in matched if _regular_file(Path(m), f"--corpus {spec}: {m}", folder_ok=True))
            continue
        path = Path(spec)
        if not path.exists():
            raise CorpusError(f"--corpus {spec}: no such file")
        if path.is_dir():
            raise CorpusError(f"--corpus {spec}: is a directory; pass files or a glob such as '{spec}/*.txt'")
        _regular_file(path, f"--corpus {spec}")
        files.append(path)
    if not files:
        raise CorpusError("--corpus: no input file given")
    for path in files:
        if not is_utf8_name(path):  # the manifest, the logs and the fingerprint record it as UTF-8 text
            raise CorpusError(f"--corpus {printable(str(path))}: the file name is not valid UTF-8; rename it")
        if is_table(path) and not text_column:
            raise CorpusError(f"{path}: a {table_kind(path)} corpus needs --text-column NAME")
    return files


def _regular_file(path: Path, where: str, folder_ok: bool = False) -> bool:
    """True for a regular file, False for a folder when `folder_ok`, else a one-line error naming `where`.

    Told by stat, never by opening: opening a FIFO waits for a writer, forever.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CorpusError(f"{where}: cannot read ({reason(exc)})") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return stat.S_ISREG(mode)
    kind = ("a directory" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
            "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a plain file")
    raise CorpusError(f"{where}: is {kind}, not a regular file; the corpus is read more than once (fingerprint, "
                      "row count, encode), so save it to a file first")


def is_utf8_name(path: Path) -> bool:
    """False for a path holding bytes that are not UTF-8 (Python keeps them as surrogate escapes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_table(path: Path) -> bool:
    """True for files read through polars with a text column (jsonl, parquet, csv)."""
    return path.name.lower().endswith(TABLE_SUFFIXES)


def table_kind(path: Path) -> str:
    """'parquet', 'jsonl' or 'csv' for a table file."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
        return "jsonl"
    return "csv"


def iter_corpus(files: list[Path], text_column: str | None = None, bad_utf8: str = "replace",
                max_chars: int = 100_000, stats: CorpusStats | None = None) -> Iterator[str]:
    """Yield every non-blank sentence of the corpus in order, streaming (never the whole corpus in memory)."""
    if bad_utf8 not in BAD_UTF8_MODES:
        raise CorpusError(f"--bad-utf8 {bad_utf8!r}: choose one of {', '.join(BAD_UTF8_MODES)}")
    stats = stats if stats is not None else CorpusStats()
    for path in files:
        rows = _iter_table(path, text_column, stats) if is_table(path) else _iter_lines(path, bad_utf8, stats)
        for text in rows:
            if text is None:
                stats.missing_text += 1
                continue
            text = text.strip()
            if not text:
                stats.blank_lines += 1
                continue
            if len(text) > max_chars:
                # A 5 MB "sentence" is a broken line; tokenising it whole would only waste memory.
                stats.truncated_lines += 1
                text = text[:max_chars]
            yield text


def _iter_lines(path: Path, bad_utf8: str, stats: CorpusStats) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        fh = opener(path, "rb")
        with fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    where = f"{path}:{lineno}"
                    if bad_utf8 == "error":
                        raise CorpusError(f"{where}: invalid UTF-8 at byte {exc.start} "
                                          "(use --bad-utf8 replace or skip)") from None
                    stats.bad_utf8_count += 1
                    if len(stats.bad_utf8_lines) < 20:
                        stats.bad_utf8_lines.append(where)
                    if bad_utf8 == "replace":
                        yield raw.decode("utf-8", errors="replace")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorpusError(f"{path}: not a readable gzip file ({exc})") from None
    except PermissionError:
        raise CorpusError(f"{path}: permission denied") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({reason(exc)})") from None


def _table_error(path: Path, kind: str, exc: Exception, during: str) -> CorpusError:
    """A one-line error for an unreadable table; for JSONL, the file:line of the first line that is not JSON."""
    if kind == "jsonl":
        located = first_bad_json_line(path)
        if located:
            return CorpusError(located)
    return CorpusError(f"{path}: {during} ({first_line(exc)})")


def first_bad_json_line(path: Path) -> str | None:
    """'file:line: not a JSON object (...)' for the first line of a JSONL file that does not parse, else None."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                    return f"{path}:{lineno}: not valid JSON ({detail})"
                if not isinstance(value, dict):
                    return f"{path}:{lineno}: not a JSON object (a {type(value).__name__})"
    except (OSError, EOFError, zlib.error):
        return None
    return None


def ragged_csv_rows(path: Path, separator: str, stats: CorpusStats) -> None:
    """Count CSV rows whose field count differs from the header's (polars reads them silently), with file:line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""),
                                delimiter=separator, quotechar='"')
            width, line = None, 1
            for row in reader:
                if width is None:
                    width = len(row)
                elif row and len(row) != width:
                    stats.ragged_count += 1
                    if len(stats.ragged_rows) < 20:
                        stats.ragged_rows.append(f"{path}:{line} ({len(row)} fields, header {width})")
                line = reader.line_num + 1
    except (OSError, EOFError, zlib.error, csv.Error):
        return  # the polars reader reports an unreadable file in one line


def _iter_table(path: Path, text_column: str | None, stats: CorpusStats | None = None,
                batch_rows: int = 50_000) -> Iterator[str | None]:
    import polars as pl

    kind = table_kind(path)
    try:
        if kind == "parquet":
            lazy = pl.scan_parquet(path)
        elif kind == "jsonl":
            lazy = pl.scan_ndjson(path)
        else:
            sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
            lazy = pl.scan_csv(path, separator=sep, quote_char='"', infer_schema=False)
        schema = lazy.collect_schema()
    except Exception as exc:  # polars raises many types for unreadable files
        raise _table_error(path, kind, exc, f"cannot read as {kind}") from None
    names = schema.names()
    if text_column not in names:
        raise CorpusError(f"{path}: --text-column {text_column!r} not found; columns are {names}")
    if schema[text_column] not in (pl.String, pl.Categorical, pl.Enum, pl.Null):
        # numbers, lists or structs would be cached as their printed form ("1", "[1, 2]") without a word
        raise CorpusError(f"{path}: --text-column {text_column!r} holds {schema[text_column]} values, not text; "
                          "name a text column (or cast this one to strings first)")
    if kind == "csv" and stats is not None:
        ragged_csv_rows(path, sep, stats)
    column = lazy.select(pl.col(text_column).cast(pl.String))
    try:
        for frame in column.collect_batches(chunk_size=batch_rows):
            yield from frame.get_column(text_column).to_list()
    except Exception as exc:
        raise _table_error(path, kind, exc, "error while reading") from None
