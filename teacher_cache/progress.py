"""What a run says on stderr: `log` for one status line, `warn` for a warning about the data or the settings (never
silenced: --quiet hides progress, not rows cut or skipped), `Progress` for a done/total, rate and ETA line."""

from __future__ import annotations

import sys
import time


def log(message: str, quiet: bool = False) -> None:
    """One status line on stderr (flushed at once), unless quiet: how every command reports what it does."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """'warning: MESSAGE' on stderr, even under --quiet: rows cut, skipped or repaired change what is cached."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    """Render a duration as 1h02m, 3m05s or 12s."""
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Rate and ETA reporter; updates at most every `interval` seconds (a line each on a non-tty)."""

    def __init__(self, label: str, total: int | None, unit: str = "rows", quiet: bool = False,
                 start: int = 0, interval: float | None = None):
        """Start counting `unit`s toward `total` (None when unknown), from `start` already done."""
        self.label, self.total, self.unit, self.quiet = label, total, unit, quiet
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
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Print the final line."""
        if not self.quiet:
            self._print(time.monotonic())
            if self.tty:
                sys.stderr.write("\n")
