"""An output named by store URL (s3://bucket/prefix) rather than a folder, the pieces every such --out shares:
`tc train-student --out` (student/training/student_out.py), `tc export --out` (student/export/run.py) and `tc probe
--report` (pipeline/probe.py).

Every file is written into a local *staging* folder first (user cache dir / a kind / a hash of the URL), exactly as
into a local --out, then *published* object by object (Store.put is atomic per object), the object a loader reads
first last, so that a reader of the store never sees a half output. The lock is local (on the staging folder):
pyarrow sends no S3 conditional write, so two machines writing into one prefix are not stopped. A prefix holding
objects is refused in one line naming the URL, unless --force, which removes only the command's own names.

(teacher_cache.cache_writer keeps its own staging folder, user cache dir / staging: a cache is resumed from it.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from teacher_cache.base.errors import UserError
from teacher_cache.base.lock import LOCK_NAME, FolderLock
from teacher_cache.base.safe_paths import name_problem, remove_tree
from teacher_cache.base.user_dirs import user_cache_dir
from teacher_cache.storage import Store, is_url


def staging_dir(kind: str, url: str) -> Path:
    """The local folder (user cache dir / `kind` / a hash of the URL) where an output at `url` is written before
    it is uploaded."""
    return user_cache_dir() / kind / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def url_overlap(out: str, other: str) -> bool:
    """Whether two store URLs are one prefix or one lies inside the other (compared as written, '/' trimmed)."""
    a, b = out.rstrip("/") + "/", other.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def local_folder(location: str | Path) -> Path:
    """A local output as a folder: a plain path as given, a file:// URL as the path it names."""
    text = str(location)
    return Path(Store.open(text).root) if is_url(text) else Path(location)


def publish_order(names: Iterable[str], last: Sequence[str]) -> list[str]:
    """`names` in upload order: sorted, but the names in `last` at the end, in the order `last` gives them."""
    rank = {name: i + 1 for i, name in enumerate(last)}
    return sorted(names, key=lambda n: (rank.get(n, 0), n))


@dataclass(frozen=True)
class RemoteOut:
    """An output at a store URL: `location` as the user wrote it, the `flag` that named it (--out, --report), its
    `store`, and the local staging `folder` its files are written into first."""

    location: str
    flag: str
    store: Store
    folder: Path

    @classmethod
    def open(cls, location: str | Path, flag: str, kind: str) -> RemoteOut | None:
        """The output at `location` when it is in an object store; None for a local folder (a path, or file://:
        see `local_folder`). `kind` names the staging folders of one command (e.g. 'staging-exports')."""
        text = str(location)
        if not is_url(text):
            return None
        store = Store.open(text)  # an unknown scheme: one line naming the URL
        if store.is_local:
            return None
        return cls(text, flag, store, staging_dir(kind, store.url))

    def where(self, name: str = "") -> str:
        """The URL, or that of a name in it, for messages."""
        return self.store.where(name)

    def error(self, words: str) -> UserError:
        """One line naming the flag and the URL."""
        return UserError(f"{self.flag} {self.location}: {words}")

    def names(self) -> list[str]:
        """The objects under the URL, sorted (names a store could not hold as files left out)."""
        return [n for n in self.store.list() if not name_problem(n)]

    def not_empty(self, present: Sequence[str], removes: str) -> UserError:
        """The one-line refusal of a prefix that holds `present` without --force (which removes only `removes`)."""
        tops = sorted({n.split("/")[0] for n in present})
        shown = ", ".join(tops[:3]) + (", ..." if len(tops) > 3 else "")
        return self.error(f"not empty (holds {shown}); choose an empty prefix or pass --force (which removes only "
                          f"{removes})")

    @contextmanager
    def hold(self, command: str) -> Iterator[FolderLock]:
        """Lock the staging folder (created if missing) for one run: a second writer on this machine is refused in
        one line naming the first."""
        with FolderLock(self.folder, command, f"{self.flag} {self.location}: staging folder") as lock:
            yield lock

    def staged_files(self) -> list[str]:
        """Relative POSIX names of the plain files in the staging folder (links and the lock file left out)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                      if p.is_file() and not p.is_symlink() and p.name != LOCK_NAME)

    def publish(self, names: Iterable[str], last: Sequence[str] = ()) -> list[str]:
        """Upload the staged files `names`, those in `last` at the end in that order (the one a loader reads first
        goes last of all); return them in the order uploaded."""
        order = publish_order(names, last)
        for name in order:
            self.store.put(name, self.folder / name)
        return order

    def remove(self, names: Iterable[str], first: Sequence[str] = ()) -> None:
        """Remove the objects `names`, those in `first` first (the mark of a whole output, so that no reader finds
        one being taken apart)."""
        rank = {name: i for i, name in enumerate(first)}
        for name in sorted(names, key=lambda n: (rank.get(n, len(rank)), n)):
            self.store.remove(name)

    def empty_staging(self) -> None:
        """Remove everything in the staging folder but its lock: once published it is only a scratch copy."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name != LOCK_NAME:
                remove_tree(path)  # a folder whole, a file or a link alone
