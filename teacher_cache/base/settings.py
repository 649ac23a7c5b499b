"""One declaration per setting: a dataclass field made by `setting`, whose metadata carries the help text.

Every command's settings live in a dataclass (EncodeConfig, TrainConfig, FinetuneConfig, ...). `tc` builds the
command's options from those fields (pipeline/options.py): the flag is the field's name (`max_rows` ->
`--max-rows`) unless `flag` says otherwise, the default is the field's, the help is the field's. A field made
without `setting` is not a flag. Text that the CLI turns into a list or a choice goes through `parse`, one of the
parsers below, which name the flag in their one-line errors.

Every number's range is declared once, by the `check` of its field (`positive`, `fraction`, `count(1)`, `SEED`,
...): a settings dataclass that derives from `Checked` runs the checks when it is made (so a library caller of
`train(TrainConfig(lr=inf))` meets the same one-line error as `tc train-student --lr inf`), its `validate()` runs
them again for a value set later, and the CLI's `build` runs them for any settings class. A check returns what to
give instead (`give a finite number > 0`), or None when the value is fine; the error is `--flag VALUE: that`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

from teacher_cache.base.errors import UserError

Check = Callable[[Any], str | None]  # a value -> what to give instead, or None when it is fine

# The most any count may be: beyond it islice, numpy and torch fail with errors that name no flag, and no corpus,
# run or batch comes near it.
MAX_COUNT = 10**15
MAX_EPOCHS = 10_000  # a run is counted out epoch by epoch before it starts: 10^11 epochs took minutes in silence
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32/64-bit; -1 was an unexpected ValueError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            flag: str | None = None, parse: Callable[[str, str], Any] | None = None, required: bool = False,
            check: Check | None = None) -> Any:
    """A dataclass field that is also a `tc` option: its `help`, its `flag` (default --field-name), `parse`
    (text -> value, given the text and the flag) for values typed as text on the command line, `required`
    for an option the command line must give although the dataclass has a default, and `check` (one of the
    checks below) for the range of a number (None, "derive it", is never checked)."""
    metadata = {"help": help, "flag": flag, "parse": parse, "required": required, "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_setting(f: dataclasses.Field) -> bool:
    """True for a field declared with `setting`, i.e. one `tc` exposes as an option."""
    return "help" in f.metadata


def flag_of(f: dataclasses.Field) -> str:
    """The option a field is set by: its own `flag`, or --field-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def comma_list(text: str | None, flag: str = "") -> list[str] | None:
    """'mean, cls' -> ['mean', 'cls']; None stays None."""
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def int_list(text: str | None, flag: str) -> list[int] | None:
    """'3,5' -> [3, 5]; a one-line error naming the flag otherwise."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text}: give comma-separated whole numbers, e.g. 3,5") from None


def auto_bool(text: str | None, flag: str) -> bool | None:
    """'auto' (or None) -> None, 'yes'/'no' -> True/False; a one-line error naming the flag otherwise."""
    table = {"auto": None, "yes": True, "true": True, "no": False, "false": False}
    if text is None:
        return None
    if text.lower() not in table:
        raise UserError(f"{flag} {text}: choose auto, yes or no")
    return table[text.lower()]


# ---- range checks of number settings ---------------------------------------------------------------------------


def _is_real(value: Any) -> bool:
    """A real number (int or float, numpy's too), not a bool nor text."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
    """Check: a finite real number within [low, high] (each end open when said; None: unbounded)."""
    if low is not None and high is not None:
        want = f"give a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        want = f"give a finite number {'>' if low_open else '>='} {low:g}"
    else:
        want = "give a finite number"

    def check(value: Any) -> str | None:
        if not _is_real(value) or (not isinstance(value, numbers.Integral) and not math.isfinite(value)):
            return want  # (an int is finite, and math.isfinite overflows on 10**400)
        if low is not None and (value < low or (low_open and value == low)):
            return want
        if high is not None and (value > high or (high_open and value == high)):
            return want
        return None

    return check


def count(low: int, high: int = MAX_COUNT) -> Check:
    """Check: a whole number from `low` to `high`."""
    def check(value: Any) -> str | None:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            return "give a whole number"
        if value < low:
            return f"must be at least {low}"
        if value > high:
            return f"must be at most {high}"
        return None

    return check


def _seed(value: Any) -> str | None:
    """Check: a seed numpy and torch both take."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value <= SEED_MAX
    return None if ok else f"give a seed from 0 to {SEED_MAX}"


positive = number(0, low_open=True)  # learning rates, temperatures: 0, inf and nan train nothing or NaN weights
non_negative = number(0)  # weight decay, clipping (0: off)
fraction = number(0, 1)  # a share or weight in [0, 1] (KD alpha, the end of the decay)
probability = number(0, 1, high_open=True)  # dropout, warm-up share: 1 would drop or warm up everything
EPOCHS = count(1, MAX_EPOCHS)
SEED = _seed


def check_settings(obj: Any) -> None:
    """Run the `check` of every field of the settings dataclass `obj`; a one-line UserError naming the first bad
    flag and value."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is None or value is None:
            continue
        problem = check(value)
        if problem:
            raise UserError(f"{flag_of(f)} {value}: {problem}")


class Checked:
    """Base of a settings dataclass whose number fields are checked when it is made (and by dataclasses.replace)."""

    def __post_init__(self) -> None:
        """Check every field that declares a `check`."""
        check_settings(self)
