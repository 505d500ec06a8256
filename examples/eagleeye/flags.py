"""Command-line flags built from config dataclasses, so that no field is listed twice.

A field declared with :func:`option` carries its help (and, where the default spelling
does not fit, its flag, choices or metavar) in its metadata. :func:`add_fields` adds one
flag per field to an argparse parser, with the type and default read from the dataclass;
:func:`given` returns the values the command line set, as ``{field: value}`` (nested
dataclasses as nested dicts), for :func:`dataclasses.replace` on a base config.

How a field's type becomes a flag:

* ``int``, ``float``, ``str``: ``--name VALUE``;
* ``bool``: ``--name`` when the default is False, ``--no-name`` when it is True;
* ``X | None``: ``--name VALUE``, where ``none`` (and, with ``zero_is_none``, 0) means None;
* ``tuple[X, ...]``: ``--name V [V ...]``; ``tuple[tuple[X, ...], ...]``: ``--name a,b [c,d ...]``;
* a dataclass with :func:`option` fields (``nested=True``): its fields' flags, flattened;
* ``const=VALUE``: a switch that sets the field to VALUE (``--no-synthesize``).

Example:
    >>> from examples.eagleeye.config import TrainConfig
    >>> parser = argparse.ArgumentParser()
    >>> add_fields(parser, TrainConfig)
    >>> replace_nested(TrainConfig(), given(parser.parse_args(["--lr", "0.1"]), TrainConfig)).lr
    0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["option", "add_fields", "given", "replace_nested", "flag_fields"]

_MISSING = dataclasses.MISSING
_SEP = "."  # argparse dest of a nested field: "<field>.<subfield>"


def option(
    default: Any = _MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    flag: str | tuple[str, ...] | None = None,
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    const: Any = _MISSING,
    zero_is_none: bool = False,
    nested: bool = False,
    exclusive: str | None = None,
) -> Any:
    """A dataclass field with what its command-line flag needs.

    Args:
        default, factory: the field's default (or ``default_factory``).
        help: the flag's help text (one line).
        flag: the flag's spelling(s) instead of ``--field-name`` (the first is the main one).
        choices, metavar: passed to argparse.
        const: the flag is a switch that sets the field to this value.
        zero_is_none: for ``float | None``: 0 also means None.
        nested: the field is a dataclass whose own fields get flags (flattened).
        exclusive: fields naming the same group are mutually exclusive on the command line.
    """
    metadata = {
        "help": help,
        "flag": (flag,) if isinstance(flag, str) else flag,
        "choices": None if choices is None else tuple(choices),
        "metavar": metavar,
        "const": const,
        "zero_is_none": zero_is_none,
        "nested": nested,
        "exclusive": exclusive,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _scalar(kind: Any) -> Callable[[str], Any]:
    if kind in (int, float, str):
        return kind
    if typing.get_origin(kind) is tuple:  # tuple[X, ...] given as "a,b"
        inner = typing.get_args(kind)[0]
        return lambda text: tuple(inner(v) for v in text.split(","))
    raise TypeError(f"no command-line parser for {kind!r}; give the field a const= or nested=True")


def _parser(hint: Any, zero_is_none: bool) -> tuple[Callable[[str], Any], bool]:
    """(parse one argument, whether the flag takes one or more arguments)."""
    kind, none_ok = _optional(hint)
    many = typing.get_origin(kind) is tuple and typing.get_args(kind)[-1] is Ellipsis
    item = _scalar(typing.get_args(kind)[0] if many else kind)

    def parse(text: str) -> Any:
        if none_ok and text.lower() == "none":
            return None
        try:
            value = item(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {getattr(kind, '__name__', kind)}") from e
        return None if zero_is_none and value == 0 else value

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse, many


def flag_fields(cls: type) -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """``(dest, field, type hint)`` for every field of ``cls`` that gets a flag (nested ones flattened)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            out += [(f.name + _SEP + dest, sub, hint) for dest, sub, hint in flag_fields(hints[f.name])]
        else:
            out.append((f.name, f, hints[f.name]))
    return out


def add_fields(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    extra_flags: Mapping[str, tuple[str, ...]] | None = None,
    help_overrides: Mapping[str, str] | None = None,
) -> None:
    """One flag per field of ``cls`` (except ``skip``), defaults left to the dataclass.

    Args:
        parser: where the flags go (a parser or an argument group).
        cls: a dataclass whose fields are declared with :func:`option`.
        skip: dests (``"loss.box_loss"`` for nested fields) that get no flag here.
        extra_flags: more spellings of a dest's flag (aliases).
        help_overrides: another help text for a dest (what it means in this command).
    """
    skipped = set(skip)
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for dest, f, hint in flag_fields(cls):
        if dest in skipped:
            continue
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: declare it with flags.option(..., help=...)")
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:
            default = f.default_factory()
        else:
            default = None  # a required field: its default is the caller's
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": meta["help"]}
        if help_overrides and dest in help_overrides:
            kwargs["help"] = help_overrides[dest]
        if meta["const"] is not _MISSING:
            kwargs.update(action="store_const", const=meta["const"])
            names = meta["flag"] or (_kebab(f.name),)
        elif hint is bool:
            kwargs["action"] = "store_false" if default else "store_true"
            names = meta["flag"] or (("--no-" + f.name.replace("_", "-")) if default else _kebab(f.name),)
        else:
            parse, many = _parser(hint, meta["zero_is_none"])
            kwargs["type"] = parse
            if many:
                kwargs["nargs"] = "+"
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = meta["metavar"] or f.name.upper()
            names = meta["flag"] or (_kebab(f.name),)
            if "default" not in kwargs["help"]:
                shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
                kwargs["help"] += f" (default {shown})"
        names = tuple(names) + tuple((extra_flags or {}).get(dest, ()))
        target = parser
        if meta["exclusive"]:
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            target = exclusive[meta["exclusive"]]
        target.add_argument(*names, **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the command line set: ``{field: value}``, nested fields as dicts."""
    out: dict[str, Any] = {}
    values = vars(args)
    for dest, f, _ in flag_fields(cls):
        if dest not in values:
            continue
        value = values[dest]
        if isinstance(value, list):
            value = tuple(value)
        *path, name = dest.split(_SEP)
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[name] = value
    return out


def replace_nested(config: Any, changes: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` that applies nested dicts to nested dataclass fields."""
    flat = {
        k: replace_nested(getattr(config, k), v) if isinstance(v, Mapping) else v for k, v in changes.items()
    }
    return dataclasses.replace(config, **flat)
