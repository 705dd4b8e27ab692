"""``KEY=VALUE`` options from the command line, converted by the type of the option they set.

``--set``, ``--train-set``, ``--model-opt`` and ``--data-opt`` take strings. Each value is
converted by the declared type of its target (a dataclass field such as ``TrainConfig.augment`` or
``JiTConfig.images_per_forward``, or a keyword argument of a method function), read from its
annotation:

=====================  ============================================================================
declared type          conversion
=====================  ============================================================================
``str``                kept as written: ``augment=none`` is the string ``"none"`` (an enum value)
``bool``               ``true/false/yes/no/1/0`` (any case), anything else is an error
``int``                ``int(value)``; ``float``: ``float(value)`` (``1e-3`` is a float)
``X | None``           ``none``/``null`` (any case) is ``None``, anything else is converted as ``X``
union of several       tried in order: None (for ``none``), bool, int, float, then str
``tuple[int, ...]``    comma-separated (``image_size=64,64``)
unknown target         a number if it reads as one, ``true``/``false`` as bools, else the string;
                       the target then rejects an unknown name with the names it accepts
=====================  ============================================================================

A value that fits none of its target's types is an error that names the option, the value and the
accepted type.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["convert", "option_types", "parse_options"]

_NONE = ("none", "null")
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


def option_types(target: Any) -> dict[str, Any]:
    """``{name: annotation}`` of a dataclass's fields or a function's keyword parameters."""
    if target is None:
        return {}
    if isinstance(target, Mapping):
        return dict(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - one unresolvable annotation (e.g. a TYPE_CHECKING import)
        hints = _hints_one_by_one(target)
    if dataclasses.is_dataclass(target):
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(target)}
    params = inspect.signature(target).parameters
    return {k: hints.get(k, Any) for k, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and k != "req"}


def _hints_one_by_one(target) -> dict[str, Any]:
    """Resolve each string annotation on its own; those that fail are left out (untyped)."""
    module = inspect.getmodule(target)
    env = dict(vars(module)) if module is not None else {}
    out = {}
    for k, a in getattr(target, "__annotations__", {}).items():
        try:
            out[k] = eval(a, env) if isinstance(a, str) else a  # noqa: S307 - own annotations
        except Exception:  # noqa: BLE001
            pass
    return out


def _members(tp) -> list:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def _untyped(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _type_name(tp) -> str:
    return " | ".join("None" if m is type(None) else getattr(m, "__name__", str(m))
                      for m in _members(tp))


def convert(name: str, value: str, tp: Any) -> Any:
    """Convert the string ``value`` of option ``name`` to its declared type ``tp``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return _untyped(value)
    members = _members(tp)
    low = value.strip().lower()
    if type(None) in members and low in _NONE:
        return None
    for m in members:
        if m is type(None):
            continue
        if m is bool:
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        elif m is int:
            try:
                return int(value)
            except ValueError:
                pass
        elif m is float:
            try:
                return float(value)
            except ValueError:
                pass
        elif typing.get_origin(m) is tuple:
            args = [a for a in typing.get_args(m) if a is not Ellipsis] or [str]
            try:
                return tuple(convert(name, part, args[0]) for part in value.split(","))
            except ValueError:
                pass
        elif m is str:
            return value
        elif m is Any:
            return _untyped(value)
    raise ValueError(f"option {name}={value!r}: accepted: {_type_name(tp)}")


def parse_options(pairs: list[str] | None, what: str,
                  target: Any | Callable | Mapping[str, Any] | None = None) -> dict:
    """``["width=16", "augment=none"]`` -> ``{"width": 16, "augment": "none"}``.

    ``target`` (a dataclass, a function or a ``{name: type}`` mapping) gives each option's type;
    names it does not declare are converted as untyped (and rejected later by the target)."""
    types_ = option_types(target)
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"{what} option {p!r} must look like key=value")
        k, v = p.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise ValueError(f"{what} option {p!r} has an empty name; expected key=value")
        out[k] = convert(k, v.strip(), types_.get(k, Any))
    return out
