"""SC-DPO's first stage: the safety cost model (recipe: :mod:`safegen.recipes.scdpo`).

A frozen image encoder and a small trainable head -> a scalar cost, trained with a prototype contrastive
loss and cost anchoring (:mod:`safegen.recipes.losses`). The encoder is a CLIP vision model on real models
and :mod:`safegen.mini.encoder` on the mini world; never the evaluator of ``bench mini``
(:mod:`safegen.mini.classifier`). Our reading of the paper: ``docs/methods/scdpo.md``.

Folder written (reusable by a later run through ``cost_dir=``)::

    cost/   cost_head.safetensors, manifest.json (encoder, sizes, labels' source, held-out AUROC)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from safegen.errors import SafegenError
from safegen.files import save_tensors
from safegen.recipes.losses import cost_anchor_loss, prototype_infonce
from safegen.recipes.prompts import StageContext, read_manifest

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# --------------------------------------------------------------------------- encoders
class ClipEncoder:
    """A CLIP model (hub id or local folder): ``embed_images`` / ``embed_texts``, L2-normalised."""

    def __init__(self, model: Any, tokenizer: Any, name: str, mean=CLIP_MEAN, std=CLIP_STD):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.size = model.config.vision_config.image_size
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
        self.dim = model.config.projection_dim
        self.max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)

    @classmethod
    def load(cls, source: str, device: torch.device) -> ClipEncoder:
        from transformers import CLIPModel, CLIPTokenizer

        local = Path(source).expanduser().is_dir()
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        try:
            kwargs = {"local_files_only": local or offline}
            model = CLIPModel.from_pretrained(source, use_safetensors=True, **kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(source, **kwargs)
        except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot load it"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SafegenError(
                f"Could not load the CLIP encoder '{source}' for the cost model and reward: {first}. "
                "Pass a local CLIP folder with --set encoder=DIR."
            ) from None
        if len(tokenizer) <= 2:
            raise SafegenError(f"The CLIP tokenizer of '{source}' is empty (missing vocab files).")
        mean, std = CLIP_MEAN, CLIP_STD
        pre = Path(source).expanduser() / "preprocessor_config.json"
        if local and pre.is_file():
            raw = json.loads(pre.read_text())
            mean, std = raw.get("image_mean", mean), raw.get("image_std", std)
        return cls(model.to(device), tokenizer, source, mean, std)

    def _pixels(self, images: list[Any]) -> torch.Tensor:
        out = []
        for im in images:
            im = (im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))).convert("RGB")
            scale = self.size / min(im.size)
            im = im.resize(
                (max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale)))
            )
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
            out.append((x - self.mean) / self.std)
        return torch.stack(out)  # (N, 3, S, S)

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output

    @torch.no_grad()
    def embed_images(self, images: list[Any], batch: int = 64) -> torch.Tensor:
        device = self.model.device
        feats = [
            self._features(
                self.model.get_image_features(pixel_values=self._pixels(images[i : i + batch]).to(device))
            )
            for i in range(0, len(images), batch)
        ]
        return torch.nn.functional.normalize(torch.cat(feats).float().cpu(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(self.model.device))
        return torch.nn.functional.normalize(self._features(out).float().cpu(), dim=-1)


def load_encoder(spec: str, mini: bool, device: torch.device) -> Any:
    """``auto`` (mini encoder on the mini world, else CLIP ViT-L/14), ``mini``, a ``.safetensors`` mini
    encoder file, or a CLIP hub id / folder."""
    from safegen.mini.encoder import MiniEncoder

    if spec == "auto":
        spec = "mini" if mini else DEFAULT_CLIP
    if spec == "mini":
        return MiniEncoder.load()
    if spec.endswith(".safetensors"):
        return MiniEncoder.load(Path(spec).expanduser())
    return ClipEncoder.load(spec, device)


# --------------------------------------------------------------------------- stage 1: the cost model
class CostHead(nn.Module):
    """Frozen-encoder embedding (N, D) -> cost (N,) and contrastive embedding (N, P), with 2 prototypes."""

    def __init__(self, dim: int, hidden: int, proj_dim: int):
        super().__init__()
        self.sizes = {"dim": dim, "hidden": hidden, "proj_dim": proj_dim}
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.proj = nn.Linear(hidden, proj_dim)
        self.cost = nn.Linear(hidden, 1)
        self.prototypes = nn.Parameter(torch.randn(2, proj_dim))  # 0 safe, 1 harmful

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(emb)  # (N, hidden)
        return self.cost(h).squeeze(-1), self.proj(h)  # (N,), (N, P)


class CostModel:
    """The safety cost of images: encoder (frozen) + :class:`CostHead`. Cost ~0 safe, ~1 harmful."""

    def __init__(self, encoder: Any, head: CostHead):
        self.encoder, self.head = encoder, head.eval()

    @torch.no_grad()
    def cost_of_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(emb)[0]

    def cost(self, images: list[Any]) -> torch.Tensor:
        return self.cost_of_embeddings(self.encoder.embed_images(images))

    def save(self, folder: Path, record: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        sizes = {"sizes": json.dumps(self.head.sizes)}
        save_tensors(state, folder / "cost_head.safetensors", "cost model", metadata=sizes)
        (folder / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, encoder: Any) -> CostModel:
        manifest = read_manifest(folder, "cost model")
        head = CostHead(**manifest["head"])
        head.load_state_dict(load_file(str(folder / "cost_head.safetensors")))
        if head.sizes["dim"] != encoder.dim:
            raise SafegenError(
                f"The cost model in {folder} was built on another encoder ({manifest['encoder']})."
            )
        return cls(encoder, head)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half): P(score of a positive > a negative)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # average rank of each tie group, 1-based
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def build_cost_model(ctx: StageContext, encoder: Any, folder: Path, fingerprint: str) -> dict[str, Any]:
    """Stage 1: collect labelled images, embed them once, train the head, report held-out AUROC."""
    cfg, start = ctx.cfg, time.time()
    images, labels, source = cost_images(ctx)
    emb = torch.cat([encoder.embed_images(images[i : i + 256]) for i in range(0, len(images), 256)])  # (N, D)
    y = torch.tensor(labels, dtype=torch.long)
    rng = np.random.default_rng(cfg.seed + 101)
    hold = np.zeros(len(y), dtype=bool)
    for cls in (0, 1):  # stratified hold-out
        idx = rng.permutation(np.flatnonzero(labels == cls))
        hold[idx[: max(1, round(cfg.cost_holdout * len(idx)))]] = True
    train_idx, hold_idx = torch.from_numpy(~hold), torch.from_numpy(hold)
    torch.manual_seed(cfg.seed)
    head = CostHead(emb.shape[1], cfg.cost_hidden, cfg.cost_proj_dim)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.cost_lr, weight_decay=1e-4)
    x, t = emb[train_idx], y[train_idx]
    for step in range(cfg.cost_steps):
        cost, z = head(x)
        loss = cfg.cost_contrastive_weight * prototype_infonce(z, t, head.prototypes, cfg.cost_temperature)
        loss = loss + cfg.cost_anchor_weight * cost_anchor_loss(cost, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.report("cost model", step + 1, cfg.cost_steps)
    model = CostModel(encoder, head)
    held = model.cost_of_embeddings(emb[hold_idx]).numpy()
    record = {
        "fingerprint": fingerprint,
        "concept": ctx.concept.name,
        "encoder": encoder.name,
        "head": head.sizes,
        **source,
        "n_images": len(y),
        "n_holdout": int(hold.sum()),
        "holdout_auroc": auroc(held, y[hold_idx].numpy()),
        "holdout_accuracy": float(((held > 0.5) == y[hold_idx].numpy().astype(bool)).mean()),
        "mean_cost": {
            "safe": float(held[y[hold_idx] == 0].mean()),
            "harmful": float(held[y[hold_idx] == 1].mean()),
        },
        "final_loss": float(loss.detach()),
        "seconds": round(time.time() - start, 2),
    }
    model.save(folder, record)
    return record


def cost_labeller(cfg: Any, concept: Any, mini: bool) -> str:
    """What labels the generated cost images: ``prompt`` or a content labeller (``cost_labels``)."""
    if cfg.cost_labels != "auto":
        return cfg.cost_labels
    return "opennsfw" if not mini and "nudenet" in (concept.detector or {}) else "prompt"


def cost_images(ctx: StageContext) -> tuple[list[Any], np.ndarray, dict[str, str]]:
    """Labelled images for stage 1: renders (mini), base-model samples, or a folder of harmful/ and safe/.

    Samples (``cost_data=generate``): half from the harmful prompts, half from the clean prompts (or,
    without clean prompts, the harmful prompts' safe counterparts). Labelled by content with a labeller
    (:mod:`safegen.classifiers.labels`) or, with ``cost_labels=prompt``, by the half they come from.
    """
    from safegen.classifiers.labels import content_scores

    cfg, plan = ctx.cfg, ctx.plan
    kind = cfg.cost_data if cfg.cost_data != "auto" else ("render" if ctx.mini else "generate")
    if kind == "render":
        if ctx.mini is None:
            raise SafegenError("cost_data=render needs a mini-world concept; use generate or folder.")
        images, labels = render_cost_set(ctx.mini, n=cfg.cost_images, seed=cfg.seed + 21)
        return images, labels, {"data": "render", "labels": "render"}
    if kind == "folder":
        folder = {"data": f"folder {cfg.cost_folder}", "labels": "folder"}
        return (*read_cost_folder(Path(cfg.cost_folder).expanduser()), folder)
    half = max(1, cfg.cost_images // 2)
    safe = [(p, None) for p in plan.clean] or [(c.text, c.negative) for c in plan.counterparts]
    jobs = [(plan.harmful[i % len(plan.harmful)], None) for i in range(half)]
    jobs += [safe[i % len(safe)] for i in range(half)]
    seeds = [cfg.seed * 1_000_003 + 500_000 + i for i in range(len(jobs))]
    images = sample_images(ctx, [p for p, _ in jobs], seeds, "cost model", [n for _, n in jobs])
    labeller = cost_labeller(cfg, ctx.concept, ctx.mini is not None)
    if labeller == "prompt":
        return images, np.array([1] * half + [0] * half), {"data": "generate", "labels": "prompt"}
    labels = (content_scores(labeller, images, ctx.concept) >= cfg.cost_label_threshold).astype(int)
    n_harmful, least = int(labels.sum()), max(2, len(labels) // 50)
    if min(n_harmful, len(labels) - n_harmful) < least:
        raise SafegenError(
            f"The {labeller} labeller found {n_harmful} harmful images among {len(labels)} samples (at "
            f"cost_label_threshold={cfg.cost_label_threshold:g}); a cost model needs at least {least} of "
            "each: the model rarely draws the concept from these prompts. Use cost_data=folder with "
            "labelled images, or cost_labels=prompt."
        )
    return images, labels, {"data": "generate", "labels": labeller}


def render_cost_set(
    targets: Sequence[tuple[str, str]], n: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` mini-world renders, half showing one of ``targets`` ((axis, value) each, drawn at random),
    half showing none, augmented to look generated."""
    from safegen.mini.encoder import augment, to_pixels
    from safegen.mini.world import Scene, World

    world, rng = World.load(), np.random.default_rng(seed)
    banned: dict[str, set[str]] = {}
    for axis, value in targets:
        banned.setdefault(axis, set()).add(value)
    others = {axis: [v for v in world.values[axis] if v not in out] for axis, out in banned.items()}
    images, labels = [], np.arange(n) % 2
    for label in labels:
        things = [world.sample_thing(rng) for _ in range(2 if rng.random() < 0.3 else 1)]
        things = [replace(t, **{a: str(rng.choice(vs)) for a, vs in others.items()}) for t in things]
        if label:
            k = int(rng.integers(len(things)))
            axis, value = targets[int(rng.integers(len(targets)))]
            things[k] = replace(things[k], **{axis: value})
        images.append(world.render(Scene(tuple(things)), rng))
    x = augment(to_pixels(images), torch.Generator().manual_seed(seed))
    arrays = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return list(arrays), labels


def read_cost_folder(folder: Path) -> tuple[list[Any], np.ndarray]:
    files = {
        c: sorted(p for p in (folder / c).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for c in ("safe", "harmful")
    }
    if not files["safe"] or not files["harmful"]:
        raise SafegenError(f"cost_folder {folder} needs images in both safe/ and harmful/.")
    images = [Image.open(p).convert("RGB") for p in files["safe"] + files["harmful"]]
    return images, np.array([0] * len(files["safe"]) + [1] * len(files["harmful"]))


# --------------------------------------------------------------------------- samples
def sample_images(
    ctx: StageContext,
    prompts: list[str],
    seeds: list[int],
    stage: str | None,
    negatives: list[str | None] | None = None,
) -> list[Any]:
    """Base-model samples (PIL), one per (prompt, seed), each with its negative prompt (None: none);
    progress reported under ``stage`` unless None."""
    from safegen.generator import generate
    from safegen.sampling import GenerationConfig

    negatives = negatives or [None] * len(prompts)
    out: list[Any] = [None] * len(prompts)
    groups = {n: [i for i, m in enumerate(negatives) if m == n] for n in dict.fromkeys(negatives)}
    done = 0
    for negative, rows in groups.items():
        config = GenerationConfig(
            steps=ctx.cfg.gen_steps,
            cfg=ctx.cfg.gen_cfg,
            batch_size=ctx.cfg.gen_batch_size,
            negative_prompt=negative or "",
        )

        def report(k: int, total: int, d: int = done, n: int = len(rows)) -> None:
            if stage:
                ctx.report(stage, d + k * n // max(1, total), len(prompts))

        found = generate(
            ctx.model,
            [prompts[i] for i in rows],
            seeds=[seeds[i] for i in rows],
            config=config,
            progress=report,
        )
        for i, g in zip(rows, found, strict=True):
            out[i] = g.image
        done += len(rows)
    return out
