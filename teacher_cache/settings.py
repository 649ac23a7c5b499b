"""One declaration per setting: a dataclass field made by `setting`, whose metadata carries the help text.

Every command's settings live in a dataclass (EncodeConfig, TrainConfig, FinetuneConfig, ...). `tc` builds the
command's options from those fields (pipeline/options.py): the flag is the field's name (`max_rows` ->
`--max-rows`) unless `flag` says otherwise, the default is the field's, the help is the field's. A field made
without `setting` is not a flag. Text that the CLI turns into a list or a choice goes through `parse`, one of the
parsers below, which name the flag in their one-line errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from teacher_cache.errors import UserError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            flag: str | None = None, parse: Callable[[str, str], Any] | None = None, required: bool = False) -> Any:
    """A dataclass field that is also a `tc` option: its `help`, its `flag` (default --field-name), `parse`
    (text -> value, given the text and the flag) for values typed as text on the command line, and `required`
    for an option the command line must give although the dataclass has a default."""
    metadata = {"help": help, "flag": flag, "parse": parse, "required": required}
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
