"""The rules of an output folder (`--out`), held once for every command that writes one:

- a file given as --out is refused; so is an --out that is, lies inside or holds one of the command's inputs;
- an --out that holds anything (a stale lock file aside) is refused unless --force;
- one writer at a time (base/lock.py FolderLock, taken by `hold`);
- --force clears only the command's own names (`clear_own`): files one by one, a link as a link (never its target),
  a folder of ours whole only when it is a real folder; the user's files stay;
- the old output is never destroyed before the new run is sure to start: the caller clears (or swaps) only once its
  checks are done, and a folder `replaced_whole` (tc export) is swapped for a finished one, never cleared first.

Imports nothing but teacher_cache.base: every layer may use it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from teacher_cache.base.errors import UserError
from teacher_cache.base.lock import LOCK_NAME, FolderLock
from teacher_cache.base.safe_paths import name_problem, remove_file, remove_tree

GLOB_CHARS = "*?["


def overlap(out: Path, other: Path) -> str | None:
    """How two folders overlap once resolved: 'equal', 'inside' (out lies in other), 'holds' (other lies in out), or
    None."""
    a, b = out.resolve(), other.resolve()
    if a == b:
        return "equal"
    if b in a.parents:
        return "inside"
    if a in b.parents:
        return "holds"
    return None


@dataclass
class OutFolder:
    """An output folder and its rules: not a file, not overlapping an input, not empty unless --force, one writer,
    --force clears only our own files."""

    path: Path
    command: str  # who holds the lock, e.g. 'tc train-student' (shown to a second writer)
    own: tuple[str, ...] = ()  # file names (or glob patterns, e.g. 'shard-*.arrow') this command writes
    own_dirs: tuple[str, ...] = ()  # folders this command writes whole (removed whole by --force)
    flag: str = "--out"  # the flag that names the folder in every error
    inputs: Mapping[str, Path] = field(default_factory=dict)  # what errors call an input ('cache', '--model') -> it
    # The run replaces the folder whole (tc export swaps a finished folder in): --force would delete whatever it
    # holds, so it may not be the current folder or one above it, and its errors say exactly how it overlaps.
    replaced_whole: bool = False

    def __post_init__(self) -> None:
        """Accept str paths too."""
        self.path = Path(self.path)
        self.inputs = {name: Path(p) for name, p in self.inputs.items()}

    def _error(self, words: str) -> UserError:
        return UserError(f"{self.flag} {self.path}: {words}")

    def present(self) -> list[str]:
        """The names the folder holds now, sorted (the lock file excluded: a killed run's is stale, a live one's is
        refused by `hold`); [] when it does not exist."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME)

    def refuse_unsafe(self) -> list[str]:
        """Refuse, before anything is written or removed, a folder that is a file or overlaps an input (and, when
        `replaced_whole`, the current folder or one above it); return what it holds now."""
        if self.path.exists() and not self.path.is_dir():
            raise self._error("is a file, not a folder")
        if self.replaced_whole:
            here, target = Path.cwd().resolve(), self.path.resolve()
            if target == here or target in here.parents:
                raise self._error("is the current folder or one above it; name a new folder, e.g. "
                                  f"{self.flag} exported/")
        for name, other in self.inputs.items():
            how = overlap(self.path, other) if other.exists() else None
            if how is None:
                continue
            if not self.replaced_whole:
                raise self._error(f"overlaps the {name} folder {other}; choose another folder")
            said = {"equal": f"is the {name} folder", "inside": f"is inside {name} {other}",
                    "holds": f"holds {name} {other}"}[how]
            raise self._error(f"{said}; name a new folder")
        return self.present()

    def not_empty(self, present: list[str]) -> UserError:
        """The one-line refusal of a folder that holds `present` (without --force)."""
        if self.replaced_whole:
            return self._error("exists and is not empty; pass --force to replace it")
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        return self._error(f"not empty (holds {shown}); choose an empty folder or pass --force")

    def check(self, force: bool, ignore: Iterable[str] = (),
              earlier: Callable[[list[str]], str | None] | None = None) -> list[str]:
        """Refuse an unsafe folder, and without --force one that holds anything but `ignore`; return what it holds.

        `earlier(present)` may say in its own words what the folder holds (e.g. 'holds an earlier training run;
        pass --resume ...'), instead of the plain 'not empty'; None keeps the plain refusal."""
        skip = set(ignore)
        present = [name for name in self.refuse_unsafe() if name not in skip]
        if present and not force:
            said = earlier(present) if earlier else None
            raise self._error(said) if said else self.not_empty(present)
        return present

    @contextmanager
    def hold(self) -> Iterator[FolderLock]:
        """Lock the folder for the run (created if missing): a second writer is refused in one line naming the first.

        The unsafe folders are refused first, so that a refused run never creates one."""
        self.refuse_unsafe()
        with FolderLock(self.path, self.command, self.flag) as lock:
            yield lock

    def is_own(self, rel: str) -> bool:
        """True when the relative name `rel` ('model.safetensors', 'tokenizer/vocab.txt') is this command's."""
        return rel.split("/")[0] in self.own_dirs or any(fnmatch.fnmatch(rel, pattern) for pattern in self.own)

    def others(self) -> list[str]:
        """Relative paths of the files (and links) in the folder that are not this command's: the user's, which
        --force keeps (names that could not be listed again, and the lock file, left out)."""
        if not self.path.is_dir():
            return []
        found = []
        for path in sorted(self.path.rglob("*")):
            rel = path.relative_to(self.path).as_posix()
            if (path.is_file() or path.is_symlink()) and path.name != LOCK_NAME and not self.is_own(rel) \
                    and not name_problem(rel):
                found.append(rel)
        return found

    def clear_own(self, also: Iterable[str] = ()) -> None:
        """Remove this command's own names (and the relative files `also`, checked by the caller to lie inside):
        files one by one and a link as a link (its target untouched); a folder of ours whole when it is a real
        folder, only the link when it is a symlink; everything else (the user's) stays."""
        for pattern in self.own:
            paths = self.path.glob(pattern) if any(c in pattern for c in GLOB_CHARS) else [self.path / pattern]
            for path in paths:
                remove_file(path)  # a folder in a file's place is not ours: left alone
        for rel in also:
            remove_file(self.path / rel)
        for name in self.own_dirs:
            remove_tree(self.path / name)
