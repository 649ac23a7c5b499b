"""`tc` options built from the settings dataclasses, so that each setting is declared once.

A command takes its own few parameters (typer style) and `**settings`; `@options_from(Config, ...)` adds one option
per field of each dataclass that was declared with `teacher_cache.base.settings.setting`: flag, type, default and help
come from the field. `build(Config, settings)` then makes the dataclass from what was given (an option left out is
None, which leaves the field's default) and checks each number's declared range. Fields listed in `unset` get no
default on the command line either (a recipe fills them; their help says so).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pipeline.logs import set_quiet
from teacher_cache.base.settings import Checked, check_settings, flag_of, is_setting

SCALARS = (str, int, float, bool, Path)


def _plain_type(hint: Any) -> Any:
    """int | None -> int; list[str] | None -> list[str]; str -> str."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _option(f: dataclasses.Field, hint: Any, unset: dict[str, str]) -> inspect.Parameter:
    """The typer parameter of one setting."""
    meta = f.metadata
    cli_type = str if meta.get("parse") else _plain_type(hint)
    text = meta["help"] + (f" Default: {unset[f.name]}." if f.name in unset else "")
    decls = [meta["flag"]] if meta.get("flag") else []
    if meta.get("required"):
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                 annotation=Annotated[cli_type, typer.Option(*decls, help=text)])
    shown = f.name not in unset and isinstance(f.default, SCALARS) and not meta.get("parse")
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default if shown else None,
                             annotation=Annotated[Optional[cli_type], typer.Option(*decls, help=text)])  # noqa: UP045


def options_from(*classes: type, unset: dict[str, str] | None = None, skip: tuple[str, ...] = ()):
    """Decorate a command `fn(own..., **settings)`: add an option for every setting of `classes` (after fn's own
    parameters, skipping those fn declares itself and `skip`); fn receives them parsed, in `settings`."""
    unset = unset or {}

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in own} | set(skip)
        added: list[inspect.Parameter] = []
        parsers: dict[str, tuple] = {}
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if is_setting(f) and f.name not in taken:
                    taken.add(f.name)
                    added.append(_option(f, hints[f.name], unset))
                    if f.metadata.get("parse"):
                        parsers[f.name] = (f.metadata["parse"], flag_of(f))

        @functools.wraps(fn)
        def command(**kwargs):
            settings = {p.name: kwargs.pop(p.name) for p in added}
            if settings.get("quiet"):  # every command's --quiet, in one place: status and progress lines off
                set_quiet()
            for name, (parse, flag) in parsers.items():
                if settings[name] is not None:
                    settings[name] = parse(settings[name], flag)
            return fn(**kwargs, **settings)

        parameters = own + added
        command.__signature__ = signature.replace(parameters=parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def build(cls: type, settings: dict[str, Any], **fixed: Any):
    """`cls` made from the given settings (None: the field's default), with `fixed` values on top; every field's
    declared range checked (one line naming the flag) before the command does anything."""
    names = {f.name for f in dataclasses.fields(cls)}
    made = cls(**{**{k: v for k, v in settings.items() if k in names and v is not None}, **fixed})
    if not isinstance(made, Checked):  # a Checked class has checked itself on the way in
        check_settings(made)
    return made


def given(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of `cls` that were given on the command line (not None)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in settings.items() if k in names and v is not None}
