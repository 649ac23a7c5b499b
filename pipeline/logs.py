"""The `tc` command's logging: while main() runs, a handler on the "tc" logger prints each message as is
("%(message)s") on stderr at INFO; a command's --quiet raises it to WARNING (data warnings still show). The library
itself installs no handler (teacher_cache/base/progress.py)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from teacher_cache.base.progress import ROOT_LOGGER


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a message is emitted (pytest's capsys swaps it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # as logging's own last-resort handler: no stream kept

    @property
    def stream(self):
        return sys.stderr


_handler: StderrHandler | None = None


@contextlib.contextmanager
def cli_logging() -> Iterator[None]:
    """Print the "tc" messages on stderr while the block runs, then leave the logger as it was (one handler however
    many times main() runs in one process, as the tests do)."""
    global _handler
    logger = logging.getLogger(ROOT_LOGGER)
    before, outer = (logger.level, logger.propagate), _handler
    if outer is not None:  # main() inside main(): the outer run's handler serves
        yield
        return
    _handler = StderrHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a handler the caller put on the root logger would print every line twice
    try:
        yield
    finally:
        logger.removeHandler(_handler)
        _handler = None
        logger.setLevel(before[0])
        logger.propagate = before[1]


def set_quiet() -> None:
    """--quiet: from here on the command prints warnings and errors, not status or progress lines."""
    logger = logging.getLogger(ROOT_LOGGER)
    if _handler is not None:  # outside main() (a command function called directly) the caller's logging holds
        logger.setLevel(logging.WARNING)
