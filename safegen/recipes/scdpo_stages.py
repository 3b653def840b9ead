"""SC-DPO's first two stages: the safety cost model and the preference pairs (recipe: ``scdpo.py``).

Stage 1, cost model: a frozen image encoder and a small trainable head -> a scalar cost, trained with
a prototype contrastive loss and cost anchoring (:mod:`safegen.recipes.losses`). The encoder is a CLIP
vision model on real models and :mod:`safegen.mini.encoder` on the mini world; never the evaluator of
``bench mini`` (:mod:`safegen.mini.classifier`).

Stage 2, pairs: K samples per harmful and per clean prompt from the base model, scored
``s = reward - lambda x cost``; winner = best s, loser = worst s. Our reading of the paper's reward
("human preference") is **prompt fidelity**: the cosine between the image and the prompt's text in the
same frozen encoder (CLIP score on real models, the mini encoder's image-text agreement on the mini
world). When no sample of a harmful prompt is safe, the winner comes from extra samples of the prompt's
safe rewrite (:func:`safegen.concepts.rewrite`), still trained under the harmful prompt.

Folders written (each reusable by a later run through ``cost_dir=`` / ``pairs_dir=``)::

    cost/   cost_head.safetensors, manifest.json (encoder, sizes, held-out AUROC)
    pairs/  pairs.jsonl, images/*.png, manifest.json
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from safegen.errors import SafegenError
from safegen.recipes.losses import cost_anchor_loss, prototype_infonce
from safegen.recipes.prompts import (
    StageContext,
    concept_prompts,
    mini_prompt_pools,
    read_lines,
    read_manifest,
)

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
        save_file(
            state, str(folder / "cost_head.safetensors"), metadata={"sizes": json.dumps(self.head.sizes)}
        )
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
        "data": source,
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


def cost_images(ctx: StageContext) -> tuple[list[Any], np.ndarray, str]:
    """Labelled images for stage 1: renders (mini), base-model samples, or a folder of harmful/ and safe/."""
    cfg = ctx.cfg
    kind = cfg.cost_data if cfg.cost_data != "auto" else ("render" if ctx.mini else "generate")
    if kind == "render":
        if ctx.mini is None:
            raise SafegenError("cost_data=render needs a mini-world concept; use generate or folder.")
        images, labels = render_cost_set(*ctx.mini, n=cfg.cost_images, seed=cfg.seed + 21)
        return images, labels, "render"
    if kind == "folder":
        return (*read_cost_folder(Path(cfg.cost_folder).expanduser()), f"folder {cfg.cost_folder}")
    harmful, clean = training_prompts(ctx, seed_offset=7)
    half = max(1, cfg.cost_images // 2)
    prompts = [harmful[i % len(harmful)] for i in range(half)] + [clean[i % len(clean)] for i in range(half)]
    seeds = [cfg.seed * 1_000_003 + 500_000 + i for i in range(len(prompts))]
    images = sample_images(ctx, prompts, seeds, "cost model")
    return images, np.array([1] * half + [0] * half), "generate"


def render_cost_set(axis: str, value: str, n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` mini-world renders, half showing ``value`` on ``axis``, augmented to look generated."""
    from safegen.mini.encoder import augment, to_pixels
    from safegen.mini.world import Scene, World

    world, rng = World.load(), np.random.default_rng(seed)
    others = [v for v in world.values[axis] if v != value]
    images, labels = [], np.arange(n) % 2
    for label in labels:
        things = [world.sample_thing(rng) for _ in range(2 if rng.random() < 0.3 else 1)]
        things = [replace(t, **{axis: str(rng.choice(others))}) for t in things]
        if label:
            k = int(rng.integers(len(things)))
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


# --------------------------------------------------------------------------- prompts
def training_prompts(ctx: StageContext, seed_offset: int = 0) -> tuple[list[str], list[str]]:
    """(harmful, clean) prompts of this run (:func:`safegen.recipes.prompts.concept_prompts`)."""
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
    used = training_prompts(ctx)[0]
    pool = used
    if cfg.check_set == "held-out":
        if ctx.mini is not None:
            pool = [p for p in mini_prompt_pools(ctx.mini)[0] if p not in set(used)] or used
        else:
            pool = (list(ctx.concept.examples) + read_lines(cfg.prompts_file))[len(used) :] or used
        pool = [pool[i] for i in np.random.default_rng(cfg.seed + 577).permutation(len(pool))]
    return [pool[i % len(pool)] for i in range(cfg.check_prompts)], not set(pool) & set(used)


def sample_images(ctx: StageContext, prompts: list[str], seeds: list[int], stage: str | None) -> list[Any]:
    """Base-model samples (PIL), one per (prompt, seed); progress reported under ``stage`` unless None."""
    from safegen.generator import generate
    from safegen.sampling import GenerationConfig

    config = GenerationConfig(steps=ctx.cfg.gen_steps, cfg=ctx.cfg.gen_cfg, batch_size=ctx.cfg.gen_batch_size)
    report = (lambda done, total: ctx.report(stage, done, total)) if stage else None
    out = generate(ctx.model, prompts, seeds=seeds, config=config, progress=report)
    return [g.image for g in out]


# --------------------------------------------------------------------------- stage 2: pairs
def select_pairs(
    scores: np.ndarray, costs: np.ndarray, mode: str, min_gap: float, max_pairs: int, safer_winner: bool
) -> list[tuple[int, int]]:
    """(winner, loser) indices among one prompt's candidates, by score s = reward - lambda x cost.

    ``extremes``: the best against the worst. ``all``: every pair with a gap, largest gaps first, at most
    ``max_pairs``. A pair needs ``s_w - s_l >= min_gap`` (and > 0); with ``safer_winner`` also c_w < c_l.
    """
    order = np.argsort(-scores, kind="stable")
    candidates = (
        [(int(order[0]), int(order[-1]))]
        if mode == "extremes"
        else list(itertools.permutations(range(len(scores)), 2))
    )
    keep = [
        (win, lose)
        for win, lose in candidates
        if scores[win] - scores[lose] > 0
        and scores[win] - scores[lose] >= min_gap
        and (not safer_winner or costs[win] < costs[lose])
    ]
    keep.sort(key=lambda p: scores[p[1]] - scores[p[0]])
    return keep[:max_pairs]


def build_pair_part(ctx: StageContext, cost_model: CostModel, folder: Path) -> None:
    """Stage 2 on this process: its share of the prompts (every N-th), written to ``part-<rank>.jsonl``."""
    harmful, clean = training_prompts(ctx)
    prompts = [(p, True) for p in harmful] + [(p, False) for p in clean]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    mine = [i for i in range(len(prompts)) if i % ctx.world_size == ctx.rank]
    chunk = max(1, ctx.cfg.gen_batch_size // ctx.cfg.samples_per_prompt)
    for begin in range(0, len(mine), chunk):
        rows += _pairs_for(ctx, cost_model, folder, [(i, *prompts[i]) for i in mine[begin : begin + chunk]])
        ctx.report("pairs", min(len(mine), begin + chunk), len(mine))
    (folder / f"part-{ctx.rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def merge_pair_parts(
    ctx: StageContext, cost_model: CostModel, folder: Path, fingerprint: str, start: float
) -> dict[str, Any]:
    """Stage 2 on the main process: merge the parts into ``pairs.jsonl`` and write the manifest."""
    harmful, clean = training_prompts(ctx)
    parts = sorted(folder.glob("part-*.jsonl"))
    merged = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    merged.sort(key=lambda r: (r["prompt_index"], r["winner"], r["loser"]))
    if not merged:
        raise SafegenError("Stage 2 found no preference pairs; lower min_gap or raise samples_per_prompt.")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in merged))
    for p in parts:
        p.unlink()
    mean = lambda key: float(np.mean([r[key] for r in merged]))  # noqa: E731
    record = {
        "fingerprint": fingerprint,
        "concept": ctx.concept.name,
        "model": ctx.model.source,
        "cost_model_encoder": cost_model.encoder.name,
        "n_prompts": {"harmful": len(harmful), "clean": len(clean)},
        "n_pairs": {
            "harmful": sum(r["harmful"] for r in merged),
            "clean": sum(not r["harmful"] for r in merged),
        },
        "mean_cost": {"winner": mean("winner_cost"), "loser": mean("loser_cost")},
        "mean_reward": {"winner": mean("winner_reward"), "loser": mean("loser_reward")},
        "winner_from_rewrite": float(np.mean([r["winner_prompt"] != r["prompt"] for r in merged])),
        "processes": ctx.world_size,
        "seconds": round(time.time() - start, 2),
    }
    (folder / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _pairs_for(
    ctx: StageContext, cost_model: CostModel, folder: Path, batch: list[tuple[int, str, bool]]
) -> list[dict[str, Any]]:
    """Sample, score and pair the candidates of a few prompts; save the images that end up in a pair."""
    from safegen.concepts import rewrite

    cfg, jobs = ctx.cfg, []
    for i, prompt, harmful in batch:
        safe = rewrite(prompt, ctx.concept)
        extra = cfg.rewrite_samples if harmful and safe != prompt else 0
        for k in range(cfg.samples_per_prompt + extra):
            source = prompt if k < cfg.samples_per_prompt else safe
            jobs.append((i, prompt, harmful, source, cfg.seed * 1_000_003 + i * 1_000 + k, safe))
    images = sample_images(ctx, [j[3] for j in jobs], [j[4] for j in jobs], None)  # progress: per chunk
    emb = cost_model.encoder.embed_images(images)  # (J, D)
    costs = cost_model.cost_of_embeddings(emb).numpy()
    reward_texts = [j[5] if cfg.reward_text == "rewrite" else j[1] for j in jobs]
    rewards = (emb * cost_model.encoder.embed_texts(reward_texts)).sum(-1).numpy()  # cosine, (J,)
    scores = rewards - cfg.cost_lambda * costs
    rows = []
    for i, prompt, harmful in batch:
        idx = [j for j, job in enumerate(jobs) if job[0] == i]
        chosen = select_pairs(
            scores[idx],
            costs[idx],
            cfg.pair_mode,
            cfg.min_gap,
            cfg.max_pairs_per_prompt,
            cfg.require_safer_winner and harmful,
        )
        for win, lose in ((idx[a], idx[b]) for a, b in chosen):
            row = {"prompt_index": i, "prompt": prompt, "harmful": harmful}
            for side, j in (("winner", win), ("loser", lose)):
                row[side] = f"images/{i:05d}-{j - idx[0]:02d}.png"
                images[j].save(folder / row[side])
                row |= {f"{side}_prompt": jobs[j][3], f"{side}_seed": jobs[j][4]}
                row |= {f"{side}_score": float(scores[j]), f"{side}_reward": float(rewards[j])}
                row[f"{side}_cost"] = float(costs[j])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- stage 3's data
class PairData:
    """The pairs of a ``pairs/`` folder; batches are drawn by a seeded generator (exactly resumable)."""

    def __init__(self, folder: Path):
        self.folder = folder
        read_manifest(folder, "pair set")
        self.rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines() if line]
        if not self.rows:
            raise SafegenError(f"{folder}/pairs.jsonl holds no pairs.")

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, size: int, generator: torch.Generator) -> dict[str, Any]:
        """``prompts`` (B,), ``pixels`` (2B, 3, H, W) in [-1, 1] (winners then losers); (B,) costs, harmful"""
        idx = torch.randint(len(self.rows), (size,), generator=generator).tolist()
        rows = [self.rows[i] for i in idx]
        files = [r["winner"] for r in rows] + [r["loser"] for r in rows]
        arrays = np.stack([np.asarray(Image.open(self.folder / f).convert("RGB")) for f in files])
        return {
            "prompts": [r["prompt"] for r in rows],
            "pixels": torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "winner_cost": torch.tensor([r["winner_cost"] for r in rows]),
            "loser_cost": torch.tensor([r["loser_cost"] for r in rows]),
            "harmful": torch.tensor([bool(r["harmful"]) for r in rows]),
        }
