"""What a run says: `log` for one status line (INFO), `warn` for a warning about the data or the settings (WARNING:
--quiet hides progress and status lines, not rows cut or skipped), `note` for a problem that costs time, not results
(WARNING too), `Progress` for a done/total, rate and ETA line.

Messages go through the standard `logging` module, to the logger "tc" and its children, one per module:
teacher_cache.encode.run logs to "tc.cache.encode.run", student.training.train to "tc.student.training.train",
finetune.* to "tc.finetune.*", pipeline.* to "tc.pipeline.*". The library installs no handler: a caller who
configures nothing sees the warnings (logging's last-resort handler prints WARNING and above on stderr) and not the
INFO lines, as with model2vec or sentence-transformers; `logging.basicConfig(level=logging.INFO)` shows those too, and
`logging.getLogger("tc").setLevel(logging.ERROR)` silences everything. The `tc` command installs its own stderr
handler (pipeline/logs.py)."""

from __future__ import annotations

import logging
import sys
import time

ROOT_LOGGER = "tc"
PACKAGE_LOGGERS = {"teacher_cache": "cache", "student": "student", "finetune": "finetune", "pipeline": "pipeline"}


def logger_for(module: str) -> logging.Logger:
    """The logger of a module: "tc.cache.encode.run" for teacher_cache.encode.run, "tc.student" for student; "tc" for
    any module outside the four packages."""
    package, _, rest = module.partition(".")
    if package not in PACKAGE_LOGGERS:
        return logging.getLogger(ROOT_LOGGER)
    return logging.getLogger(".".join(part for part in (ROOT_LOGGER, PACKAGE_LOGGERS[package], rest) if part))


def _caller_logger(depth: int = 2) -> logging.Logger:
    """The logger of the module `depth` frames up (2: the caller of the function calling this)."""
    return logger_for(sys._getframe(depth).f_globals.get("__name__", ""))


def log(message: str, quiet: bool = False) -> None:
    """One status line at INFO on the calling module's logger (the `tc` command prints it on stderr, --quiet hides
    it). `quiet` drops it whatever the logging settings: for a line a caller never wants, not for --quiet."""
    if not quiet:
        _caller_logger().info(message, stacklevel=2)


def warn(message: str) -> None:
    """'warning: MESSAGE' at WARNING on the calling module's logger: printed on stderr under --quiet too, and by
    default in a library caller's process: rows cut, skipped or repaired change what is cached."""
    _caller_logger().warning(f"warning: {message}", stacklevel=2)


def note(message: str) -> None:
    """'note: MESSAGE' at WARNING on the calling module's logger: something went wrong that costs time, not
    results (a file that could not be kept for next time); printed under --quiet too."""
    _caller_logger().warning(f"note: {message}", stacklevel=2)


def format_seconds(seconds: float) -> str:
    """Render a duration as 1h02m, 3m05s or 12s."""
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Rate and ETA reporter; updates at most every `interval` seconds.

    Shown unless `quiet`, and only while the calling module's logger lets INFO through (the `tc` command: unless
    --quiet; a library caller: once logging is configured at INFO), or when `always` (a caller asked for the bar,
    as Student.encode(show_progress_bar=True)). On a terminal it redraws one line on stderr; elsewhere (a pipe, a
    log file, a notebook) it writes a line each interval, at INFO through the logger (straight to stderr when
    `always`)."""

    def __init__(self, label: str, total: int | None, unit: str = "rows", quiet: bool = False,
                 start: int = 0, interval: float | None = None, always: bool = False):
        """Start counting `unit`s toward `total` (None when unknown), from `start` already done."""
        self.logger = _caller_logger()
        self.always = always
        self.quiet = quiet or not (always or self.logger.isEnabledFor(logging.INFO))
        self.label, self.total, self.unit = label, total, unit
        self.done, self.start_done = start, start
        self.counters: dict[str, float] = {}
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)

    def update(self, n: int, force: bool = False, **counters: float) -> None:
        """Add `n` done units (and named counters such as tokens=...); print when due."""
        self.done += n
        for key, value in counters.items():
            self.counters[key] = self.counters.get(key, 0) + value
        now = time.monotonic()
        if not self.quiet and (force or now - self.last >= self.interval):
            self.last = now
            self._print(now)

    def rate(self) -> float:
        """Units per second since this run started."""
        return (self.done - self.start_done) / max(time.monotonic() - self.t0, 1e-9)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        parts = [f"{self.label}: {self.done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts.append(f"{100 * self.done / self.total:.1f}%")
        parts.append(f"{rate:,.0f} {self.unit}/s")
        parts += [f"{v / elapsed:,.0f} {k}/s" for k, v in self.counters.items()]
        if self.total and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        line = "  ".join(parts)
        if self.tty or self.always:
            sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
            sys.stderr.flush()
        else:
            self.logger.info(line)

    def close(self) -> None:
        """Print the final line."""
        if not self.quiet:
            self._print(time.monotonic())
            if self.tty:
                sys.stderr.write("\n")
