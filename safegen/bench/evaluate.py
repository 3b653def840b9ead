"""The loop shared by ``safegen bench i2p`` and ``bench attack``: generate, classify, record.

:func:`run_benchmark` loads the model, guard, adapter and classifiers (every input is checked before the run
folder is touched), opens the run folder (:mod:`safegen.runs`), then for each batch of images still
missing: generates them (:func:`safegen.generator.generate`), runs NudeNet (and Q16 when asked) on the
pixels in memory, writes the PNGs and appends one samples line per image. Batches group images of the
same guidance scale (the generator takes one per call); every image has its own seed, so the batching
keeps its noise. Batches are cut from the run's whole canonical order, so a resumed run regenerates a
batch it had finished in part instead of forming new batches: its pixels are the uninterrupted run's
(another ``--batch-size`` may change a pixel value by 1 or 2: :mod:`safegen.generator`).
``timing.json`` splits the session's wall time into model loading, generation, classification, writing
and the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError
from safegen.runs import IMAGES, RESULTS, TIMING, RunFolder, Shard, default_out_dir, new_manifest

SCORE_DIGITS = 4  # detection scores are stored rounded: NudeNet's own batch-to-batch wobble is ~1e-6


@dataclass
class Settings:
    """How images are made; every field but ``batch_size`` and ``device`` is part of a run's config.

    Attributes:
        size: (height, width); None: the model's native size (I2P rows ask for 512 px, which only suits
            SD-1.x-sized models; the manifest records which was used).
        seed: None: each row's own seed (image k gets seed + k); else this seed + k for every row.
        cfg: None: each row's own guidance scale (for rows without one, the model's default:
            :func:`safegen.generator.model_cfg`, as ``safegen generate`` uses); else this one for every row.
    """

    model: str = "mini"
    guard: str = "none"
    concept: Any = "nudity"  # a registry name or a Concept
    adapter: str | None = None
    steps: int = 50
    size: tuple[int, int] | None = None
    seed: int | None = None
    cfg: float | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    guard_options: dict[str, Any] = field(default_factory=dict)

    @property
    def concept_name(self) -> str:
        return getattr(self.concept, "name", self.concept)

    def config(self) -> dict[str, Any]:
        model = self.model
        if Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())
        return {
            "model": model,
            "guard": {"name": self.guard, **({"concept": self.concept_name} if self.guard != "none" else {})},
            "guard_options": dict(self.guard_options),
            "adapter": str(Path(self.adapter).expanduser().resolve()) if self.adapter else None,
            "steps": self.steps,
            "size": list(self.size) if self.size else None,
            "seed": self.seed,
            "cfg": self.cfg,
            "row_cfg_default": "model",  # a row without a scale: the model's own (a resumed run keeps it)
            "dtype": self.resolved_dtype(),
        }

    def resolved_dtype(self) -> str:
        """``auto`` resolved for this machine (fp16 on CUDA, fp32 elsewhere): it changes the pixels."""
        from safegen.loader import resolve_device, resolve_dtype

        return str(resolve_dtype(self.dtype, resolve_device(self.device))).removeprefix("torch.")


@dataclass(frozen=True)
class Item:
    """One image to make: ``key`` is ``<row id>/<k>``; ``position`` its place in the run's order."""

    key: str
    position: int
    prompt: str
    seed: int
    cfg: float | None  # None: the model's default guidance scale (known once it is loaded)
    meta: dict[str, Any]


def make_items(rows: Sequence[Any], images_per_prompt: int, settings: Settings) -> list[Item]:
    """The run's images in canonical order: each row's ``images_per_prompt`` images, rows in file order."""
    from safegen.sampling import MAX_SEED

    if not 1 <= images_per_prompt <= 1000:
        raise SafegenError(f"--images-per-prompt must be in 1..1000, got {images_per_prompt}.")
    items = []
    for row in rows:
        base = settings.seed if settings.seed is not None else row.seed if row.seed is not None else 0
        if base + images_per_prompt - 1 > MAX_SEED:
            raise SafegenError(f"Row {row.row_id} (line {row.line}): seed {base} is too large.")
        cfg = settings.cfg if settings.cfg is not None else row.guidance
        cfg = None if cfg is None else float(cfg)
        if cfg is not None and not 0.0 <= cfg <= 50.0:  # the generator's range, before the run folder is made
            where = "--cfg" if settings.cfg is not None else f"Row {row.row_id} (line {row.line}): guidance"
            raise SafegenError(f"{where} must be in 0.0..50.0, got {cfg}.")
        meta = {"row_id": row.row_id, "categories": list(row.categories), "hard": row.hard, **row.meta}
        for k in range(images_per_prompt):
            key = f"{row.row_id}/{k}"
            items.append(Item(key, len(items), row.prompt, base + k, cfg, {**meta, "k": k}))
    return items


def q16_config(clip: str | None, prompts: str | Path | None) -> dict[str, Any]:
    """The Q16 part of a run's config (the prompt embeddings by content hash)."""
    from safegen.promptsets.table import file_md5

    if not clip or not prompts:
        raise SafegenError(
            "Q16 needs both --q16-clip (a local CLIP ViT-L/14) and --q16-prompts (safetensors)."
        )
    path = Path(prompts).expanduser()
    if not path.is_file():
        raise SafegenError(f"Q16 prompts file not found: {path}")
    return {"clip": clip, "prompts_md5": file_md5(path)}


def warn_if_labelled_by_evaluator(record: dict[str, Any], evaluator: str) -> bool:
    """Say so when an erased model's training data was labelled by the detector that now scores it (its
    figures are then optimistic: the method was trained against the test)."""
    import logging

    if record.get("labels") != evaluator:
        return False
    logging.getLogger("safegen").warning(
        "The adapter's training data was labelled by %s, the evaluator of this benchmark: its figures "
        "are optimistic. Label with another detector (e.g. cost_labels=opennsfw).",
        evaluator,
    )
    return True


class Evaluator:
    """Model + guard + adapter, and the classifiers that read its images."""

    def __init__(self, settings: Settings, preset: Any, q16: tuple[str, str] | None = None) -> None:
        from safegen.classifiers.nudenet import NudeNetClassifier
        from safegen.generator import image_size
        from safegen.guards import get_guard, guard_for_model
        from safegen.loader import load_model
        from safegen.sampling import GenerationConfig

        self.settings = settings
        height, width = settings.size or (None, None)
        GenerationConfig(steps=settings.steps, height=height, width=width, batch_size=settings.batch_size)
        options = dict(settings.guard_options)
        if settings.guard == "none":
            self.guard = get_guard("none", **options)
        else:  # a bundled model's calibration of the concept under the given options, as the CLI's
            concept = options.pop("concept", settings.concept)
            self.guard = guard_for_model(settings.guard, concept, options, settings.model)
        self.model = load_model(settings.model, device=settings.device, dtype=settings.dtype)
        if settings.adapter:
            from safegen.adapters import attach_adapter, check_adapter

            attach_adapter(self.model, settings.adapter)
            warn_if_labelled_by_evaluator(check_adapter(settings.adapter), "nudenet")
        if self.model.kind == "ar":  # autoregressive models make images of their own size, unguarded
            if settings.guard != "none":
                raise SafegenError(
                    f"Guard '{settings.guard}' acts inside a diffusion loop; {settings.model} is an "
                    "autoregressive model (erase concepts from it with VCE and pass --adapter)."
                )
            if settings.size and settings.size != (self.model.image_size,) * 2:
                raise SafegenError(f"{settings.model} makes {self.model.image_size} px images; drop --size.")
            self.size = (self.model.image_size, self.model.image_size)
        else:
            self.size = image_size(self.model, GenerationConfig(height=height, width=width))
        self.nudenet = NudeNetClassifier(preset) if preset is not None else None  # None: images only
        self.q16 = None
        if q16 is not None:
            from safegen.bench.q16 import Q16

            self.q16 = Q16(*q16, device=str(self.model.device))

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the model side of the run."""
        return {
            "model": {"name": self.model.name, "source": self.model.source, "kind": self.model.kind},
            "device": str(self.model.device),
            "guard": self.guard.describe(),
            "adapter": self.settings.adapter,
            "image_size": {
                "height": self.size[0],
                "width": self.size[1],
                "source": "--size" if self.settings.size else "model (native size; rows' sizes ignored)",
            },
            "seed_policy": "row seed + k" if self.settings.seed is None else f"{self.settings.seed} + k",
            "cfg_policy": f"row guidance, else the model's {self.cfg_of(None)}"
            if self.settings.cfg is None
            else f"{self.settings.cfg} for all rows",
        }

    def cfg_of(self, cfg: float | None) -> float:
        """An item's guidance scale: its own, else the model's (:func:`safegen.generator.model_cfg`)."""
        from safegen.generator import model_cfg

        return model_cfg(self.model, cfg)

    def generate(self, batch: Sequence[Item]) -> list[Any]:
        from safegen.generator import generate
        from safegen.sampling import GenerationConfig

        config = GenerationConfig(
            steps=self.settings.steps,
            cfg=self.cfg_of(batch[0].cfg),
            height=self.size[0],
            width=self.size[1],
            batch_size=len(batch),
        )
        prompts, seeds = [it.prompt for it in batch], [it.seed for it in batch]
        return generate(self.model, prompts, seeds=seeds, config=config, guard=self.guard, output_type="np")

    def classify(self, pixels: Sequence[Any]) -> list[dict[str, Any]]:
        """Per image: every NudeNet detection (scores rounded), the preset's verdict, and Q16's."""
        if self.nudenet is None:
            return [{} for _ in pixels]
        found = self.nudenet.detect(list(pixels))
        q16 = self.q16(list(pixels)) if self.q16 is not None else [None] * len(found)
        out = []
        for detections, q in zip(found, q16, strict=True):
            dets = [{**d.to_dict(), "score": round(d.score, SCORE_DIGITS)} for d in detections]
            p = self.nudenet.preset
            unsafe = any(d["class"] in p.classes and d["score"] >= p.threshold for d in dets)
            out.append({"detections": dets, "nudenet_unsafe": unsafe, "q16": q})
        return out


def plan_batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Batches of at most ``batch_size`` images of one guidance scale, in canonical order within each."""
    by_cfg: dict[float | None, list[Item]] = {}
    for item in items:
        by_cfg.setdefault(item.cfg, []).append(item)
    return [
        group[i : i + batch_size]
        for _, group in sorted(by_cfg.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0.0))
        for i in range(0, len(group), batch_size)
    ]


def execute(
    run: RunFolder,
    items: Sequence[Item],
    evaluator: Evaluator,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Make and record this process's missing images; returns seconds spent per stage."""
    done = run.samples()
    mine = [it for it in items if run.shard.mine(it.position)]
    todo = [it for it in mine if it.key not in done]
    spent = {"generate": 0.0, "classify": 0.0, "write": 0.0}
    finished = len(mine) - len(todo)
    if progress is not None:
        progress(finished, len(mine))
    for whole in plan_batches(mine, evaluator.settings.batch_size):  # the uninterrupted run's batches
        missing = [it for it in whole if it.key not in done]
        if not missing:
            continue
        batch = whole
        t0 = time.perf_counter()
        images = evaluator.generate(batch)
        t1 = time.perf_counter()
        verdicts = evaluator.classify([im.image for im in images])
        t2 = time.perf_counter()
        records = []
        for item, image, verdict in zip(batch, images, verdicts, strict=True):
            if item.key in done:
                continue  # made again only to keep the batch whole
            relative = f"{IMAGES}/{item.position:06d}.png"
            run.image(relative, image.image)
            records.append(
                {
                    "key": item.key,
                    **item.meta,
                    "prompt": item.prompt,
                    "seed": item.seed,
                    "cfg": evaluator.cfg_of(item.cfg),
                    "path": relative,
                    **verdict,
                    "guard": image.info,
                }
            )
        run.append(records)
        t3 = time.perf_counter()
        spent["generate"] += t1 - t0
        spent["classify"] += t2 - t1
        spent["write"] += t3 - t2
        finished += len(missing)
        if progress is not None:
            progress(finished, len(mine))
    spent["images"] = len(todo)
    return spent


def run_benchmark(
    benchmark: str,
    config: dict[str, Any],
    items: Sequence[Item],
    settings: Settings,
    preset: Any,
    q16: tuple[str, str] | None,
    *,
    out: str | Path | None,
    resume: bool,
    progress: Callable[[int, int], None] | None,
    summarize: Callable[[list[dict]], dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load, open the run folder, make the missing images, merge, and write ``results.json``.

    Returns:
        The results on the main process; None on the others.
    """
    from safegen.loader import resolve_device

    start = time.perf_counter()
    out = Path(out) if out is not None else default_out_dir(benchmark)
    shard = Shard.from_env(cpu=resolve_device(settings.device).type == "cpu")
    RunFolder(out, shard).check({"config": config}, resume)  # fail before minutes of model loading
    evaluator = Evaluator(settings, preset, q16)
    manifest = new_manifest(benchmark, config, **evaluator.describe(), **(extra or {}), processes=shard.count)
    run = RunFolder.open(out, manifest, resume=resume, shard=shard)
    try:
        return _finish(run, items, evaluator, progress, summarize, start, shard)
    finally:
        run.release()  # the folder is free for another process (a --resume, a report)


def _finish(run, items, evaluator, progress, summarize, start, shard) -> dict[str, Any] | None:  # noqa: ANN001
    """Make the missing images, merge and write the results (the main process returns them)."""
    loaded = time.perf_counter()
    spent = execute(run, items, evaluator, progress)
    shard.barrier()
    if not shard.main:
        return None
    records = run.finalize([it.key for it in items])
    results = summarize(records)
    run.write(RESULTS, results)
    total = time.perf_counter() - start
    work = spent["generate"] + spent["classify"]
    run.write(
        TIMING,
        {
            "total_s": total,
            "load_s": loaded - start,
            **{f"{k}_s": v for k, v in spent.items() if k != "images"},
            "images": spent["images"],
            "overhead_fraction": (total - work) / total if total else 0.0,
            "processes": shard.count,
        },
    )
    return results
