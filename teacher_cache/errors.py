"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback."""


class CacheError(Exception):
    """A problem the user can fix (bad input, bad flag, mismatched cache); printed as one line."""


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
