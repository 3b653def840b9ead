"""Inference-time guards, selected by name from the method registry (:mod:`safegen.methods`).

    >>> from safegen.guards import build_guard, get_guard
    >>> guard = get_guard("none")
    >>> guard = get_guard("sp", concept="nudity", strength="strong", tau=0.3)
    >>> guard = build_guard("sld", concept="nudity", strength="max", sets=["warmup_steps=5"])
    >>> guard = get_guard("neg", concept="red,circle")  # several concepts: one combined concept

A guard is one file here (``sp.py``, ``dlr.py``, ``sld.py``, ``neg.py``) beside the hook protocol it
satisfies (:mod:`safegen.guards.base`) and the word-level detector some of them use
(:mod:`safegen.guards.detect`); its options are a dataclass of :mod:`safegen.options` fields. The registry
entry of kind ``guard`` names its class; ``none`` (plain classifier-free guidance) is built in.

Guards other than ``none`` take ``concept`` (a registry name or a Concept), an optional ``strength`` preset
and their options as keywords; each class carries ``Options`` and ``PRESETS``. Several concepts
(``concept="red,circle"`` or a list) make one combined concept (:func:`safegen.concepts.combine_concepts`),
which every guard reads as it reads one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError, unknown
from safegen.guards.base import Guard, NoGuard, RunContext

__all__ = [
    "Guard",
    "NoGuard",
    "RunContext",
    "build_guard",
    "get_guard",
    "guard_class",
    "guard_names",
    "guard_options",
    "list_guards",
]


def guard_names() -> list[str]:
    """``none`` and every guard of the method registry."""
    from safegen.methods import METHODS, MethodKind

    return ["none", *(n for n, m in METHODS.items() if m.kind is MethodKind.GUARD)]


def guard_class(name: str) -> Callable[..., Guard]:
    """The class (factory) registered as ``name``, importing its module on first use."""
    if name == "none":
        return NoGuard
    from safegen.methods import METHODS, MethodKind

    entry = METHODS.get(name)
    if entry is None or entry.kind is not MethodKind.GUARD:
        raise unknown("guard", name, guard_names())
    return entry.load()


def get_guard(name: str, **options: Any) -> Guard:
    """Build the guard registered as ``name`` with its options.

    Raises:
        SafegenError: unknown guard name, or an option the guard does not take (or a bad value for it).
    """
    factory = guard_class(name)
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    bad = [k for k in options if k not in accepted and not takes_any]
    if bad:
        allowed = ", ".join(k for k in accepted if k != "self") or "none"
        raise SafegenError(f"Guard '{name}' has no option '{bad[0]}'. Its options: {allowed}")
    return factory(**options)


def calibrated_options(name: str, concept: Any, model: str | None) -> dict[str, Any]:
    """The bundled calibration of the noise judge for ``concept`` on a bundled ``model`` (``{}`` if none).

    ``safegen/assets/<model>/calibration/<concept>.yaml`` is what ``safegen calibrate --guard sp`` wrote
    for it; sp and dlr share the judge (Eq. b), so each takes the keys it has (``judge_steps``, ``tau``,
    ``h_sat``). Any other model: run ``safegen calibrate`` and pass ``--guard-config``.
    """
    import dataclasses

    import yaml

    from safegen.bundled import BUNDLED

    found = BUNDLED.get(model or "")
    concept_name = getattr(concept, "name", concept)
    if found is None or not isinstance(concept_name, str) or name not in guard_names():
        return {}
    path = found.path / "calibration" / f"{concept_name}.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(guard_class(name).Options)}
    return {k: v for k, v in data.items() if k in fields and k != "judge"}


JUDGED = {"judge_direction": "unsafe", "anchor_weight": None, "judge_steps": None, "judge_start": None}
JUDGED["judge_window"] = 0  # a calibration that names no window judged whole latents
JUDGED["judge_window_mode"] = "only"  # ... and one that names a window, on it alone


def with_calibration(calibration: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """``explicit`` options over the ``calibration``; a calibration measured on another judge statistic or
    window than the explicit one is dropped whole (its tau and h_sat are on another scale). A calibration
    file that names no statistic was measured on the paper's (``unsafe``, the only one when it was made),
    and one without ``presence`` without the presence judge (judge.py Eq. b4): the run then judges
    without it unless ``presence`` is given (its thresholds are then the defaults)."""
    for key, default in JUDGED.items():
        if key in explicit and calibration and explicit[key] != calibration.get(key, default):
            return dict(explicit)
    implied = {"judge_direction": "unsafe", "presence": False} if calibration and "tau" in calibration else {}
    return {**implied, **calibration, **explicit}


def part_calibrations(name: str, concept: Any, model: str | None, explicit: dict[str, Any]) -> dict[str, Any]:
    """For sp or dlr against several concepts at once on a bundled model: each part's bundled calibration as
    ``part_options`` (its tau, h_sat and statistic; keys given explicitly stay shared), else ``{}``."""
    from safegen.concepts import concept_parts, lookup_concept

    if name not in ("sp", "dlr") or model is None or concept is None:
        return {}
    try:
        parts = concept_parts(lookup_concept(concept))
    except SafegenError:
        return {}  # the guard's own construction says what is wrong with the concept
    own: dict[str, dict[str, Any]] = {}
    for part in parts if len(parts) > 1 else ():
        judged = {k: v for k, v in explicit.items() if k in JUDGED}
        found = with_calibration(calibrated_options(name, part, model), judged)
        own_keys = guard_class(name).PART_KEYS
        keep = {k: v for k, v in found.items() if k in own_keys and k not in explicit}
        if keep:
            own[part.name] = keep
    return {"part_options": own} if own else {}


def guard_for_model(name: str, concept: Any, options: dict | None, model: str | None) -> Guard | None:
    """The guard ``name`` against ``concept`` for a run on ``model`` (None for ``none``): the bundled
    calibration (:func:`calibrated_options`) under the given ``options``.

    Raises:
        SafegenError: options for ``none``, a guard without a concept, bad options.
    """
    if name == "none":
        if options:
            raise SafegenError("Guard 'none' takes no options; pick a guard.")
        return None
    if concept is None:
        raise SafegenError(f"Guard '{name}' needs --concept")
    options = with_calibration(calibrated_options(name, concept, model), options or {})
    return get_guard(name, concept=concept, **options, **part_calibrations(name, concept, model, options))


def guard_options(
    name: str,
    strength: str | None = None,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    model: str | None = None,
    concept: Any = None,
) -> dict[str, Any]:
    """The keyword options for ``get_guard(name, concept=..., **options)`` from the CLI's inputs.

    The bundled calibration of ``concept`` on ``model`` (:func:`calibrated_options`; dropped when the
    options judge another statistic or window: :func:`with_calibration`) first, then
    ``strength`` (the ``--strength`` preset), then the YAML ``config_file`` (which may also name a
    ``strength``; ``--strength`` wins), then ``--set KEY=VALUE`` items parsed with the option's type.

    Raises:
        SafegenError: options given to ``none``, an unreadable config, an unknown key or a bad value.
    """
    from safegen.options import parse_sets, read_config

    config = read_config(config_file, "guard config") if config_file is not None else {}
    given = strength is not None or config or list(sets)
    if name == "none":
        if given:
            raise SafegenError("Guard 'none' takes no --strength, --set or --guard-config; pick a guard.")
        return {}
    cls = guard_class(name)
    options: dict[str, Any] = dict(config)
    if strength is not None:
        options["strength"] = strength
    options.update(parse_sets(f"Guard '{name}'", cls.Options, sets))
    merged = with_calibration(calibrated_options(name, concept, model), options)
    return {**merged, **part_calibrations(name, concept, model, merged)}


def build_guard(
    name: str,
    concept: Any = None,
    strength: str | None = None,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    model: str | None = None,
    **extra: Any,
) -> Guard:
    """Build and check a guard from the CLI's inputs (see :func:`guard_options`); nothing is loaded.

    Args:
        model: the model the guard will run on (checked against the concept:
            :func:`safegen.concepts.check_concept_model`).
        extra: further options, applied last (e.g. ``keep_masks=True`` for ``--save-masks``).

    Raises:
        SafegenError: unknown guard, a guard without a concept, a concept the model cannot draw, an
            unknown option or a value out of range.
    """
    options = {**guard_options(name, strength, config_file, sets, model, concept), **extra}
    if name == "none":
        if extra:
            raise SafegenError(f"Guard 'none' takes no option '{next(iter(extra))}'; pick a guard.")
        return get_guard("none")
    guard = get_guard(name, concept=concept, **options)
    if model is not None:
        from safegen.concepts import check_concept_model

        check_concept_model(guard.concept, model, f"guard '{name}'")
    return guard


def list_guards(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every guard with its presets and options (for ``safegen guards``)."""
    from safegen.options import describe

    rows = []
    for name in names or guard_names():
        cls = guard_class(name)
        options = getattr(cls, "Options", None)
        rows.append(
            {
                "name": name,
                "summary": (inspect.getdoc(cls) or "").splitlines()[0],
                "presets": getattr(cls, "PRESETS", {}),
                "options": describe(options) if options is not None else [],
            }
        )
    return rows
