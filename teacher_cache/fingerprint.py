"""The corpus fingerprint a cache records: a hash of every byte of the corpus files, so any edit is seen.

Caches made before it read every byte hold an older, cheap fingerprint (names, sizes, first and last MiB, no prefix);
they are still recognised, resumed on that kind, and `tc verify` re-hashes their corpus the same way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from teacher_cache.base.errors import CorpusError, reason

FINGERPRINT_PREFIX = "v2:"  # a hash of every byte; the fingerprints of older caches have no prefix
LEGACY_FINGERPRINT_NOTE = ("its corpus fingerprint (made by an older version) sees only the names, sizes and first and "
                           "last MiB of the corpus files, so an edit in the middle goes unseen; `tc encode --force` "
                           "records one of every byte")


def corpus_fingerprint(files: list[Path], text_column: str | None = None) -> str:
    """'v2:' and a hash of every byte of every file (as stored: a .gz is hashed compressed), names, sizes, column."""
    digest = hashlib.sha256()  # with the CPU's SHA instructions ~1.5 GB/s, faster than blake2b here
    digest.update(f"v2:{text_column!r}".encode())
    for path in files:
        try:
            with open(path, "rb") as fh:
                digest.update(f"\0{path.name}:{os.fstat(fh.fileno()).st_size}\0".encode())
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise CorpusError(f"{path}: cannot read ({reason(exc)})") from None
    return FINGERPRINT_PREFIX + digest.hexdigest()[:32]


def is_legacy_fingerprint(fingerprint: str) -> bool:
    """True for the fingerprint of a cache made before fingerprints read every byte (32 hex digits, no prefix)."""
    return len(fingerprint) == 32 and all(c in "0123456789abcdef" for c in fingerprint)


def fingerprint_like(recorded: str | None, files: list[Path], text_column: str | None = None) -> str:
    """The fingerprint of `files` of the kind `recorded` is (an older cache's cheap one, else the full one)."""
    if recorded and is_legacy_fingerprint(recorded):
        return legacy_fingerprint(files, text_column)
    return corpus_fingerprint(files, text_column)


def corpus_still_matches(files: list[str], text_column: str | None, recorded: str) -> tuple[bool | None, str]:
    """Re-hash a cache's corpus files against `recorded`: (True|False|None, a line saying so).

    None when they are not there to re-hash (moved or deleted: not the cache's fault, so only a note).
    """
    paths = [Path(f) for f in files]
    gone = [p for p in paths if not p.is_file()]
    if gone or not paths:
        return None, f"corpus {gone[0] if gone else '(none recorded)'} is not there (moved or deleted): not re-hashed"
    names = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    if fingerprint_like(recorded, paths, text_column) != recorded:
        return False, (f"corpus {names}: changed since the cache was encoded (its fingerprint no longer matches); "
                       "the shards are intact, but resuming or growing the cache is refused")
    cheap = " (an older kind that sees only the first and last MiB of each file)" if is_legacy_fingerprint(
        recorded) else ""
    return True, f"corpus {names}: still matches the cache's fingerprint{cheap}"


def legacy_fingerprint(files: list[Path], text_column: str | None = None) -> str:
    """The fingerprint of older caches: names, sizes, and the first and last MiB of each file (kept to resume them)."""
    digest = hashlib.sha256()
    digest.update(repr(text_column).encode())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                digest.update(fh.read())
    return digest.hexdigest()[:32]
