"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback.

`UserError` is any problem the user can fix (a bad flag, a missing file, a folder in the way); `CacheError` and
its subclasses are the ones about a teacher cache (its corpus, its settings, its files on disk).

`reason` and `first_line` put an exception that caused one into a few words, the same way everywhere.
"""

import errno

NO_SPACE = "no space left on device"


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """What a library said, for a one-line error: the first line of the exception's message (its type's name when
    the message is empty), cut to `limit` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def reason(exc: BaseException) -> str:
    """Why an operation failed, in a few words: NO_SPACE for a full disk (whatever type the library raised it as:
    OSError, torch's RuntimeError, safetensors' own), else the OS's words ('Permission denied') or the message's
    first line, cut to 200 characters."""
    first = first_line(exc, limit=None)
    full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in first or "file write failed" in first
    return NO_SPACE if full else (getattr(exc, "strerror", None) or first)[:200]


def printable(text: str) -> str:
    """`text` safe to print or write as UTF-8: a byte that a file name could not decode (Python keeps it as a
    surrogate escape) shown as \\xff, instead of failing the print (or the error handler) with UnicodeEncodeError."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class UserError(Exception):
    """A problem the user can fix (bad input, bad flag, an --out in the way); printed as one line."""


class CacheError(UserError):
    """A problem with a teacher cache: unreadable, unfinished, corrupt, or made with other settings."""


class CorpusError(CacheError):
    """The corpus cannot be read as asked (missing file, bad encoding, empty)."""


class CacheMismatchError(CacheError):
    """An existing cache was made with other settings than the ones asked for."""


class CacheIntegrityError(CacheError):
    """A shard does not match what the manifest says about it."""


class Terminated(BaseException):
    """A SIGTERM handled like Ctrl-C (work saved first); the CLI exits with 143 (128 + SIGTERM).

    Not a KeyboardInterrupt, which typer turns into exit code 130 on its way out.
    """

    exit_code = 143
