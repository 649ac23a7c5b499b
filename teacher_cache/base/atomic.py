"""Atomic writes: a temporary file beside the target, fsynced, then renamed over it, so readers see the old file or
the whole new one and a failure (a full disk, Ctrl-C) leaves no partial file. Every file the project writes that
someone may read back (shards, manifests, checkpoints, weights, metrics) goes through `atomic_path`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from teacher_cache.base.errors import UserError, reason


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh_file(path: Path) -> None:
    """Create `path` as a new empty regular file of ours: whatever was there (a leftover, or a link planted to make
    us write elsewhere) is unlinked first, and O_EXCL | O_NOFOLLOW refuse anything that appears in between."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        path.unlink()  # a symlink: removes the link, never its target
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield `<path>.tmp` to write; when the block ends it is fsynced and renamed onto `path`.

    The temporary file is made afresh (see `fresh_file`), so the caller writes to a regular file of ours even when
    someone planted a link named `<path>.tmp`; the rename replaces a link at `path` itself rather than following it.

    Any exception (or Ctrl-C) inside the block or while renaming removes the temporary file and leaves `path` as
    it was; the exception propagates unchanged, for the caller to word.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fresh_file(tmp)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically; a failure is one UserError line and the previous file is kept."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({reason(exc)}); the previous version is kept") from None
