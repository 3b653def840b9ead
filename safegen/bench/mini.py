"""``safegen bench mini``: generation quality and concept erasure, measured on the mini world.

Quality: every single-object combination of the mini world (6 objects x 6 colours x 5 textures = 180
prompts, named by their canonical words, caption templates cycled) is generated ``images_per_prompt``
times; the mini-world classifier reads each image; accuracy is reported per axis. Without a concept the
run also reads the world's implicit triggers (artists, aliases, association phrases: the share of images
showing the value they imply) and each axis's unprompted distribution.

Erasure of a concept C (a value v on axis a, or an artist and its signature texture), computed in the
same run against the unmodified model (``erasure.base``):

- UA (unlearning accuracy): share of images of prompts naming C whose image does not show C;
- synonym UA: the same, C named only by a synonym or misspelling (words methods are never told);
- implicit UA: the same, C reached by held-out triggers that do not name it (an association phrase, an
  artist whose signature it is, an artist's alias);
- unprompted rate: share of images of prompts that leave C's axis out which show C (lower is better:
  the model's own default drawing of C);
- IRA (in-domain retain accuracy): accuracy on axis a for prompts with another value of a (for an artist:
  texture accuracy on the other artists' prompts);
- CRA (cross-domain retain accuracy): accuracy on the other axes over every grid prompt (for an artist:
  every axis).

The prompt sets and the scoring are :mod:`safegen.bench.mini_prompts`. With ``out`` the run is a run
folder like the other benchmarks' (:mod:`safegen.runs`): images, one samples line each, ``results.json``;
``resume`` finishes an interrupted run without redoing its images, and ``base_from`` reads the unmodified
model's images of an earlier run of the same prompts instead of generating them again.

With several concepts (``--concept red,circle``) the guard acts against all of them at once and each
concept is measured as above in a run of its own, ``out/red`` and ``out/circle``, its retention (IRA, CRA)
leaving out the readings the other concepts own (circle's object on a grid prompt naming circle counts
for circle's UA, not for red's CRA); ``base_from`` then names
a folder holding one run per concept (an earlier ``out`` of the same concepts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from safegen.bench.mini_prompts import BenchPrompt, Target, plan_prompts, score, target_for
from safegen.concepts import concept_parts
from safegen.errors import SafegenError
from safegen.mini.world import World

CHUNK = 64  # images generated, classified and written at a time (the granularity of --resume)
BASE_KEYS = ("model", "concept", "images_per_prompt", "steps", "cfg", "seed", "world")


def world_version() -> str:
    """A short hash of the mini world's vocabulary (a run's prompts depend on it)."""
    text = resources.files("safegen.data").joinpath("mini_world.yaml").read_bytes()
    return hashlib.sha256(text).hexdigest()[:12]


def _concept(concept: Any, model: str) -> Any:
    """The Concept to measure (several names are combined: each part is a benchmark of its own)."""
    if concept is None:
        return None
    from safegen.concepts import check_concept_model, lookup_concept

    found = lookup_concept(concept)
    check_concept_model(found, model, "bench mini")
    for part in concept_parts(found):
        target_for(part)  # a mini concept, or refused here
    return found


@dataclass
class _Plan:
    """One concept's benchmark: its prompts, variants, config and (with ``out``) its run folder."""

    target: Target | None
    prompts: list[BenchPrompt]
    variants: list[tuple[str, Any, str | None]]
    config: dict[str, Any]
    base_samples: dict[str, dict] | None = None
    run: Any = None
    resume: bool = False
    also_erased: list[Target] = field(default_factory=list)  # the concepts measured with it (several)


def run_bench_mini(
    model: str = "mini",
    concept: Any = None,
    guard: str = "none",
    adapter: str | None = None,
    images_per_prompt: int = 2,
    steps: int = 20,
    cfg: float | None = None,
    seed: int = 0,
    guard_options: dict | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    base_from: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run the mini-world benchmark and return its results (see the module docstring).

    Args:
        concept: a mini concept (name or Concept); None measures the world itself. Several
            (``"red,circle"`` or a list) run one benchmark per concept, each with the guard built on all
            of them (:func:`safegen.concepts.combine_concepts`); each writes ``out/<concept>``.
        cfg: the guidance scale; None: the model's own default.
        out: a run folder to write (images, samples, results); None keeps everything in memory.
        resume: finish the run in ``out``.
        base_from: an earlier bench mini run folder of the unmodified model with the same model, concept,
            images, steps, guidance and seed: its images stand for this run's ``base`` variant. With
            several concepts, a folder holding one such run per concept (``base_from/<concept>``), as
            ``out`` of an earlier run with several concepts is.

    Returns:
        ``{"model", "guard", "adapter", "concept", "n_images", "accuracy": {...}, "implicit", "unprompted"
        (without a concept), "erasure": None | {"ua", "synonym_ua", "implicit_ua", "unprompted_rate",
        "ira", "cra", "base": {...}}}``; with several concepts ``{"model", "guard", "adapter", "concept"
        ("red+circle"), "n_images", "concepts": {name: that concept's result}}``.
    """
    if isinstance(images_per_prompt, bool) or not 1 <= images_per_prompt <= 1000:
        raise SafegenError(f"--images-per-prompt must be in 1..1000, got {images_per_prompt}.")
    concept_obj = _concept(concept, model)
    from safegen.guards import guard_for_model

    guard_obj = guard_for_model(guard, concept_obj, guard_options, model)
    if adapter:
        from safegen.adapters import check_adapter

        check_adapter(adapter)  # before the model is loaded
    parts = concept_parts(concept_obj) if concept_obj is not None else (None,)
    settings = dict(model=model, guard=guard_obj, adapter=adapter, steps=steps, cfg=cfg, seed=seed)
    settings["images_per_prompt"] = images_per_prompt
    if len(parts) == 1:
        plans = [_plan(parts[0], settings, out, resume, base_from)]
    else:
        plans = _plans_of_several(parts, settings, out, resume, base_from)
    total = sum(len(p.prompts) * images_per_prompt * len(p.variants) for p in plans)
    job = _Job(model, device, steps, cfg, images_per_prompt, seed, progress, total)
    job.check_fits(guard_obj, adapter)  # before anything is written
    results, offset = [], 0
    for plan in plans:
        results.append(_run_plan(job, plan, offset, model, adapter))
        offset += len(job.expanded) * len(plan.variants)
    if len(parts) == 1:
        return results[0]
    return {
        "model": model,
        "guard": results[0]["guard"],
        "adapter": adapter,
        "concept": concept_obj.name,
        "n_images": sum(r["n_images"] for r in results),
        "concepts": {r["concept"]: r for r in results},
    }


def _plan(part: Any, settings: dict, out: Any, resume: bool, base_from: Any) -> _Plan:
    """One concept's prompts, variants and config; its run folder (with ``out``) checked, not yet opened."""
    from safegen.runs import RunFolder

    model, guard, adapter = settings["model"], settings["guard"], settings["adapter"]
    target = target_for(part) if part is not None else None
    variants = [("test", guard, adapter)]
    if target and (guard is not None or adapter):
        variants.insert(0, ("base", None, None))
    config = {
        "model": str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model,
        "concept": part.name if part is not None else None,
        "guard": guard.describe() if guard else {"name": "none"},
        "adapter": str(Path(adapter).expanduser().resolve()) if adapter else None,
        **{k: settings[k] for k in ("images_per_prompt", "steps", "cfg", "seed")},
        "world": world_version(),
    }
    plan = _Plan(target, plan_prompts(World.load(), target), variants, config, resume=resume)
    if base_from and len(variants) == 2:
        plan.base_samples = _base_samples(base_from, config)
    if out is not None:
        plan.run = RunFolder(Path(out).expanduser())
        plan.run.check({"config": config}, resume, what="bench mini run")
    return plan


def _plans_of_several(parts: Sequence[Any], settings: dict, out: Any, resume: bool, base_from: Any):
    """One plan per concept, each in its own sub-folder ``out/<concept>`` (and ``base_from/<concept>``).

    With ``resume``, a concept whose folder holds no run yet (the run stopped before it) starts afresh.
    """
    from safegen.runs import MANIFEST

    if out is None:
        return _with_each_other([_plan(p, settings, None, False, _below(base_from, p.name)) for p in parts])
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise SafegenError(f"--out {root} exists and is not a folder.")
    if (root / MANIFEST).is_file():
        raise SafegenError(f"--out {root} holds a run of one concept; several need a folder of their own.")
    started = [(root / p.name / MANIFEST).is_file() for p in parts]
    if resume and not any(started):
        raise SafegenError(f"--resume: {root} holds no bench mini run of {', '.join(p.name for p in parts)}.")
    plans = [
        _plan(p, settings, root / p.name, resume and begun, _below(base_from, p.name))
        for p, begun in zip(parts, started, strict=True)
    ]
    return _with_each_other(plans)


def _with_each_other(plans: list[_Plan]) -> list[_Plan]:
    """Each concept's plan knows the others measured with it (left out of its retention)."""
    for plan in plans:
        plan.also_erased = [other.target for other in plans if other is not plan]
    return plans


def _below(folder: str | Path | None, name: str) -> Path | None:
    return Path(folder).expanduser() / name if folder else None


def _run_plan(job: _Job, plan: _Plan, offset: int, model: str, adapter: str | None) -> dict:
    """Generate (or read back) one concept's variants, score them, and record the run folder's results."""
    from safegen.runs import RunFolder, new_manifest

    job.use(plan.prompts, offset, len(plan.variants))
    run = plan.run
    if run is not None:
        run = RunFolder.open(run.path, new_manifest("mini", plan.config), resume=plan.resume)
    results, order = {}, []
    try:
        for k, (name, g, a) in enumerate(plan.variants):
            if name == "base" and plan.base_samples is not None:
                reads = [plan.base_samples[f"base/{i}"]["detections"] for i in range(len(job.expanded))]
            else:
                reads, keys = job.variant(name, g, a, run, k)
                order += keys
            results[name] = score(job.expanded, reads, plan.target, plan.also_erased)
    except BaseException:
        if run is not None:
            run.release()  # the folder is free for the --resume
        raise
    test = results["test"]
    erasure = test["erasure"]
    if erasure is not None:
        erasure = {**erasure, "base": results.get("base", test)["erasure"]}
    result = {
        "model": model,
        "guard": plan.config["guard"]["name"],
        "adapter": adapter,
        "concept": plan.config["concept"],
        "n_images": len(job.expanded) * len(plan.variants),
        **{k: v for k, v in test.items() if k != "erasure"},
        "erasure": erasure,
    }
    if run is not None:
        run.finalize(order)
        run.write("results.json", result)
        run.release()
    return result


class _Job:
    """The model side of a run: load once, then generate, classify and record one variant at a time."""

    def __init__(self, model, device, steps, cfg, images_per_prompt, seed, progress, total):
        from safegen.generator import model_cfg
        from safegen.loader import load_model
        from safegen.mini.classifier import MiniClassifier
        from safegen.sampling import GenerationConfig

        self.images_per_prompt, self.seed = images_per_prompt, seed
        self.classifier = MiniClassifier.load()
        self.model = load_model(model, device=device)
        self.config = GenerationConfig(steps=steps, cfg=model_cfg(self.model, cfg))
        self.progress, self.total, self.done, self.offset = progress, total, 0, 0
        self.expanded: list[BenchPrompt] = []

    def use(self, prompts: Sequence[BenchPrompt], offset: int, n_variants: int) -> None:
        """Take one concept's prompts; ``offset`` images of the whole run come before them."""
        self.expanded = [p for p in prompts for _ in range(self.images_per_prompt)]
        self.seeds = [self.seed + k for _ in prompts for k in range(self.images_per_prompt)]
        self.offset = self.done = offset

    def check_fits(self, guard: Any, adapter: str | None) -> None:
        """A guard needs a diffusion model; an adapter must be for this kind of model."""
        from safegen.adapters import KIND_WORDS, adapter_kind

        if guard is not None and self.model.kind == "ar":
            raise SafegenError(
                f"Guard '{guard.name}' acts inside a diffusion loop; {self.model.name} is an autoregressive "
                "model (erase concepts from it with VCE and pass --adapter)."
            )
        kind = adapter_kind(Path(adapter).expanduser()) if adapter else None
        if kind is not None and kind != self.model.kind:
            mine, theirs = KIND_WORDS[self.model.kind], KIND_WORDS[kind]
            raise SafegenError(f"{adapter} is a LoRA for {theirs}, but {self.model.name} is {mine}.")

    def variant(self, name: str, guard: Any, adapter: str | None, run: Any, index: int):
        """Reads of every image of one variant (generated, or read back from ``run``), and its keys."""
        from safegen.adapters import use_adapter
        from safegen.generator import generate

        keys = [f"{name}/{i}" for i in range(len(self.expanded))]
        done = run.samples() if run is not None else {}
        reads: list[list[dict] | None] = [done[k]["detections"] if k in done else None for k in keys]
        self.done = self.offset + index * len(keys) + sum(r is not None for r in reads)
        with use_adapter(self.model, adapter):
            for start in range(0, len(keys), CHUNK):  # fixed chunks: a resumed run forms the same batches
                chunk = list(range(start, min(start + CHUNK, len(keys))))
                missing = [i for i in chunk if reads[i] is None]
                if not missing:
                    continue
                images = generate(
                    self.model,
                    [self.expanded[i].prompt for i in chunk],
                    seeds=[self.seeds[i] for i in chunk],
                    config=self.config,
                    guard=guard,
                    progress=self._report(len(chunk)),
                )
                found = self.classifier.classify([im.image for im in images])
                fresh = [
                    (i, im, r) for i, im, r in zip(chunk, images, found, strict=True) if reads[i] is None
                ]
                for i, _, read in fresh:
                    reads[i] = read
                if run is not None:
                    _record(run, name, *map(list, zip(*fresh, strict=True)), self.expanded)
                self.done += len(missing)
        return reads, keys

    def _report(self, n: int) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        start = self.done
        return lambda done, total: self.progress(start + done * n // max(total, 1), self.total)


def _record(run: Any, variant: str, indices: Sequence[int], images, reads, prompts) -> None:
    records = []
    for i, image, read in zip(indices, images, reads, strict=True):
        relative = f"images/{variant}/{i:05d}.png"
        run.image(relative, image.image)
        prompt = prompts[i]
        records.append(
            {
                "key": f"{variant}/{i}",
                "variant": variant,
                "row_id": str(i),
                "prompt": image.prompt,
                "seed": image.seed,
                "group": prompt.group,
                "target": prompt.expect,
                "axis": prompt.axis,
                "meta": prompt.meta,
                "path": relative,
                "detections": read,
                "guard": image.info,
            }
        )
    run.append(records)


def _base_samples(folder: str | Path, config: dict) -> dict[str, dict]:
    """The base variant's samples of an earlier run of the same prompts (checked against ``config``)."""
    from safegen.runs import MANIFEST, RunFolder, read_json

    path = Path(folder).expanduser()
    if not (path / MANIFEST).is_file():
        raise SafegenError(f"--base-from {path} holds no bench mini run ({MANIFEST} missing).")
    old = read_json(path / MANIFEST).get("config", {})
    differ = [k for k in BASE_KEYS if old.get(k) != config[k]]
    if differ:
        raise SafegenError(f"--base-from {path} was run with other {', '.join(differ)}; it cannot stand in.")
    samples = RunFolder(path).samples()
    variant = "base" if any(k.startswith("base/") for k in samples) else "test"
    if variant == "test" and (old.get("guard", {}).get("name") != "none" or old.get("adapter")):
        raise SafegenError(f"--base-from {path} holds no images of the unmodified model.")
    return {
        k.replace(f"{variant}/", "base/", 1): v for k, v in samples.items() if k.startswith(f"{variant}/")
    }
