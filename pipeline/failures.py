"""The CLI's last line of defence: any error becomes one line on stderr (and the traceback goes to a file)."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer

from teacher_cache.errors import UserError

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
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return f"error: {exc.filename}: {reason}"


def traceback_file(text: str) -> Path | None:
    """Write a traceback under $TC_LOG_DIR (default: the temp folder); its path, or None when that fails too."""
    folder = Path(os.environ.get("TC_LOG_DIR") or tempfile.gettempdir())
    path = folder / f"tc-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"tc {' '.join(sys.argv[1:])}\n\n{text}")
    except OSError:
        return None
    return path


def internal_error(exc: BaseException) -> int:
    """Report an unexpected exception in one line naming where its full traceback went; return exit code 1."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if os.environ.get("TC_DEBUG", "") not in ("", "0"):
        sys.stderr.write(text)
    path = traceback_file(text)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    where = f"full traceback in {path}" if path else "the traceback could not be written to a file"
    print(f"error: unexpected {type(exc).__name__}{': ' + first if first else ''} ({where}; "
          "TC_DEBUG=1 prints it)", file=sys.stderr, flush=True)
    return 1


def check_device(name: str) -> None:
    """Refuse a --device that is not cpu/cuda, or cuda where there is none, in one line."""
    from student.runtime import resolve_device

    resolve_device(name)


def check_positive(value: int | None, flag: str) -> None:
    """Refuse a count flag below 1 (e.g. --batch-size 0) in one line."""
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: must be at least 1")


def check_out_file(out: Path | None) -> None:
    """Refuse an --out file whose folder does not exist, or that is a folder, in one line."""
    if out is None:
        return
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
