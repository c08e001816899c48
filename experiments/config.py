"""One typed configuration parser for every command (TOML files and KEY=VALUE overrides).

:func:`build` turns a mapping (a TOML table) into a frozen dataclass, checking each
value against the field's type hint, recursing into nested dataclasses, and
rejecting unknown keys at every level; :func:`check_call` does the same for the
keyword arguments of a factory (``models.load(name, **options)``). Every error is
a :class:`~experiments._errors.UserError` naming the dotted key
(``ensemble.members: expected an integer, got 'twenty'``). ``tfda cycle``,
``tfda lee --config`` and ``tfda l96 --set`` all parse through here.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from tfda.experiments._errors import UserError

T = TypeVar("T")


def load_toml(path: str | os.PathLike[str], option: str) -> dict[str, Any]:
    """The TOML file ``path`` as a dict; errors name ``option`` and the file."""
    p = Path(path)
    if not p.is_file():
        what = ("is a directory, not a file" if p.is_dir() else
                "not a regular file" if p.exists() else "not found")
        raise UserError(f"{option} {p}: {what}")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{option} {p}: not valid TOML: {exc}") from exc


def parse_override(item: str, option: str = "--set") -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a TOML value (``1.06``, ``true``, ``"x"``,
    ``[1, 2]``); anything TOML cannot read is kept as a string (``score=paired``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"{option} expects KEY=VALUE, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key, value


def _key(where: str, name: str) -> str:
    if where.startswith("-"):  # a command-line option: "--set radius"
        return f"{where} {name}"
    return f"{where}.{name}" if where else name


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        return "an array"
    if origin is dict or (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against (and converted to) the type hint ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = UserError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if tp is Any:
        raise UserError(f"{key}: cannot be set in a configuration")
    if origin in (Union, types.UnionType):
        for option in args:
            if option is type(None):
                continue
            try:
                return convert(option, value, key)
            except UserError:
                continue
        raise bad
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML reads inf and nan; no setting means them
                raise UserError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise bad
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise UserError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value,
                                                                                       strict=True)))
        item = args[0] if args else Any
        items = [v if item is Any else convert(item, v, f"{key}[{i}]")
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        item = args[1] if len(args) == 2 else Any
        return {k: v if item is Any else convert(item, v, _key(key, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"{key}: cannot be set in a configuration (a {_describe(tp)})")


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except (NameError, TypeError):  # unresolvable forward references: check names only
        return {}


def build(cls: type[T], data: Any, where: str = "", *,
          fixed: Mapping[str, Any] | None = None) -> T:
    """``cls(**data, **fixed)`` for a dataclass ``cls``, every key and value of ``data``
    checked first (``fixed``: values the program supplies, such as a distance function)."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where or 'configuration'}: expected a table, got {data!r}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    _reject_unknown(data, fields, where)
    hints = _hints(cls)
    values = {k: convert(hints.get(k, Any), v, _key(where, k)) if k in hints else v
              for k, v in data.items()}
    try:
        return cls(**values, **(fixed or {}))
    except (ValueError, TypeError) as exc:  # __post_init__ checks name their field
        raise UserError(f"{where + ': ' if where else ''}{exc}") from exc


def check_call(factory: Callable[..., Any], data: Any, where: str) -> dict[str, Any]:
    """Keyword arguments for ``factory`` from ``data``, checked against its signature."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a table, got {data!r}")
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    params = {n: p for n, p in inspect.signature(factory).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    _reject_unknown(data, set(params), where)
    hints = _hints(target)
    return {k: convert(hints[k], v, _key(where, k)) if k in hints else v
            for k, v in data.items()}


def _reject_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
        raise UserError(f"{_key(where, unknown[0])}: unknown key ({hint})")


def to_plain(value: Any) -> Any:
    """A dataclass (tree) as JSON-able dicts/lists, for config.json and hashes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def parse_device(text: str, option: str = "--device"):
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``: checked against this
    machine now, so a missing GPU fails before any work rather than after it."""
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise UserError(f"{option} {text!r}: not a device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {text}: CUDA is not available on this machine "
                            "(use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{option} {text}: only {torch.cuda.device_count()} CUDA "
                            "device(s) here")
    elif device.type != "cpu":
        raise UserError(f"{option} {text!r}: only cpu and cuda devices are supported")
    return device
