"""SC-DPO's second stage: preference pairs, and the pairs as the training data of the third.

K samples per harmful and per clean prompt from the base model, scored ``s = reward - lambda x cost``;
winner = best s, loser = worst s. Our reading of the paper's reward ("human preference") is **prompt
fidelity**: the cosine between the image and the prompt's text in the cost model's frozen encoder (CLIP
score on real models, the mini encoder's image-text agreement on the mini world). When no sample of a
harmful prompt is safe, the winner comes from extra samples of the prompt's safe counterpart (its
keyword rewrite, or the same prompt and seed with the concept as a negative prompt:
:mod:`safegen.recipes.prompt_plan`), still trained under the harmful prompt. ``docs/methods/scdpo.md``.

Folder written (reusable by a later run through ``pairs_dir=``)::

    pairs/  pairs.jsonl, images/*.png, manifest.json
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from safegen.errors import SafegenError
from safegen.recipes.prompts import StageContext, read_manifest
from safegen.recipes.scdpo_cost import CostModel, sample_images

UNSAFE = 0.5  # a cost above this is harmful (the cost model's anchors: 0 safe, 1 harmful)


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
    harmful, clean = ctx.plan.harmful, ctx.plan.clean
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
    harmful, clean = ctx.plan.harmful, ctx.plan.clean
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
        "winner_from_counterpart": float(np.mean([r["winner_counterpart"] for r in merged])),
        # harmful pairs whose winner the cost model still calls harmful: no candidate was safe
        "harmful_unsafe_winner": sum(r["harmful"] and r["winner_cost"] > UNSAFE for r in merged),
        "counterparts": ctx.plan.report["counterparts"],
        "processes": ctx.world_size,
        "seconds": round(time.time() - start, 2),
    }
    (folder / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _pairs_for(
    ctx: StageContext, cost_model: CostModel, folder: Path, batch: list[tuple[int, str, bool]]
) -> list[dict[str, Any]]:
    """Sample, score and pair the candidates of a few prompts; save the images that end up in a pair."""
    cfg, jobs = ctx.cfg, []
    for i, prompt, harmful in batch:
        safe = ctx.plan.counterparts[i] if harmful else None
        extra = cfg.rewrite_samples if safe is not None else 0
        for k in range(cfg.samples_per_prompt + extra):
            source, negative = (prompt, None) if k < cfg.samples_per_prompt else (safe.text, safe.negative)
            seed = cfg.seed * 1_000_003 + i * 1_000 + k
            jobs.append((i, prompt, harmful, source, seed, safe.text if safe else prompt, negative))
    sources, seeds = [j[3] for j in jobs], [j[4] for j in jobs]
    images = sample_images(ctx, sources, seeds, None, [j[6] for j in jobs])  # progress: per chunk
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
                row |= {
                    f"{side}_negative": jobs[j][6],
                    f"{side}_counterpart": j - idx[0] >= cfg.samples_per_prompt,
                }
                row |= {f"{side}_score": float(scores[j]), f"{side}_reward": float(rewards[j])}
                row[f"{side}_cost"] = float(costs[j])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- stage 3's data
class PairData:
    """The pairs of a ``pairs/`` folder; batches are drawn by a seeded generator (exactly resumable).

    With ``drop_unsafe_winners``, a harmful pair whose winner the cost model scores above :data:`UNSAFE` is
    left out (no candidate of its prompt was safe: such a pair teaches one harmful image over another);
    ``dropped`` counts them.
    """

    def __init__(self, folder: Path, drop_unsafe_winners: bool = False):
        self.folder = folder
        read_manifest(folder, "pair set")
        rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines() if line]
        if not rows:
            raise SafegenError(f"{folder}/pairs.jsonl holds no pairs.")
        unsafe = [drop_unsafe_winners and r["harmful"] and r["winner_cost"] > UNSAFE for r in rows]
        self.rows = [r for r, bad in zip(rows, unsafe, strict=True) if not bad]
        self.dropped = sum(unsafe)
        if not any(r["harmful"] for r in self.rows):
            raise SafegenError(
                f"Every harmful pair of {folder} has an unsafe winner; train with "
                "--set drop_unsafe_winners=false, or build pairs with more samples_per_prompt."
            )

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
