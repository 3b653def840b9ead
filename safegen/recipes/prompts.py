"""What the erasure recipes share before training: the target concept, its prompts, stage folders.

SC-DPO (:mod:`safegen.recipes.scdpo`) and VCE (:mod:`safegen.recipes.vce`) are each one recipe class,
``setup()`` / ``train()`` / ``save()``, that *composes* the pieces below and those of
:mod:`safegen.recipes.training`; nothing here knows a method's loss or data. Their settings are plain
dataclasses of :mod:`safegen.options` fields.

- :func:`resolve_target` and :func:`concept_prompts`: which concept, and the prompts that name it and
  those that do not (the mini world's captions, or a real concept's examples and files);
- :class:`StageContext` and :func:`reusable_stage`: what a data stage (pairs, cost model) is given, and
  when its folder from an earlier run may be reused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safegen.errors import SafegenError

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


# --------------------------------------------------------------------------- targets and prompts
def resolve_target(concept: Any, model: str) -> tuple[Any, tuple[str, str] | None]:
    """The concept (a name or a Concept) and, for a mini concept, its (axis, value); a concept the model
    cannot draw is an error (:func:`safegen.concepts.check_concept_model`)."""
    from safegen.concepts import Concept, check_concept_model, get_concept

    found = concept if isinstance(concept, Concept) else get_concept(concept)
    check_concept_model(found, model, "erasure")
    return found, ((found.axis, found.detector["mini"]["value"]) if found.axis else None)


def concept_prompts(
    concept: Any,
    mini: tuple[str, str] | None,
    *,
    seed: int,
    n_harmful: int,
    n_clean: int,
    prompts_file: str = "",
    clean_prompts_file: str = "",
) -> tuple[list[str], list[str]]:
    """(harmful, clean) prompts: canonical mini-world captions, or the concept's examples and files.

    Mini world: harmful prompts name the concept by its keyword only (its synonyms stay held out for
    ``bench mini``); clean prompts hold any other value of every axis. Real concepts: the registry's
    examples plus ``prompts_file``; clean prompts from ``clean_prompts_file``, else the harmful ones
    rewritten without the concept.
    """
    rng = np.random.default_rng(seed)
    if mini is not None:
        harmful, clean = mini_prompt_pools(mini)
        pick = lambda pool, n: [pool[i] for i in rng.choice(len(pool), n, replace=n > len(pool))]  # noqa: E731
        return pick(harmful, n_harmful), pick(clean, n_clean)
    from safegen.concepts import rewrite

    harmful = list(concept.examples) + read_lines(prompts_file)
    if not harmful:
        raise SafegenError(f"Concept '{concept.name}' has no example prompts; pass --set prompts_file=FILE.")
    harmful = harmful[:n_harmful]
    clean = read_lines(clean_prompts_file) or list(dict.fromkeys(rewrite(p, concept) for p in harmful))
    return harmful, clean[:n_clean]


def mini_prompt_pools(mini: tuple[str, str]) -> tuple[list[str], list[str]]:
    """Every canonical mini-world caption (each template, each combination of values), split into the
    ones whose value on axis ``mini[0]`` is ``mini[1]`` and the rest."""
    from safegen.mini.world import AXES, World

    world = World.load()
    axis, value = mini
    combos = [dict(zip(AXES, c, strict=True)) for c in itertools.product(*(world.values[a] for a in AXES))]
    texts = [(t.format(**c), c[axis] == value) for c in combos for t in world.templates]
    return [t for t, has in texts if has], [t for t, has in texts if not has]


def read_lines(path: str) -> list[str]:
    """The non-empty, non-comment lines of a prompts file ([] for an empty path)."""
    if not path:
        return []
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as exc:
        raise SafegenError(f"Cannot read prompts file {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# --------------------------------------------------------------------------- stages
@dataclass
class StageContext:
    """What a data stage needs: settings, concept, base model and this process's place among the processes."""

    cfg: Any  # the method's options dataclass
    concept: Any  # safegen.concepts.Concept
    mini: tuple[str, str] | None  # (axis, value) on the mini world, None for real models
    model: Any  # LoadedModel or ARModel
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


def run_prompts(ctx: StageContext, seed_offset: int = 0) -> tuple[list[str], list[str]]:
    """(harmful, clean) prompts of this run (:func:`concept_prompts` with the recipe's settings)."""
    cfg = ctx.cfg
    return concept_prompts(
        ctx.concept,
        ctx.mini,
        seed=cfg.seed + 31 + seed_offset,
        n_harmful=cfg.n_harmful_prompts,
        n_clean=cfg.n_clean_prompts,
        prompts_file=cfg.prompts_file,
        clean_prompts_file=cfg.clean_prompts_file,
    )


def check_prompt_set(ctx: StageContext) -> tuple[list[str], bool]:
    """The safety-constraint check's ``check_prompts`` harmful prompts, and whether they are held out.

    With ``check_set=held-out``: prompts stage 2 never sampled (the rest of the mini world's captions of
    the concept, or the prompts past ``n_harmful_prompts`` of a real concept), falling back to the training
    prompts when none are left (then the second value is False). Fixed for a run, so checks compare.
    """
    cfg = ctx.cfg
    used = run_prompts(ctx)[0]
    pool = used
    if cfg.check_set == "held-out":
        if ctx.mini is not None:
            pool = [p for p in mini_prompt_pools(ctx.mini)[0] if p not in set(used)] or used
        else:
            pool = (list(ctx.concept.examples) + read_lines(cfg.prompts_file))[len(used) :] or used
        pool = [pool[i] for i in np.random.default_rng(cfg.seed + 577).permutation(len(pool))]
    return [pool[i % len(pool)] for i in range(cfg.check_prompts)], not set(pool) & set(used)
