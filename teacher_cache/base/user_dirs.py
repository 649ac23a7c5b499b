"""The user's cache folder: where tc keeps what outlives one run (token outputs per teacher, remote shards)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$TC_CACHE_DIR, else $XDG_CACHE_HOME/teacher-cache, else ~/.cache/teacher-cache."""
    if os.environ.get("TC_CACHE_DIR"):
        return Path(os.environ["TC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "teacher-cache"
