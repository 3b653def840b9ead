"""Guard options: one dataclass per guard, named strength presets, ``--set KEY=VALUE`` and YAML files.

Every knob of a guard is a dataclass field declared with :func:`option` (its range or its choices and a
one-line help). A guard is configured in three layers, later ones winning::

    dataclass defaults  <  --strength preset  <  --guard-config FILE.yaml  <  --set KEY=VALUE

    >>> from safegen.guards.options import option
    >>> @dataclass
    ... class MyOptions:
    ...     scale: float = option(1.0, low=0.0, high=10.0, help="how hard to push")

A guard-config file is a YAML mapping of option names to values (``yaml.safe_load``), optionally with a
``strength`` key naming the preset it starts from::

    # safegen generate "a photo" --guard sp --concept nudity --guard-config sp.yaml
    strength: strong
    mask: threshold
    mask_threshold: 0.3

Values are checked strictly: an unknown key, a value of the wrong type or out of range is a
:class:`~safegen.errors.SafegenError` (one line, exit code 2 in the CLI), never silently corrected.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from safegen.errors import SafegenError, unknown

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def option(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    help: str = "",  # noqa: A002 - the natural name for a CLI help text
) -> Any:
    """A dataclass field with its valid range (``low <= value <= high``) or its choices, and a help text."""
    return dataclasses.field(
        default=default, metadata={"low": low, "high": high, "choices": choices, "help": help}
    )


def field_types(cls: type) -> dict[str, type]:
    """The options dataclass's fields and their Python types (bool, int, float or str)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe_options(cls: type) -> list[dict[str, Any]]:
    """One row per option: name, type, default, range or choices, help (for ``safegen guards``)."""
    types = field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        allowed = ", ".join(meta["choices"]) if meta.get("choices") else _range_text(meta)
        rows.append(
            {
                "name": f.name,
                "type": types[f.name].__name__,
                "default": f.default,
                "allowed": allowed,
                "help": meta.get("help", ""),
            }
        )
    return rows


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    return f"{'' if low is None else low}..{'' if high is None else high}"


# --------------------------------------------------------------------------- checking
def check_value(guard: str, cls: type, key: str, value: Any) -> Any:
    """Check one option value's type and range; return it (ints given for floats become floats).

    Raises:
        SafegenError: unknown key, wrong type, out of range, not one of the choices.
    """
    types = field_types(cls)
    if key not in types:
        raise SafegenError(f"Guard '{guard}' has no option '{key}'. Its options: {', '.join(types)}")
    kind = types[key]
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == key)
    where = f"Guard '{guard}' option {key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise SafegenError(f"{where} must be true or false, got {value!r}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SafegenError(f"{where} must be an integer, got {value!r}.")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SafegenError(f"{where} must be a number, got {value!r}.")
        value = float(value)
        if not math.isfinite(value):
            raise SafegenError(f"{where} must be a finite number, got {value!r}.")
    elif kind is str:
        if not isinstance(value, str):
            raise SafegenError(f"{where} must be a string, got {value!r}.")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise SafegenError(f"{where} must be one of {', '.join(choices)}, got {value!r}.")
        return value
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SafegenError(f"{where} must be in {_range_text(meta)}, got {value!r}.")
    return value


def make_options(
    guard: str,
    cls: type,
    presets: Mapping[str, Mapping[str, Any]],
    strength: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Build a guard's options: dataclass defaults, then the ``strength`` preset, then ``overrides``.

    Raises:
        SafegenError: unknown strength, unknown option, wrong type or out of range.
    """
    values: dict[str, Any] = {}
    if strength is not None:
        if strength not in presets:
            raise unknown(f"strength for guard '{guard}'", str(strength), presets)
        values.update(presets[strength])
    values.update(overrides or {})
    checked = {key: check_value(guard, cls, key, value) for key, value in values.items()}
    return cls(**checked)


# --------------------------------------------------------------------------- --set and YAML
def parse_sets(guard: str, cls: type, items: Iterable[str]) -> dict[str, Any]:
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
            raise SafegenError(f"--set takes KEY=VALUE, got {item!r}.")
        if key not in types:
            raise SafegenError(f"Guard '{guard}' has no option '{key}'. Its options: {', '.join(types)}")
        out[key] = check_value(guard, cls, key, _parse_text(guard, key, text, types[key]))
    return out


def _parse_text(guard: str, key: str, text: str, kind: type) -> Any:
    where = f"Guard '{guard}' option {key}"
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SafegenError(f"{where} must be true or false, got {text!r}.")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise SafegenError(f"{where} must be an integer, got {text!r}.") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise SafegenError(f"{where} must be a number, got {text!r}.") from None
    return text


def read_guard_config(path: str | Path) -> dict[str, Any]:
    """Read a guard-config YAML file: a mapping of option names (and optionally ``strength``) to values.

    Raises:
        SafegenError: unreadable file, not YAML, or not a mapping with string keys.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SafegenError(f"Cannot read guard config {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SafegenError(f"{path}: not valid YAML{where}.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise SafegenError(f"{path}: a guard config is a mapping of option names to values.")
    return raw


# --------------------------------------------------------------------------- concepts
def resolve_concept(guard: str, concept: Any) -> Any:
    """The :class:`~safegen.concepts.Concept` a guard acts against, from a name or a Concept.

    Raises:
        SafegenError: no concept given, or an unknown concept name.
    """
    from safegen.concepts import Concept, get_concept

    if concept is None or (isinstance(concept, str) and not concept.strip()):
        raise SafegenError(
            f"Guard '{guard}' needs a concept to act against: pass --concept (e.g. nudity, or red on the "
            "mini model; `safegen concepts` lists them)."
        )
    if isinstance(concept, Concept):
        return concept
    if not isinstance(concept, str):
        raise SafegenError(f"Guard '{guard}': concept must be a name or a Concept, got {concept!r}.")
    return get_concept(concept.strip())


def configure(guard: Any, concept: Any, strength: str | None, options: Mapping[str, Any]) -> str:
    """Set ``guard.concept`` and ``guard.opts`` (defaults < preset < explicit options); return the strength.

    Every guard's constructor starts with this, using its class attributes ``name``, ``Options`` and
    ``PRESETS``; with no strength, the medium preset (whose values are the defaults) is recorded.
    """
    guard.concept = resolve_concept(guard.name, concept)
    strength = "medium" if strength is None else strength
    guard.opts = make_options(guard.name, guard.Options, guard.PRESETS, strength, options)
    return strength
