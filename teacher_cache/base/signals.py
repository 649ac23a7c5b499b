"""SIGTERM handled as Ctrl-C: inside `sigterm_as_interrupt()` a SIGTERM raises `Terminated` in the main thread, so
the same `finally` / `except BaseException` blocks that clean up after a KeyboardInterrupt run, and the CLI exits
143 (128 + SIGTERM) with one line. Docker, Kubernetes and Slurm send SIGTERM before they kill.

(tc train-student defers the signal to its next checkpoint instead: student/training/runtime.py deferred_interrupt.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from teacher_cache.base.errors import Terminated


def raise_terminated(signum: int, frame) -> None:
    """SIGTERM handler: raise Terminated once; a second SIGTERM while cleaning up is ignored (SIGKILL still works)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup that Terminated starts finish
    raise Terminated


def take_sigterm() -> None:
    """(Re)install `raise_terminated` for SIGTERM in the main thread, after a library installed its own (ray.init)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block a SIGTERM raises Terminated (as Ctrl-C raises KeyboardInterrupt); the old handler is
    restored after. Outside the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        # None: the old handler was installed from C (Ray's); the default is the closest Python can restore
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
