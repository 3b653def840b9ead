"""What the erasure recipes share before training: the target concept, its prompts, stage folders.

SC-DPO (:mod:`safegen.recipes.scdpo`) and VCE (:mod:`safegen.recipes.vce`) are each one recipe class,
``setup()`` / ``train()`` / ``save()``, that *composes* the pieces below and those of
:mod:`safegen.recipes.training`; nothing here knows a method's loss or data. Their settings are plain
dataclasses of :mod:`safegen.options` fields.

- :func:`resolve_target`: which concept (and its place in the mini world); :func:`mini_prompt_pools`: the
  mini world's captions with and without it (a run's prompts: :mod:`safegen.recipes.prompt_plan`);
- :class:`StageContext` and :func:`reusable_stage`: what a data stage (pairs, cost model) is given, and
  when its folder from an earlier run may be reused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


# --------------------------------------------------------------------------- targets and prompts
Targets = tuple[tuple[str, str], ...]  # a mini concept's (axis, value), one per part of a combined concept


def resolve_target(concept: Any, model: str) -> tuple[Any, Targets | None]:
    """The concept (a name, ``a,b`` for several, or a Concept) and, for mini concepts, the (axis, value)
    of each part; a concept the model cannot draw is an error
    (:func:`safegen.concepts.check_concept_model`)."""
    from safegen.concepts import Concept, check_concept_model, concept_parts, lookup_concept

    found = concept if isinstance(concept, Concept) else lookup_concept(concept)
    check_concept_model(found, model, "erasure")
    parts = concept_parts(found)
    if not all(p.axis for p in parts):
        return found, None
    return found, tuple((p.axis, p.detector["mini"]["value"]) for p in parts)


def mini_prompt_pools(mini: tuple[str, str], artist: str | None = None) -> tuple[list[str], list[str]]:
    """Every canonical mini-world caption (each template, each combination of values), split into the
    ones whose value on axis ``mini[0]`` is ``mini[1]`` and the rest.

    For an artist concept (``artist``: the full name, its only keyword): captions naming that artist (every
    object and colour, the artist templates), against the same captions naming each other artist plus
    every canonical caption (the signature texture named by its word is not the artist)."""
    from safegen.mini.world import AXES, World

    world = World.load()
    axis, value = mini
    combos = [dict(zip(AXES, c, strict=True)) for c in itertools.product(*(world.values[a] for a in AXES))]
    if artist is None:
        texts = [(t.format(**c), c[axis] == value) for c in combos for t in world.templates]
        return [t for t, has in texts if has], [t for t, has in texts if not has]
    templates = world.templates_for({"object", "color", "artist"})
    pairs = list(itertools.product(world.values["object"], world.values["color"]))
    by = lambda name: [t.format(object=o, color=c, artist=name) for o, c in pairs for t in templates]  # noqa: E731
    others = [text for a in world.artists if a.name != artist for text in by(a.name)]
    return by(artist), others + [t.format(**c) for c in combos for t in world.templates]


# --------------------------------------------------------------------------- stages
@dataclass
class StageContext:
    """What a data stage needs: settings, concept, base model and this process's place among the processes."""

    cfg: Any  # the method's options dataclass
    concept: Any  # safegen.concepts.Concept
    mini: Targets | None  # (axis, value) on the mini world per part, None for real models
    model: Any  # LoadedModel or ARModel
    plan: Any = None  # safegen.recipes.prompt_plan.PromptPlan: the run's prompts
    rank: int = 0
    world_size: int = 1
    progress: Progress | None = None

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None and self.rank == 0:
            self.progress(stage, done, total)


def read_manifest(folder: Path, what: str) -> dict[str, Any]:
    """A finished stage folder's ``manifest.json`` (a JSON object), or a one-line error."""
    from safegen.files import read_json

    path = folder / "manifest.json"
    if not path.is_file():
        raise SafegenError(f"{folder} holds no finished {what} (no manifest.json).")
    record = read_json(path, f"{what} manifest")
    if not isinstance(record, dict):
        raise SafegenError(f"{path} is not a JSON object: the {what} is damaged.")
    return record


def reusable_stage(folder: Path, given: bool, what: str, concept: str, fingerprint: str) -> dict | None:
    """A finished stage folder's manifest, checked against this run, or None when it must be built.

    ``given``: the user named the folder (``cost_dir=``, ``pairs_dir=``): it must exist and be for the
    same concept, but may have been built with other settings. Otherwise (the run's own folder, on
    ``--resume``) its fingerprint must match.
    """
    if not (folder / "manifest.json").is_file():
        if given:
            raise SafegenError(f"{folder} holds no finished {what} (no manifest.json).")
        return None
    record = read_manifest(folder, what)
    if record.get("concept") != concept:
        raise SafegenError(f"The {what} in {folder} is for '{record.get('concept')}', not '{concept}'.")
    if not given and record.get("fingerprint") != fingerprint:
        raise SafegenError(f"The {what} in {folder} was built with other settings; use a new --out.")
    return record
