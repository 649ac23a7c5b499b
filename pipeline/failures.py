"""The CLI's last line of defence: any error becomes one line on stderr (and the traceback goes to a file)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer

from teacher_cache.base.errors import UserError, printable, reason

try:  # typer >= 0.20 vendors click; its exceptions are not click's (and it has no Exit or Abort)
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc


def _classes(*candidates) -> tuple[type, ...]:
    """The exception classes among `candidates` that exist in the installed typer/click (None skipped)."""
    return tuple({c for c in candidates if isinstance(c, type) and issubclass(c, BaseException)})


# Looked up by name: each typer/click release moves or drops some of them.
EXIT = _classes(getattr(typer, "Exit", None), getattr(click_exc, "Exit", None))
ABORT = _classes(getattr(typer, "Abort", None), getattr(click_exc, "Abort", None))
USAGE = _classes(getattr(click_exc, "UsageError", None))
NO_ARGS = _classes(getattr(click_exc, "NoArgsIsHelpError", None))
CLICK = _classes(getattr(click_exc, "ClickException", None))


def os_error_line(exc: OSError) -> str:
    """'error: FILE: reason' for an OSError that names its file (a full disk, a permission, a missing folder)."""
    return printable(f"error: {exc.filename}: {reason(exc)}")


def traceback_file(text: str) -> Path | None:
    """Write a traceback under $TC_LOG_DIR (default: the temp folder); its path, or None when that fails too."""
    folder = Path(os.environ.get("TC_LOG_DIR") or tempfile.gettempdir())
    path = folder / f"tc-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # printable: an argument or a message may hold a file name's undecodable bytes, which UTF-8 cannot write.
        # The temp folder is shared and the name guessable: create the file afresh, never through a planted link.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(printable(f"tc {' '.join(sys.argv[1:])}\n\n{text}"))
    except (OSError, ValueError):  # the last line of defence must not fail itself
        return None
    return path


def internal_error(exc: BaseException) -> int:
    """Report an unexpected exception in one line naming where its full traceback went; return exit code 1."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if os.environ.get("TC_DEBUG", "") not in ("", "0"):
        sys.stderr.write(printable(text))
    path = traceback_file(text)
    first = printable((str(exc).strip().splitlines() or [""])[0][:300])
    where = f"full traceback in {path}" if path else "the traceback could not be written to a file"
    print(f"error: unexpected {type(exc).__name__}{': ' + first if first else ''} ({where}; "
          "TC_DEBUG=1 prints it)", file=sys.stderr, flush=True)
    return 1


def check_device(name: str) -> None:
    """Refuse a --device that is not cpu/cuda, or cuda where there is none, in one line."""
    from student.training.runtime import resolve_device

    resolve_device(name)


def check_positive(value: int | None, flag: str) -> None:
    """Refuse a count flag below 1 (e.g. --batch-size 0) in one line."""
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: must be at least 1")


def check_out_file(out: Path | None, input_file: Path | None = None) -> None:
    """Refuse an --out file whose folder does not exist, that is a folder, or that is the --input file (another
    name, a link) it would be written over, in one line."""
    if out is None:
        return
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    if input_file is not None and out.exists() and input_file.exists() and os.path.samefile(out, input_file):
        raise UserError(f"--out {out}: is the --input file; write the predictions to another file")
