"""Inference-time guards, selected by name.

    >>> from safegen.guards import get_guard
    >>> guard = get_guard("none")

Each guard implements the hook protocol of :mod:`safegen.guards.base`. To add one, write
``safegen/guards/<name>.py`` and add one entry to :data:`GUARDS` (the only registration).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from safegen.errors import SafegenError, unknown
from safegen.guards.base import Guard, GuardBase, NoGuard, RunContext

GUARDS: dict[str, Callable[..., Guard]] = {
    "none": NoGuard,
}

__all__ = ["GUARDS", "Guard", "GuardBase", "NoGuard", "RunContext", "get_guard"]


def get_guard(name: str, **options: Any) -> Guard:
    """Build the guard registered as ``name`` with its options.

    Raises:
        SafegenError: unknown guard name, or an option the guard does not take.
    """
    if name not in GUARDS:
        raise unknown("guard", name, GUARDS)
    factory = GUARDS[name]
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    bad = [k for k in options if k not in accepted and not takes_any]
    if bad:
        allowed = ", ".join(k for k in accepted if k != "self") or "none"
        raise SafegenError(f"Guard '{name}' has no option '{bad[0]}'. Its options: {allowed}")
    return factory(**options)
