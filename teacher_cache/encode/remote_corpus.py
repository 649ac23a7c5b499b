"""A corpus in an object store (--corpus s3://bucket/corpus/*.txt.gz): its files are copied once into the user
cache dir and read from there, so the reader, the fingerprint (every byte) and a resume see the very bytes the
store holds. A copy whose size still matches the object's is reused; anything else is fetched again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import CorpusError
from teacher_cache.base.progress import log
from teacher_cache.base.user_dirs import user_cache_dir
from teacher_cache.storage import Store

GLOB_CHARS = "*?["
BLOCK = 8 << 20


def split_glob(url: str) -> tuple[str, str]:
    """'s3://b/corpus/*.txt' -> ('s3://b/corpus', '*.txt'); a URL with no wildcard -> (its folder, its name)."""
    cut = min((url.index(c) for c in GLOB_CHARS if c in url), default=len(url))
    folder_end = url.rfind("/", 0, cut)
    if folder_end < url.index("://") + 3:
        raise CorpusError(f"--corpus {url}: name a file or a glob inside a bucket (s3://bucket/path/*.txt)")
    return url[:folder_end], url[folder_end + 1:]


def fetch_remote_corpus(url: str) -> list[Path]:
    """The local copies of the corpus files a URL (or URL glob) names, in name order, fetched when missing."""
    base, pattern = split_glob(url)
    store = Store.open(base)
    names = store.list(pattern) if any(c in pattern for c in GLOB_CHARS) else (
        [pattern] if store.exists(pattern) else [])
    if not names:
        raise CorpusError(f"--corpus {url}: " + ("the glob matches no object" if any(c in pattern for c in GLOB_CHARS)
                                                 else "no such object"))
    folder = user_cache_dir() / "corpus" / hashlib.sha256(store.url.rstrip("/").encode()).hexdigest()[:20]
    copies = []
    for name in names:
        target = folder / name
        size = store.size(name)
        if not (target.is_file() and not target.is_symlink() and target.stat().st_size == size):
            target.parent.mkdir(parents=True, exist_ok=True)
            log(f"--corpus: fetching {store.where(name)} ({size / 1e6:,.1f} MB) into {target}")
            with atomic_path(target) as tmp, open(tmp, "wb") as out, store.open_stream(name) as source:
                for block in iter(lambda: source.read(BLOCK), b""):
                    out.write(block)
            if target.stat().st_size != size:
                target.unlink()
                raise CorpusError(f"--corpus {store.where(name)}: the download was cut short; rerun")
        copies.append(target)
    return copies
