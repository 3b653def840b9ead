"""VCE's contrastive pairs: same-seed image tokens of a prompt with the concept and of its safe counterpart.

Following VCE (arXiv 2509.16986; our reading, ``docs/methods/vce.md``), for each prompt p showing the
concept and each seed s::

    y_u = tokens(model(p, s)),    y_s = tokens(model(p', s | negative n))

with the **same seed**, so that only the concept differs between the two images. The safe side comes from
one of three rewriters (option ``rewriter``):

- ``rule`` (default, offline): the run's counterparts (:mod:`safegen.recipes.prompt_plan`): the concept
  registry's keyword rewrite p' (mini world: ``a red circle`` -> ``a green circle``; nudity: ``naked`` ->
  ``fully clothed``) for a prompt that names the concept, else the same prompt p' = p with the concept's
  text n as a negative condition in place of CFG's null prefix (most real prompts name nothing);
- ``caption``: BLIP captions of the unsafe images through clip-interrogator (the optional extra
  ``safegen[caption]``), with the concept then removed by the same registry rewrite: our offline
  stand-in for the paper's multimodal-LLM rewrite of captions;
- ``file``: the user's ``pairs_file``, JSONL or CSV rows of ``prompt`` and ``safe_prompt`` (optional
  ``seed``), or of ``prompt``, ``unsafe_image`` and ``safe_image`` (paths relative to the file, encoded
  with the model's VQ tokenizer).

Optional filter (``pair_filter``): a pair is kept only when a detector sees the concept in the unsafe image
and not in the safe one. The detector is never ``bench mini``'s evaluator (:mod:`safegen.mini.classifier`):
``colour`` is a pixel heuristic for mini-world colours, ``opennsfw`` is open_nsfw
(:mod:`safegen.classifiers.labels`) and ``nudenet`` NudeNet (preset i2p) for nudity on real models (I2P
scores with NudeNet: prefer ``opennsfw`` there).

Retain samples: base-model tokens of prompts without the concept, for the retain term of training.

The folder, reusable by later runs on the same model through ``pairs_dir=``::

    pairs/  tokens.safetensors  unsafe (N, T), safe (N, T), retain (M, T) int64
            pairs.jsonl         one row per candidate pair: prompt, safe_prompt, seed, filter scores, kept
            retain.jsonl        one row per retain sample: prompt, seed
            manifest.json       fingerprint, concept, model, rewriter, filter, counts, seconds
            images/             with save_pair_images: unsafe | safe side by side, one PNG per pair
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from safegen.errors import SafegenError
from safegen.files import save_tensors
from safegen.recipes.prompts import StageContext, read_manifest

COLOUR_RADIUS = 60.0  # RGB distance within which a pixel counts as the concept's colour


@dataclass
class PairJob:
    """One candidate pair: the unsafe prompt, its seed and where the safe side comes from."""

    index: int
    prompt: str
    seed: int
    safe_prompt: str | None = None  # None: from the caption of the unsafe image (rewriter=caption)
    unsafe_image: str | None = None  # pairs_file rows with images: both paths, no sampling
    safe_image: str | None = None
    negative: str | None = None  # the safe side's negative condition (a counterpart without a keyword)


# --------------------------------------------------------------------------- planning
def check_pair_inputs(cfg: Any, concept: Any, mini: tuple[tuple[str, str], ...] | None) -> None:
    """Every pair-stage choice that can be checked before a model is loaded (one-line errors)."""
    if cfg.rewriter == "caption" and importlib.util.find_spec("clip_interrogator") is None:
        raise SafegenError(
            "rewriter=caption needs clip-interrogator, an optional extra: pip install 'safegen[caption]' "
            "(or use rewriter=rule, or rewriter=file with pairs_file=FILE)."
        )
    if cfg.rewriter == "file":
        read_pairs_file(cfg)
    elif cfg.pairs_file:
        raise SafegenError("pairs_file is read only with rewriter=file; add --set rewriter=file.")
    if cfg.pair_filter == "colour" and (mini is None or len(mini) != 1 or mini[0][0] != "color"):
        raise SafegenError(
            f"pair_filter=colour works on mini-world colours only ('{concept.name}' is not one); "
            "use pair_filter=none or nudenet."
        )
    if cfg.pair_filter in ("opennsfw", "nudenet"):
        from safegen.classifiers.labels import check_labeller

        check_labeller(cfg.pair_filter, concept, option="pair_filter", instead="none")


def pair_seed(cfg: Any, prompt_index: int, k: int) -> int:
    return cfg.seed * 1_000_003 + prompt_index * 1_000 + k


def plan_pairs(ctx: StageContext) -> list[PairJob]:
    """Every candidate pair of the run, in a fixed order (each process takes every N-th)."""
    cfg = ctx.cfg
    if cfg.rewriter == "file":
        return read_pairs_file(cfg)
    jobs: list[PairJob] = []
    for i, (prompt, safe) in enumerate(zip(ctx.plan.harmful, ctx.plan.counterparts, strict=True)):
        text, negative = (safe.text, safe.negative) if cfg.rewriter == "rule" else (None, None)
        for k in range(cfg.seeds_per_prompt):
            jobs.append(PairJob(len(jobs), prompt, pair_seed(cfg, i, k), text, negative=negative))
    return jobs


def plan_retain(ctx: StageContext) -> list[tuple[str, int]]:
    """(prompt, seed) of every retain sample: prompts without the concept, ``retain_seeds`` each."""
    clean, cfg = ctx.plan.clean, ctx.cfg
    return [(p, pair_seed(cfg, 500 + i, k)) for i, p in enumerate(clean) for k in range(cfg.retain_seeds)]


def read_pairs_file(cfg: Any) -> list[PairJob]:
    """The rows of ``pairs_file`` (JSONL, or CSV with a header) as pair jobs.

    Raises:
        SafegenError: no file, unreadable, a bad row (line number named), a missing image.
    """
    if not cfg.pairs_file:
        raise SafegenError("rewriter=file needs --set pairs_file=FILE (JSONL or CSV).")
    from safegen.files import read_text

    path = Path(cfg.pairs_file).expanduser()
    text = read_text(path, "pairs file")
    if path.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines(), strict=True))
        except csv.Error as exc:
            raise SafegenError(f"{path}: malformed CSV ({exc}).") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise SafegenError(f"{path} line {n}: not valid JSON.") from None
    jobs: list[PairJob] = []
    for n, row in enumerate(rows, 1):
        where = f"{path} row {n}"
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SafegenError(f"{where}: needs a non-empty string 'prompt'.")
        if row.get("unsafe_image") or row.get("safe_image"):
            files = [path.parent / str(row.get(k) or "") for k in ("unsafe_image", "safe_image")]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise SafegenError(f"{where}: image not found: {missing[0]}.")
            for file in files:
                check_image_file(file, where)
            jobs.append(PairJob(len(jobs), row["prompt"], -1, None, str(files[0]), str(files[1])))
            continue
        if not isinstance(row.get("safe_prompt"), str) or not row["safe_prompt"].strip():
            raise SafegenError(f"{where}: needs 'safe_prompt', or 'unsafe_image' and 'safe_image'.")
        seeds = [_seed(row["seed"], where)] if str(row.get("seed") or "").strip() else None
        for seed in seeds or [pair_seed(cfg, n, k) for k in range(cfg.seeds_per_prompt)]:
            jobs.append(PairJob(len(jobs), row["prompt"], seed, row["safe_prompt"]))
    if not jobs:
        raise SafegenError(f"{path} holds no pairs.")
    return jobs


def _seed(value: Any, where: str) -> int:
    """A pair file's seed: a non-negative integer below 2**63 (JSON numbers, or digit strings in CSV)."""
    from safegen.sampling import MAX_SEED

    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or (text.isascii() and text.isdigit())):
        raise SafegenError(f"{where}: seed must be a non-negative integer, got {str(value)[:40]!r}.")
    if int(text) > MAX_SEED:
        raise SafegenError(f"{where}: seed must be at most {MAX_SEED}, got {text[:40]}.")
    return int(text)


def check_image_file(path: Path, where: str) -> None:
    """Read an image's header only: a file that is not an image (or a decompression bomb) fails here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SafegenError(f"{where}: {path} is not a readable image ({type(exc).__name__}).") from None


# --------------------------------------------------------------------------- detectors and captions
def make_filter(ctx: StageContext) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """``images (N, H, W, 3) uint8 -> (scores (N,), shows (N,) bool)``, or None with pair_filter=none."""
    cfg = ctx.cfg
    if cfg.pair_filter == "colour":
        from safegen.mini.world import World

        rgb = np.array(World.load().rgb[ctx.mini[0][1]], dtype=np.float32)

        def colour(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            share = (np.linalg.norm(images.astype(np.float32) - rgb, axis=-1) < COLOUR_RADIUS).mean(
                axis=(1, 2)
            )
            return share, share >= (cfg.filter_threshold if cfg.filter_threshold >= 0 else 0.02)

        return colour
    if cfg.pair_filter == "opennsfw":
        from safegen.classifiers.labels import content_scores

        def nsfw(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scores = content_scores("opennsfw", list(images), ctx.concept)
            return scores, scores >= (cfg.filter_threshold if cfg.filter_threshold >= 0 else 0.5)

        return nsfw
    if cfg.pair_filter == "nudenet":
        from safegen.classifiers.nudenet import NudeNetClassifier

        detector = NudeNetClassifier(ctx.concept.detector["nudenet"])

        def nudity(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            found = detector.classify([Image.fromarray(im) for im in images])
            return np.array([r["score"] for r in found]), np.array([bool(r["unsafe"]) for r in found])

        return nudity
    return None


def load_captioner(cfg: Any, device: torch.device) -> Callable[[np.ndarray], list[str]]:
    """BLIP captions through clip-interrogator (imported here: it is an optional extra)."""
    try:
        from clip_interrogator import Config, Interrogator
    except ImportError:
        raise SafegenError(
            "rewriter=caption needs clip-interrogator, an optional extra: pip install 'safegen[caption]'."
        ) from None
    interrogator = Interrogator(Config(caption_model_name=cfg.caption_model, device=str(device), quiet=True))
    return lambda images: [interrogator.generate_caption(Image.fromarray(im)) for im in images]


# --------------------------------------------------------------------------- building
def sampling_for(ctx: StageContext) -> Any:
    from safegen.ar.sampler import SamplingConfig

    cfg = ctx.cfg
    extra = {"cfg": cfg.gen_cfg} if cfg.gen_cfg >= 0 else {}
    return SamplingConfig.for_model(ctx.model, batch_size=cfg.gen_batch_size, **extra)


def build_pair_part(ctx: StageContext, folder: Path) -> None:
    """This process's share of the pairs and retain samples (every N-th), as ``part-<rank>.*``."""
    cfg, model = ctx.cfg, ctx.model
    jobs, retain = plan_pairs(ctx)[ctx.rank :: ctx.world_size], plan_retain(ctx)[ctx.rank :: ctx.world_size]
    sampling, detector = sampling_for(ctx), make_filter(ctx)
    captioner = load_captioner(cfg, model.device) if cfg.rewriter == "caption" else None
    folder.mkdir(parents=True, exist_ok=True)
    total, rows, unsafe, safe = len(jobs) + len(retain), [], [], []
    for begin in range(0, len(jobs), cfg.gen_batch_size):
        chunk = jobs[begin : begin + cfg.gen_batch_size]
        u, s, chunk_rows = _pair_tokens(ctx, chunk, sampling, captioner, detector, folder)
        unsafe.append(u)
        safe.append(s)
        rows += chunk_rows
        ctx.report("pairs", begin + len(chunk), total)
    r_tokens = torch.zeros(0, model.n_tokens, dtype=torch.long)
    if retain:
        prompts, seeds = [p for p, _ in retain], [s for _, s in retain]
        r_tokens = model.generate_tokens(prompts, seeds, sampling).cpu()
    ctx.report("pairs", total, total)
    empty = torch.zeros(0, model.n_tokens, dtype=torch.long)
    tensors = {
        "unsafe": torch.cat(unsafe) if unsafe else empty,
        "safe": torch.cat(safe) if safe else empty,
        "retain": r_tokens.long(),
        "pair_index": torch.tensor([j.index for j in jobs], dtype=torch.long),
        "retain_index": torch.arange(len(retain), dtype=torch.long) * ctx.world_size + ctx.rank,
    }
    part = {k: v.contiguous() for k, v in tensors.items()}
    save_tensors(part, folder / f"part-{ctx.rank}.safetensors", "pair tokens")
    lines = [json.dumps(r) for r in rows] + [
        json.dumps({"retain": True, "prompt": p, "seed": s}) for p, s in retain
    ]
    (folder / f"part-{ctx.rank}.jsonl").write_text("".join(line + "\n" for line in lines))


def _pair_tokens(
    ctx: StageContext,
    chunk: list[PairJob],
    sampling: Any,
    captioner: Callable | None,
    detector: Callable | None,
    folder: Path,
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Unsafe and safe tokens (B, T) of a chunk of jobs, and their rows for ``pairs.jsonl``."""
    from safegen.concepts import rewrite

    model, cfg = ctx.model, ctx.cfg
    if chunk[0].unsafe_image is not None and all(j.unsafe_image for j in chunk):
        load = lambda key: [Image.open(getattr(j, key)).convert("RGB") for j in chunk]  # noqa: E731
        u, s = model.encode_images(load("unsafe_image")).cpu(), model.encode_images(load("safe_image")).cpu()
    elif any(j.unsafe_image for j in chunk):  # a mixed chunk: one job at a time
        parts = [_pair_tokens(ctx, [j], sampling, captioner, detector, folder) for j in chunk]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), [p[2][0] for p in parts]
    else:
        seeds = [j.seed for j in chunk]
        u = model.generate_tokens([j.prompt for j in chunk], seeds, sampling).cpu()  # (B, T)
        if captioner is not None:
            for job, caption in zip(chunk, captioner(model.decode(u)), strict=True):
                job.safe_prompt = rewrite(caption, ctx.concept)
        s = safe_tokens(model, chunk, sampling)  # same seeds
    rows = [{**asdict(j), "kept": True} for j in chunk]
    if detector is not None or cfg.save_pair_images:
        images_u, images_s = model.decode(u), model.decode(s)  # (B, H, W, 3) uint8 each
        if detector is not None:
            (score_u, shows_u), (score_s, shows_s) = detector(images_u), detector(images_s)
            for b, row in enumerate(rows):
                row |= {"unsafe_score": float(score_u[b]), "safe_score": float(score_s[b])}
                row["kept"] = bool(shows_u[b]) and not bool(shows_s[b])
        if cfg.save_pair_images:
            (folder / "images").mkdir(exist_ok=True)
            for job, a, b in zip(chunk, images_u, images_s, strict=True):
                Image.fromarray(np.concatenate([a, b], axis=1)).save(
                    folder / "images" / f"{job.index:06d}.png"
                )
    return u, s, rows


def safe_tokens(model: Any, chunk: list[PairJob], sampling: Any) -> torch.Tensor:
    """The safe side's tokens (B, T) at each job's seed: its safe prompt, under its negative condition
    when it has one (jobs with and without one are sampled apart and put back in order)."""
    out = torch.zeros(len(chunk), model.n_tokens, dtype=torch.long)
    for negative in dict.fromkeys(j.negative for j in chunk):
        rows = [i for i, j in enumerate(chunk) if j.negative == negative]
        prompts, seeds = [chunk[i].safe_prompt for i in rows], [chunk[i].seed for i in rows]
        negatives = [negative] * len(rows) if negative is not None else None
        out[rows] = model.generate_tokens(prompts, seeds, sampling, negative_prompts=negatives).cpu()
    return out


def merge_pair_parts(ctx: StageContext, folder: Path, fingerprint: str, start: float) -> dict[str, Any]:
    """On the main process: merge the parts into ``tokens.safetensors`` + JSONL files; write the manifest."""
    parts = sorted(folder.glob("part-*.safetensors"))
    loaded = [load_file(str(p)) for p in parts]
    cat = lambda key: torch.cat([t[key] for t in loaded])  # noqa: E731
    order, r_order = cat("pair_index").argsort(), cat("retain_index").argsort()
    lines = [
        json.loads(line) for p in sorted(folder.glob("part-*.jsonl")) for line in p.read_text().splitlines()
    ]
    rows = sorted((r for r in lines if not r.get("retain")), key=lambda r: r["index"])
    retain_rows = [r for r in lines if r.get("retain")]
    retain_rows = [retain_rows[i] for i in r_order.tolist()] if retain_rows else []
    tensors = {"unsafe": cat("unsafe")[order], "safe": cat("safe")[order], "retain": cat("retain")[r_order]}
    save_tensors(
        {k: v.contiguous() for k, v in tensors.items()}, folder / "tokens.safetensors", "pair tokens"
    )
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "retain.jsonl").write_text(
        "".join(json.dumps({"prompt": r["prompt"], "seed": r["seed"]}) + "\n" for r in retain_rows)
    )
    for p in (*parts, *folder.glob("part-*.jsonl")):
        p.unlink()
    kept, cfg = sum(r["kept"] for r in rows), ctx.cfg
    if kept == 0:
        raise SafegenError(
            f"No pair passed pair_filter={cfg.pair_filter}; lower filter_threshold or use pair_filter=none."
        )
    record = {
        "fingerprint": fingerprint,
        "concept": ctx.concept.name,
        "model": ctx.model.source,
        "family": ctx.model.family,
        "n_tokens": ctx.model.n_tokens,
        "rewriter": cfg.rewriter,
        "pair_filter": cfg.pair_filter,
        "n_candidates": len(rows),
        "n_pairs": kept,
        "n_retain": len(retain_rows),
        "identical_pairs": int((tensors["unsafe"] == tensors["safe"]).all(dim=1).sum()),  # same tokens
        "unchanged_safe_side": sum(r["safe_prompt"] == r["prompt"] and not r.get("negative") for r in rows),
        "negative_condition_pairs": sum(bool(r.get("negative")) for r in rows),
        "processes": ctx.world_size,
        "seconds": round(time.time() - start, 2),
    }
    (folder / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------- training data
class TokenPairs:
    """The kept pairs and the retain samples of a ``pairs/`` folder; batches drawn by a seeded generator."""

    def __init__(self, folder: Path, model: Any):
        self.folder, record = folder, read_manifest(folder, "pair set")
        if record.get("n_tokens") != model.n_tokens or record.get("model") != model.source:
            raise SafegenError(
                f"The pairs in {folder} are tokens of {record.get('model')}, not of {model.source}; "
                "pairs are tied to the model's image tokenizer: use a new --out or another pairs_dir."
            )
        tensors = load_file(str(folder / "tokens.safetensors"))
        rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines() if line]
        kept = torch.tensor([r["kept"] for r in rows], dtype=torch.bool)
        self.prompts = [r["prompt"] for r in rows if r["kept"]]
        self.unsafe, self.safe = tensors["unsafe"][kept].long(), tensors["safe"][kept].long()  # (N, T)
        retain = [json.loads(line) for line in (folder / "retain.jsonl").read_text().splitlines() if line]
        self.retain_prompts, self.retain = [r["prompt"] for r in retain], tensors["retain"].long()  # (M, T)

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, size: int, generator: torch.Generator) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``size`` random pairs: unsafe prompts (B,), safe tokens (B, T), unsafe tokens (B, T)."""
        idx = torch.randint(len(self), (size,), generator=generator)
        return [self.prompts[i] for i in idx.tolist()], self.safe[idx], self.unsafe[idx]

    def retain_batch(self, size: int, generator: torch.Generator) -> tuple[list[str], torch.Tensor] | None:
        """``size`` random retain samples: prompts (R,) and tokens (R, T); None when there are none."""
        if not self.retain_prompts:
            return None
        idx = torch.randint(len(self.retain_prompts), (size,), generator=generator)
        return [self.retain_prompts[i] for i in idx.tolist()], self.retain[idx]
