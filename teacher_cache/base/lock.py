"""One writer per folder: an OS-level lock file (fcntl.flock) that names its holder.

The kernel releases a flock when its holder exits in any way (SIGKILL included), so a lock file left behind by a
crash is stale and simply taken over by the next run. The file is removed when the lock is released normally.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from teacher_cache.base.errors import CacheError, reason

LOCK_NAME = ".tc.lock"
# O_NOFOLLOW: a symlink planted at the lock path is refused by the OS instead of opened (and truncated) through
OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
# a refused lock is tried PROBE_TRIES times, PROBE_WAIT_S apart: a holder() probe's shared lock is over by then
PROBE_TRIES, PROBE_WAIT_S = 5, 0.02


class FolderLock:
    """An exclusive lock on a folder (created if missing) for one `command`; a second writer gets a CacheError."""

    def __init__(self, folder: str | Path, command: str, flag: str = "--out"):
        """Prepare to lock `folder` for `command` (e.g. 'tc encode'); `flag` names the folder in errors."""
        self.folder, self.command, self.flag = Path(folder), command, flag
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # folders this lock made, removed again on release when left empty

    def _make_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise CacheError(f"{self.flag} {self.folder}: exists and is not a folder")
        missing = [p for p in [self.folder, *self.folder.parents] if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"{self.flag} {self.folder}: cannot create folder ({reason(exc)})") from None
        self.created = missing  # deepest first

    def acquire(self) -> FolderLock:
        """Take the lock, or raise a one-line CacheError naming the process that holds it."""
        self._make_folder()
        replaced = False
        try:
            while True:
                try:
                    fd = os.open(self.path, OPEN_FLAGS, 0o644)
                except OSError as exc:
                    if exc.errno == errno.ELOOP and not replaced:  # a symlink: tc never makes one, so drop the link
                        replaced = self._unlink_planted()
                        continue
                    raise CacheError(f"{self.flag} {self.folder}: cannot write a lock file ({reason(exc)})") from None
                try:
                    locked = _lock_exclusive(fd)
                except OSError as exc:
                    os.close(fd)
                    raise CacheError(f"{self.flag} {self.folder}: cannot lock ({reason(exc)})") from None
                if not locked:
                    os.close(fd)
                    raise CacheError(f"{self.flag} {self.folder}: in use by {read_holder(self.path)}; wait for it "
                                     "to finish or choose another folder")
                if not _plain_file(fd):  # a hard link to someone's file, or not a file: never truncate it
                    os.close(fd)
                    if replaced:
                        raise CacheError(f"{self.flag} {self.folder}: {LOCK_NAME} keeps being replaced by a link; "
                                         "is someone else writing this folder?")
                    replaced = self._unlink_planted()
                    continue
                if _same_file(fd, self.path):  # not unlinked by a holder releasing between our open and flock
                    break
                os.close(fd)
            self.fd = fd
            info = (f"pid {os.getpid()} on {socket.gethostname()} ({self.command}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
            os.ftruncate(fd, 0)
            os.write(fd, (info + "\n").encode())
        except BaseException:
            self._remove_created()
            raise
        return self

    def _unlink_planted(self) -> bool:
        """Remove the name at the lock path (a link: the link itself, its target untouched); True once done."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise CacheError(f"{self.flag} {self.folder}: cannot replace {self.path}, a link tc did not make "
                             f"({reason(exc)}); remove it") from None
        return True

    def release(self) -> None:
        """Remove the lock file and release the lock (and the folder, if this lock created it and it is empty)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody else can hold this inode now
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []

    def __enter__(self) -> FolderLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass


def _lock_exclusive(fd: int, tries: int = PROBE_TRIES) -> bool:
    """Take the exclusive flock; False while another process holds it. A `holder()` probe holds a shared lock for
    microseconds, so a refusal is tried again a few times before it counts as a holder."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            if attempt + 1 < tries:
                time.sleep(PROBE_WAIT_S)
    return False


def _plain_file(fd: int) -> bool:
    """True when the open lock file is a regular file with no other name (not a hard link to another file)."""
    info = os.fstat(fd)
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def _same_file(fd: int, path: Path) -> bool:
    """True when `path` still names the file open as `fd`."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def read_holder(path: Path) -> str:
    """What the lock file says about its holder ('pid 123 on host (tc encode, since ...)')."""
    try:  # O_NOFOLLOW: never show the first line of a file a planted link points to
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process"


def holder(folder: str | Path) -> str | None:
    """Who holds the lock on `folder` right now, or None when nobody does (a stale lock file counts as free)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_holder(path)
    finally:
        os.close(fd)
    return None
