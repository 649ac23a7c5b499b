"""A student named by store URL (s3://bucket/students/x, as `tc train-student --out URL` publishes one): downloaded
into the user cache dir first, so that a command reading a student folder (`tc probe --student`, `tc export
--model`) takes a URL too.

A training run uploads a student's config.json last, so a prefix without one holds no whole student and is refused
in one line. The local copy is refreshed object by object on every use (a student is megabytes, not a cache),
under a local lock, and objects no longer in the store are dropped from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from student.config import CONFIG_NAME
from teacher_cache.base.atomic import atomic_path
from teacher_cache.base.errors import UserError
from teacher_cache.base.lock import LOCK_NAME, FolderLock
from teacher_cache.base.safe_paths import name_problem, remove_file
from teacher_cache.base.user_dirs import user_cache_dir
from teacher_cache.storage import Store, is_url

SKIPPED = ("checkpoint",)  # a training checkpoint is not part of the student (an unfinished run's)


def downloaded_dir(url: str) -> Path:
    """The local folder a remote student at `url` is downloaded into."""
    return user_cache_dir() / "students" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def student_folder(location: str | Path, option: str = "--model") -> Path:
    """`location` as a local student folder: a path as given; a store URL's student downloaded first (one line
    naming `option` and the URL when the prefix holds none)."""
    text = str(location)
    if not is_url(text):
        return Path(location)
    store = Store.open(text)
    if store.is_local:  # file:///path
        return Path(store.root)
    if not store.exists(CONFIG_NAME):
        raise UserError(f"{option} {text}: no student there (no {CONFIG_NAME}, which a training run uploads last, "
                        "once the student is whole)")
    names = [n for n in store.list() if not name_problem(n) and n.split("/")[0] not in SKIPPED]
    folder = downloaded_dir(store.url)
    with FolderLock(folder, "tc (student download)", option):
        for path in sorted(folder.rglob("*")):  # what the store no longer holds would mix two students
            rel = path.relative_to(folder).as_posix()
            if path.name != LOCK_NAME and (path.is_file() or path.is_symlink()) and rel not in names:
                remove_file(path)
        for name in names:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                tmp.write_bytes(store.read_bytes(name))
    return folder
