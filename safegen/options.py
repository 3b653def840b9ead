"""One option system for every configurable part of safegen: guards, erasure recipes and attacks.

Every knob is a dataclass field declared with :func:`option` (its range or its choices, its stage for
recipes, a one-line help). Settings come in layers, later ones winning::

    dataclass defaults  <  --strength preset  <  --config / --guard-config FILE.yaml  <  --set KEY=VALUE

    >>> from dataclasses import dataclass
    >>> from safegen.options import build, option
    >>> @dataclass
    ... class MyOptions:
    ...     scale: float = option(1.0, low=0.0, high=10.0, help="how hard to push")
    >>> build(MyOptions, "Guard 'my'", sets=["scale=2"]).scale
    2.0

A config file is a YAML mapping of option names to values (``yaml.safe_load``); a guard's file may also name
the ``strength`` preset it starts from. Values are checked strictly: an unknown key, a value of the wrong
type or out of range is a one-line :class:`~safegen.errors.SafegenError` (exit code 2 in the CLI), never
silently corrected. Functions, not a base class: an options dataclass stays a plain dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError, unknown

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def option(
    default: Any,
    stage: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    help: str = "",  # noqa: A002 - the natural name for a CLI help text
) -> Any:
    """A dataclass field with its stage (recipes: which output it changes), valid range or choices, help."""
    meta = {"stage": stage, "low": low, "high": high, "choices": choices, "help": help}
    return dataclasses.field(default=default, metadata=meta)


def field_types(cls: type) -> dict[str, type]:
    """The options dataclass's fields and their Python types (bool, int, float or str)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    return f"{'' if low is None else low}..{'' if high is None else high}"


def describe(cls: type) -> list[dict[str, Any]]:
    """One row per option: name, type, stage, default, range or choices, help (``--options``, ``guards``)."""
    types = field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        allowed = ", ".join(meta["choices"]) if meta.get("choices") else _range_text(meta)
        rows.append(
            {
                "name": f.name,
                "type": types[f.name].__name__,
                "stage": meta.get("stage", ""),
                "default": f.default,
                "allowed": allowed,
                "help": meta.get("help", ""),
            }
        )
    return rows


# --------------------------------------------------------------------------- checking
def no_such_option(owner: str, key: Any, cls: type) -> SafegenError:
    """``Guard 'sp' has no option 'nope'. Its options: judge, .... Did you mean 'tau'?``"""
    names = [f.name for f in dataclasses.fields(cls)]
    listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return SafegenError(f"{owner} has no option {short(key)}. Its options: {listed}.{hint}")


def check_value(owner: str, cls: type, key: str, value: Any) -> Any:
    """Check one option value's type and range; return it (ints given for floats become floats).

    Raises:
        SafegenError: unknown key, wrong type, out of range, not one of the choices.
    """
    types = field_types(cls)
    if key not in types:
        raise no_such_option(owner, key, cls)
    kind = types[key]
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == key)
    where = f"{owner} option {key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise SafegenError(f"{where} must be true or false, got {short(value)}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SafegenError(f"{where} must be an integer, got {short(value)}.")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SafegenError(f"{where} must be a number, got {short(value)}.")
        value = float(value)
        if not math.isfinite(value):
            raise SafegenError(f"{where} must be a finite number, got {value!r}.")
    elif kind is str:
        if not isinstance(value, str):
            raise SafegenError(f"{where} must be a string, got {short(value)}.")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise SafegenError(f"{where} must be one of {', '.join(choices)}, got {short(value)}.")
        return value
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SafegenError(f"{where} must be in {_range_text(meta)}, got {value!r}.")
    return value


def check_fields(obj: Any, owner: str) -> None:
    """Check (and normalise: ints to floats) every field of an options dataclass instance in place."""
    cls = type(obj)
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(owner, cls, f.name, getattr(obj, f.name)))


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error never prints a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- --set and YAML
def parse_text(owner: str, key: str, text: str, kind: type) -> Any:
    """A ``--set`` value as the option's type; a value that does not parse is a one-line error."""
    where = f"{owner} option {key}"
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SafegenError(f"{where} must be true or false, got {short(text)}.")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise SafegenError(f"{where} must be an integer, got {short(text)}.") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise SafegenError(f"{where} must be a number, got {short(text)}.") from None
    return text


def parse_sets(owner: str, cls: type, items: Iterable[str]) -> dict[str, Any]:
    """``["mask=threshold", "tau=0.3"]`` -> ``{"mask": "threshold", "tau": 0.3}``, typed by the dataclass.

    Raises:
        SafegenError: an item without ``=``, an unknown key, or a value that does not parse as the type.
    """
    types = field_types(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise SafegenError(f"--set takes KEY=VALUE, got {short(item)}.")
        if key not in types:
            raise no_such_option(owner, key, cls)
        out[key] = check_value(owner, cls, key, parse_text(owner, key, text, types[key]))
    return out


def read_config(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping of option names to values ({} for an empty file).

    Raises:
        SafegenError: unreadable file, not YAML, or not a mapping with string keys.
    """
    from safegen.files import read_yaml

    raw = read_yaml(path, what)
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise SafegenError(f"{path}: a {what} is a mapping of option names to values.")
    return raw


def build(
    cls: type,
    owner: str,
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    strength: str | None = None,
    config: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Build an options dataclass: defaults < ``strength`` preset < ``config`` < ``sets`` < ``overrides``.

    Raises:
        SafegenError: unknown strength, unknown option, wrong type or out of range.
    """
    values: dict[str, Any] = {}
    if strength is not None:
        if not isinstance(strength, str):
            raise SafegenError(
                f"The strength for {owner[:1].lower()}{owner[1:]} must be a name, got {short(strength)}."
            )
        if presets is None or strength not in presets:
            raise unknown(f"strength for {owner[:1].lower()}{owner[1:]}", str(strength), presets or {})
        values.update(presets[strength])
    values.update(config or {})
    values.update(parse_sets(owner, cls, sets))
    values.update(overrides or {})
    checked = {key: check_value(owner, cls, key, value) for key, value in values.items()}
    return cls(**checked)


def fingerprint(obj: Any, *stages: str) -> str:
    """A short hash of the options of the given stages (what a stage's output depends on)."""
    keys = {
        f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("stage") in stages
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def load(
    cls: type,
    owner: str,
    config_file: str | Path | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """A recipe's or attack's options: defaults < YAML ``config_file`` < ``--set`` < ``overrides``.

    ``overrides`` holds what dedicated flags set (e.g. ``{"steps": 100}`` from ``--steps``); None values
    are left out.

    Raises:
        SafegenError: unreadable or invalid YAML, unknown option, wrong type, out of range.
    """
    config = read_config(config_file, f"{owner} config") if config_file is not None else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return build(cls, owner, config=config, sets=sets, overrides=given)
