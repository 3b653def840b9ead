"""safegen: make text-to-image models safe -- erase concepts, guard generation, measure the result.

    >>> import safegen
    >>> model = safegen.load_model("mini")
    >>> images = safegen.generate(model, ["a red striped circle"], n=2)
    >>> safegen.classify([im.image for im in images], classifier="mini")
    >>> safegen.get_concept("nudity").unsafe_text

The names below are imported on first use, so ``import safegen`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_model": "safegen.loader",
    "generate": "safegen.generator",
    "classify": "safegen.api",
    "load_concepts": "safegen.concepts",
    "get_concept": "safegen.concepts",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("safegen")
        except PackageNotFoundError:
            return "0+unknown"
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'safegen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
