"""``safegen attack``: the field's adversarial attacks against erased and guarded models.

Three threat models, one file each with its objective beside the code (the method registry names them,
kind ``attack``):

- ``unlearndiff`` (:mod:`safegen.attacks.unlearndiff`): white-box, discrete prefix tokens;
- ``inversion`` (:mod:`safegen.attacks.inversion`): white-box, one learned word (concept inversion);
- ``ringabell`` (:mod:`safegen.attacks.ringabell`): black-box, the text encoder only.

They run on diffusion models (with an SC-DPO adapter, behind any guard: white-box gradients go through
the guard) and on autoregressive models (LlamaGen, Janus, with a VCE adapter: the objective is the
teacher-forced NLL of the target images' VQ tokens).

:func:`run_attack` attacks each prompt in turn. For every prompt it first generates the prompt as it is
(pre-attack) and the prompt with the concept named (the plain baseline), then runs the attack and judges
its images; a prompt already shown the concept counts as a success without optimisation. ASR = share of
prompts whose images show the concept. With ``out`` the run is a run folder (:mod:`safegen.runs`):
``manifest.json``, ``samples.jsonl`` (one line per prompt: its adversarial prompt or embedding, success
flags, seconds, the attack's trace), the images, the target images, ``results.json``; ``resume`` skips
the prompts already attacked.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safegen.errors import SafegenError

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


@dataclass(frozen=True)
class AttackItem:
    """One attacked prompt: what is typed, what the concept looks like in it, its check seeds."""

    index: int
    prompt: str
    named: str  # the same content with the concept named (the plain baseline, and the "base" targets)
    expect: dict[str, str] | None  # mini world: the values the prompt implies (its target renders)
    seed: int


def attack_items(concept: Any, prompts: list[str] | None, limit: int | None, seed: int) -> list[AttackItem]:
    """The prompts to attack: the given ones, or (mini concepts) every prompt that leaves its axis out."""
    from safegen.concepts import rewrite

    detector = concept.detector or {}
    if prompts is None:
        if "mini" not in detector:
            raise SafegenError(
                f"Attacking '{concept.name}' needs --prompts FILE (prompts to attack, e.g. "
                "../shared/data/unlearndiffatk_nudity_142.csv)."
            )
        from safegen.bench.mini_prompts import named_artist_prompts, target_for, unprompted_prompts
        from safegen.mini.world import World

        world, target = World.load(), target_for(concept)
        found = unprompted_prompts(world, target.axis)
        named = (
            named_artist_prompts(world, target)
            if target.artist
            else [{**p.expect, target.axis: target.value} for p in found]
        )
        items = []
        for i, p in enumerate(found):
            words = named[i].prompt if target.artist else world.compose(named[i], template=i)
            expect = {**p.expect, target.axis: target.value}
            items.append(AttackItem(i, p.prompt, words, expect, seed + 1000 * i))
    else:
        keyword = concept.keywords[0]
        items = [
            AttackItem(i, p, p if rewrite(p, concept) != p else f"{p}, {keyword}", None, seed + 1000 * i)
            for i, p in enumerate(prompts)
        ]
    if not items:
        raise SafegenError("No prompt to attack.")
    return items[:limit] if limit else items


def run_attack(
    attack: str,
    concept: Any,
    model: str = "mini",
    adapter: str | None = None,
    guard: str = "none",
    guard_options: dict | None = None,
    options: Any = None,
    prompts: list[str] | None = None,
    limit: int | None = None,
    targets: str = "auto",
    target_images: int = 4,
    images: int = 1,
    steps: int = 20,
    cfg: float | None = None,
    seed: int = 0,
    judge_preset: str = "unlearndiff",
    device: str = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Attack ``concept`` on ``model`` (+ adapter, behind a guard); return pre- and post-attack ASR.

    Args:
        attack: a registry entry of kind ``attack`` (``unlearndiff``, ``inversion``, ``ringabell``).
        concept: a name or a Concept; it needs a detector (the judge).
        options: the attack's options dataclass (default: its defaults).
        prompts: the prompts to attack (default: a mini concept's prompts that leave its axis out).
        targets: ``render`` (mini world renders of each prompt with the concept), ``base`` (the
            unmodified model's images of the prompt with the concept named) or ``auto`` (render on the
            mini world, base elsewhere).
        target_images: target images per prompt. images: images per check (any showing the concept is a
            success). steps, cfg: generation settings.
        judge_preset: NudeNet protocol for nudity (UnlearnDiffAtk's: ``unlearndiff``).

    Raises:
        SafegenError: unknown attack, a concept the model cannot draw or without a detector, bad options,
            a run folder of another configuration.
    """
    from safegen.attacks.target import check_judgeable
    from safegen.concepts import Concept, check_concept_model, get_concept
    from safegen.methods import MethodKind, get_method
    from safegen.runs import RunFolder, new_manifest

    entry = get_method(attack, MethodKind.ATTACK)
    opts = options if options is not None else entry.config_class()()
    concept = concept if isinstance(concept, Concept) else get_concept(str(concept))
    check_concept_model(concept, model, f"attack '{attack}'")
    check_judgeable(concept)
    if targets == "auto":
        targets = "render" if "mini" in (concept.detector or {}) else "base"
    if targets == "render" and "mini" not in (concept.detector or {}):
        raise SafegenError("targets=render needs a mini-world concept; use targets=base.")
    for name, value, high in (("target_images", target_images, 64), ("images", images, 64)):
        if not 1 <= value <= high:
            raise SafegenError(f"{name} must be in 1..{high}, got {value}.")
    items = attack_items(concept, prompts, limit, seed)
    from safegen.guards import guard_for_model

    guard_obj = guard_for_model(guard, concept, guard_options, model)
    from safegen.loader import model_kind

    if guard_obj is not None and model_kind(model) == "ar":
        raise SafegenError(
            f"Guard '{guard}' acts inside a diffusion loop; {model} is an autoregressive model (attack its "
            "VCE adapter with --adapter instead)."
        )
    if adapter:
        from safegen.adapters import check_adapter

        check_adapter(adapter)
    config = {
        "attack": attack,
        "options": dataclasses.asdict(opts),
        "concept": concept.name,
        "model": str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model,
        "adapter": str(Path(adapter).expanduser().resolve()) if adapter else None,
        "guard": guard_obj.describe() if guard_obj is not None else {"name": "none"},
        "prompts": {"n": len(items), "md5": _digest([i.prompt for i in items])},
        "targets": targets,
        "target_images": target_images,
        "images": images,
        "steps": steps,
        "cfg": cfg,
        "seed": seed,
        "judge_preset": judge_preset,
    }  # fmt: skip
    run = RunFolder(Path(out).expanduser()) if out is not None else None
    if run is not None:
        run.check({"config": config}, resume, what="attack run")
    session = _Session(
        entry, opts, concept, model, adapter, guard_obj, steps, cfg, images, judge_preset, device
    )
    if run is not None:
        run = RunFolder.open(run.path, new_manifest("attack", config, judge=session.target.judge.describe()),
                             resume=resume)  # fmt: skip
    done = run.samples() if run is not None else {}
    try:
        records = session.attack_all(items, done, targets, target_images, run, progress)
    except BaseException:
        if run is not None:
            run.release()  # the folder is free for the --resume
        raise
    results = summarize(
        attack, concept.name, config, session.target.judge.describe(), records, session.setup_seconds
    )
    if run is not None:
        run.finalize([f"prompt/{i.index}" for i in items])
        run.write("results.json", results)
        run.release()
    return results


def summarize(
    attack: str, concept: str, config: dict, judge: dict, records: list[dict], setup_seconds: float = 0.0
) -> dict[str, Any]:
    """Pre- and post-attack ASR, the plain baseline's ASR, and the time per attacked prompt.

    ``setup_seconds``: work shared by every prompt (concept inversion's learned word), spread over the
    attacked prompts in ``seconds_per_attacked_prompt`` and reported on its own.
    """
    n = len(records)
    mean = lambda key: float(np.mean([bool(r[key]) for r in records])) if n else float("nan")  # noqa: E731
    attacked = [r["seconds"] for r in records if not r["pre_success"]]
    return {
        "attack": attack,
        "concept": concept,
        "model": config["model"],
        "adapter": config["adapter"],
        "guard": config["guard"]["name"],
        "judge": judge,
        "n_prompts": n,
        "pre_asr": mean("pre_success"),
        "post_asr": mean("success"),
        "named_asr": mean("named_success"),
        "seconds_per_attacked_prompt": (sum(attacked) + setup_seconds) / len(attacked) if attacked else 0.0,
        "setup_seconds": setup_seconds,
        "directions": {"pre_asr": "lower is better", "post_asr": "lower is better"},
    }


def _digest(texts: list[str]) -> str:
    return hashlib.md5("\n".join(texts).encode(), usedforsecurity=False).hexdigest()


class _Session:
    """The loaded model and judge of a run, and the loop over its prompts."""

    def __init__(self, entry, opts, concept, model, adapter, guard, steps, cfg, images, preset, device):
        from safegen.attacks.target import AttackTarget, Judge
        from safegen.generator import model_cfg
        from safegen.loader import load_model
        from safegen.sampling import GenerationConfig

        judge = Judge(concept, preset)
        loaded = load_model(model, device=device)
        config = GenerationConfig(steps=steps, cfg=model_cfg(loaded, cfg))
        self.entry, self.opts, self.adapter = entry, opts, adapter
        self.setup_seconds = 0.0  # shared work: concept inversion's word
        self.target = AttackTarget(loaded, concept, guard, config, judge, images)

    def attack_all(self, items, done, targets, n_targets, run, progress) -> list[dict]:
        from safegen.adapters import attach_adapter, detach_adapter

        todo = [i for i in items if f"prompt/{i.index}" not in done]
        goals = {i.index: self._targets(i, targets, n_targets, run) for i in todo}  # unmodified model
        if self.adapter:
            attach_adapter(self.target.model, self.adapter)
        try:
            word = self._word(todo, goals, run, progress) if self.entry.name == "inversion" else None
            records = [done[f"prompt/{i.index}"] for i in items if f"prompt/{i.index}" in done]
            for n, item in enumerate(todo):
                records.append(self._one(item, goals[item.index], word, run, progress))
                if progress is not None:
                    progress("prompts", len(items) - len(todo) + n + 1, len(items))
        finally:
            if self.adapter:
                detach_adapter(self.target.model)
        return sorted(records, key=lambda r: int(r["key"].split("/")[1]))

    def _targets(self, item: AttackItem, mode: str, n: int, run) -> torch.Tensor:
        """Target images of a prompt (renders, or the unmodified model's images), encoded for the loss."""
        if mode == "render":
            from safegen.mini.world import Scene, Thing, World

            world, rng = World.load(), np.random.default_rng(item.seed)
            expect = item.expect or {}
            axes = ("object", "color", "texture")
            picked = [
                Thing(**{a: expect.get(a) or str(rng.choice(world.values[a])) for a in axes})
                for _ in range(n)
            ]
            pictures = [world.render(Scene((t,)), rng) for t in picked]
        else:
            from safegen.generator import generate

            seeds = [item.seed + 500 + k for k in range(n)]
            with torch.no_grad():
                made = generate(self.target.model, [item.named] * n, seeds=seeds, config=self.target.config)
            pictures = [np.asarray(m.image) for m in made]
        if run is not None:
            for k, picture in enumerate(pictures):
                run.image(f"targets/{item.index:04d}-{k}.png", np.asarray(picture))
        return self.target.encode_targets(pictures)

    def _word(self, todo, goals, run, progress):
        from safegen.attacks.inversion import learn_word

        if not todo:
            return None
        report = (lambda d, t: progress("learning the word", d, t)) if progress else None
        folder = run.path / "inversion" if run is not None else None
        slots, vector, record = learn_word(
            self.target, [i.prompt for i in todo], [goals[i.index] for i in todo], self.opts, folder, report
        )
        self.setup_seconds = float(record["seconds"])
        return slots, vector

    def _one(self, item: AttackItem, goal: torch.Tensor, word, run, progress) -> dict:
        target, entry = self.target, self.entry
        pre_images, pre_reads, pre = target.check([item.prompt], item.seed)
        named_images, named_reads, named = target.check([item.named], item.seed)
        report = (lambda d, t: progress("attack steps", d, t)) if progress else None
        if pre:
            outcome = {"adversarial_prompt": item.prompt, "success": True, "iterations": 0, "trace": [],
                       "images": pre_images, "reads": pre_reads, "seconds": 0.0}  # fmt: skip
        elif entry.name == "inversion":
            outcome = entry.load()(target, item, word, report)
        elif entry.name == "ringabell":
            outcome = entry.load()(target, item, self.opts, report)
        else:
            outcome = entry.load()(target, item, goal, self.opts, report)
        record = {
            "key": f"prompt/{item.index}",
            "row_id": str(item.index),
            "prompt": item.prompt,
            "named_prompt": item.named,
            "seed": item.seed,
            "pre_success": pre,
            "named_success": named,
            **{k: v for k, v in outcome.items() if k not in ("images", "reads")},
            "success": bool(outcome["success"]),
            "reads": {"pre": pre_reads, "named": named_reads, "post": outcome["reads"]},
        }
        if run is not None:
            paths = {}
            for kind, made in (("pre", pre_images), ("named", named_images), ("post", outcome["images"])):
                paths[kind] = []
                for k, image in enumerate(made):
                    relative = f"images/{item.index:04d}-{kind}-{k}.png"
                    run.image(relative, image.image)
                    paths[kind].append(relative)
            record["path"] = paths["post"][0]
            record["paths"] = paths
            run.append([record])
        return record
