"""Names read from a folder's own files (a cache's manifest.json, a student's config.json, a task.json) are data:
each must be a plain relative name that stays inside that folder, or the folder is refused in one line before
anything is read, written or removed. Also the two folder operations that must never follow a planted link.

Imports nothing but the standard library and teacher_cache.base.errors: every layer may use it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from teacher_cache.base.errors import CacheError, UserError

NAME_MAX = 255  # bytes per path part (Linux, macOS): a longer one is an OSError on every use, not a file
PATH_MAX = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")


def shown(value: object, limit: int = 160) -> str:
    """repr of a value from a file, cut to `limit` characters so an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def a_type(value: object) -> str:
    """'an int', 'a str', 'a list': the JSON value's type with its article, for error messages."""
    name = "null" if value is None else type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def name_problem(rel: object) -> str | None:
    """Why `rel` is not a plain relative POSIX file name (None when it is one)."""
    if not isinstance(rel, str):
        return f"{a_type(rel)}, not a file name"
    if not rel:
        return "an empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "a control character or NUL in the name"
    if "\\" in rel or _DRIVE.match(rel):
        return "a backslash or drive letter (names are relative POSIX paths)"
    if rel.startswith("/"):
        return "an absolute path"
    try:
        data = os.fsencode(rel)
    except UnicodeError:
        return "a name that cannot be encoded as a file name"
    parts = rel.split("/")
    if ".." in parts:
        return "a '..' part (outside the folder)"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' part"
    if len(data) > PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in parts):
        return "a name too long for a file system"
    return None


def check_name(rel: object, where: str, error: type[UserError] = CacheError) -> str:
    """`rel` if it is a plain relative name; else raise `error` naming `where` (e.g. 'x/manifest.json: files key')."""
    problem = name_problem(rel)
    if problem:
        raise error(f"{where} {shown(rel)}: {problem} (each name must be a plain relative name inside the folder)")
    return rel


def inside(folder: str | Path, rel: object, where: str, error: type[UserError] = CacheError) -> Path:
    """`folder / rel`, once `rel` is a plain relative name that also resolves inside `folder` (no link in it points
    out); else raise `error` naming `where` (the file that holds the name and its entry) and the name."""
    check_name(rel, where, error)
    folder = Path(folder)
    path = folder / rel
    try:
        base, target = folder.resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop: not a name inside the folder either
        raise error(f"{where} {shown(rel)}: cannot be resolved ({exc.__class__.__name__})") from None
    if target != base and base not in target.parents:
        raise error(f"{where} {shown(rel)}: a link in it leads outside {folder}; refusing to use it")
    return path


def remove_file(path: Path) -> None:
    """Remove one listed file: a link goes as a link (its target untouched); a folder in its place is left alone."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a folder tc made (a real one, whole), or only the link when `path` is a symlink: never follow it."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)  # rmtree itself unlinks the links inside, never their targets


def real_folder(path: Path) -> Path:
    """Make sure `path` is a real folder of its own before writing into it: a symlink there is removed (the link
    only) and a folder made in its place."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path
