"""Command-line flags generated from settings classes, so a setting is declared once.

A settings class is a dataclass (`finlora.config`) or a pydantic model (`ServeSettings`).
Each field becomes `--field_name` with its help text, default, type and choices; what the
user does not type stays out of the parsed namespace, so the settings class (or a recipe
under it) supplies the default. Field metadata (dataclass `metadata`, pydantic
`json_schema_extra`) may add:

- `type`: an argparse converter (e.g. `positive_int`) instead of the field's own type;
- `choices`: the values argparse accepts;
- `flag`: the flag's name when it is not the field's (`--model` for `model_dir`);
- `positional`: an `nargs` ("*" or argparse.REMAINDER): a positional argument;
- `off_flag` / `off_help`: a second flag setting a bool field to False (`--no_lora`);
- `switch`: a bool flag that takes no value (`--no_calibration`), safe before positional texts.

A field without a default is a required flag. Flags are grouped (`--help`) by the class that
declares them, titled by `titles` (e.g. the groups of `TrainConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

from finlora.config import coerce, field_types, parse_bool
from finlora.errors import FinloraError


@dataclass
class Flag:
    """One setting as a command-line argument."""

    name: str
    kind: type
    default: Any = None
    help: str = ""
    required: bool = False
    choices: tuple | None = None
    convert: Callable[[str], Any] | None = None
    flag: str | None = None
    positional: Any = None
    off_flag: str | None = None
    off_help: str = ""
    group: str | None = None
    switch: bool = False  # a bool flag that takes no value (safe before positional texts)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (batch sizes, threads, window sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _coercer(name: str, cls: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return coerce(name, text, cls)
        except FinloraError as exc:  # "name: cannot read ..." -> "argument --name: cannot ..."
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    convert.__name__ = name
    return convert


def dataclass_flags(cls: type, titles: dict[type, str] | None = None) -> list[Flag]:
    """The flags of a settings dataclass."""
    kinds = field_types(cls)
    declared = _declaring_classes(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        kind = kinds[f.name]
        default = f.default if f.default is not MISSING else None
        if f.default_factory is not MISSING:
            default = f.default_factory()
        out.append(
            Flag(
                name=f.name,
                kind=kind,
                default=default,
                help=meta.get("help", ""),
                required=f.default is MISSING and f.default_factory is MISSING,
                choices=tuple(meta["choices"]) if "choices" in meta else None,
                convert=meta.get("type") or (None if kind is bool else _coercer(f.name, cls)),
                flag=meta.get("flag"),
                positional=meta.get("positional"),
                off_flag=meta.get("off_flag"),
                off_help=meta.get("off_help", ""),
                switch=meta.get("switch", False),
                group=(titles or {}).get(declared[f.name]),
            )
        )
    return out


def pydantic_flags(model: type) -> list[Flag]:
    """The flags of a pydantic settings model; defaults stay the model's (and its env's)."""
    out = []
    for name, info in model.model_fields.items():
        hint = info.annotation
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        choices = None
        if typing.get_origin(hint) is typing.Literal:
            choices, kind = typing.get_args(hint), str
        elif args and typing.get_origin(hint) is not None:  # int | None
            kind = args[0]
        else:
            kind = hint
        kind = kind if kind in (int, float, bool) else str
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        out.append(
            Flag(
                name=name,
                kind=kind,
                default=None if info.is_required() else info.default,
                help=info.description or "",
                choices=choices,
                convert=kind if kind in (int, float) else None,
                flag=extra.get("flag"),
            )
        )
    return out


def settings_flags(cls: type, titles: dict[type, str] | None = None) -> list[Flag]:
    """The flags of a dataclass or a pydantic model."""
    if dataclasses.is_dataclass(cls):
        return dataclass_flags(cls, titles)
    return pydantic_flags(cls)


def add_flags(parser: argparse.ArgumentParser, flags: list[Flag]) -> None:
    """Add `flags` to `parser`; only flags the user types reach the namespace."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in flags:
        target: Any = parser
        if flag.group:
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(flag.group)
            target = groups[flag.group]
        _add_flag(target, flag)


def _help(flag: Flag) -> str:
    help_text = flag.help
    if flag.default is not None and flag.default != [] and "default" not in help_text:
        shown = ",".join(flag.default) if isinstance(flag.default, list) else flag.default
        help_text += f" (default: {shown})" if help_text else f"default: {shown}"
    # argparse %-formats help strings: a literal % (as in "95%") must be doubled
    return help_text.replace("%", "%%")


def _add_flag(parser: Any, flag: Flag) -> None:
    help_text = _help(flag)
    if flag.positional is not None:
        parser.add_argument(
            flag.name, nargs=flag.positional, default=argparse.SUPPRESS, help=help_text
        )
        return
    name = f"--{flag.flag or flag.name}"
    if flag.kind is bool and flag.switch:
        parser.add_argument(
            name,
            dest=flag.name,
            action="store_const",
            const=True,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    elif flag.kind is bool:
        parser.add_argument(
            name,
            dest=flag.name,
            nargs="?",
            const=True,
            type=parse_bool,
            metavar="BOOL",
            default=argparse.SUPPRESS,
            help=help_text,
        )
    else:
        options: dict[str, Any] = {"type": flag.convert or str}
        if flag.choices:
            options["choices"] = flag.choices
        else:
            options["metavar"] = (flag.flag or flag.name).upper()
        parser.add_argument(
            name,
            dest=flag.name,
            required=flag.required,
            default=argparse.SUPPRESS,
            help=help_text,
            **options,
        )
    if flag.off_flag:
        parser.add_argument(
            f"--{flag.off_flag}",
            dest=flag.name,
            action="store_const",
            const=False,
            default=argparse.SUPPRESS,
            help=flag.off_help,
        )


def _declaring_classes(cls: type) -> dict[str, type]:
    """Field name -> the class in `cls`'s hierarchy that declares it."""
    out: dict[str, type] = {}
    for klass in reversed(cls.__mro__):
        for name in inspect.get_annotations(klass):
            out[name] = klass
    return out
