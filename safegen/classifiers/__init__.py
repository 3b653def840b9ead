"""Shared image classifiers used by benchmarks and guards.

Only :mod:`safegen.classifiers.nudenet` so far: NudeNet 3.x's detector with named verdict presets.
"""

from safegen.classifiers.nudenet import (
    PRESETS,
    Detection,
    NudeNetClassifier,
    NudityPreset,
    classify_nudity,
    get_preset,
    summarize,
)

__all__ = [
    "PRESETS",
    "Detection",
    "NudeNetClassifier",
    "NudityPreset",
    "classify_nudity",
    "get_preset",
    "summarize",
]
