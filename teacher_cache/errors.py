"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback.

`UserError` is any problem the user can fix (a bad flag, a missing file, a folder in the way); `CacheError` and
its subclasses are the ones about a teacher cache (its corpus, its settings, its files on disk).
"""


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
