"""Where the bundled data lives (sample corpus, STS-B): inside the installed package, or data/ in a checkout.

The top-level data/ folder is the source; the wheel ships it as teacher_cache/_data (pyproject package-dir), so
`tc demo` and `tc eval` find it after a plain, non-editable `pip install`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # teacher_cache/
ROOTS = (PACKAGE / "_data", PACKAGE.parent / "data")  # installed wheel, then a checkout (or editable install)


def bundled_data(*parts: str) -> Path:
    """The bundled file or folder `parts` (e.g. "stsbenchmark", "sts-test.csv"); the checkout path if absent."""
    for root in ROOTS:
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
    return ROOTS[-1].joinpath(*parts)
