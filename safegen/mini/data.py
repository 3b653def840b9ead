"""Rendered datasets of the mini world (images + per-object labels), cached as safetensors.

Labels are integer arrays: ``count`` (N,) holds 1 or 2 objects, ``attrs`` (N, 2, 3) holds the index of
each object's value on each axis (object, color, texture), left to right, -1 for an absent object, and
``plans`` (N, 2, 2) each object's caption plan (:class:`~safegen.mini.world.Plan`): the index of the
artist that invokes its texture and of the axis its captions leave out, -1 for none.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from safegen.mini.world import AXES, Plan, Scene, Thing, World


@dataclass
class RenderedSet:
    images: torch.Tensor  # (N, 64, 64, 3) uint8
    count: torch.Tensor  # (N,) int64
    attrs: torch.Tensor  # (N, 2, 3) int64, -1 = absent
    plans: torch.Tensor | None = None  # (N, 2, 2) int64: artist index, omitted axis index; -1 = none

    def __len__(self) -> int:
        return self.images.shape[0]

    def scene(self, i: int, world: World) -> Scene:
        things, plans = [], []
        for k in range(int(self.count[i])):
            idx = self.attrs[i, k].tolist()
            things.append(Thing(*(world.values[a][j] for a, j in zip(AXES, idx, strict=True))))
            if self.plans is not None:
                artist, omit = self.plans[i, k].tolist()
                plans.append(Plan(world.artists[artist].name if artist >= 0 else None,
                                  AXES[omit] if omit >= 0 else None))  # fmt: skip
        return Scene(tuple(things), tuple(plans))


def _render_chunk(args: tuple[int, int, float, bool]) -> tuple[np.ndarray, ...]:
    seed, n, pair_share, planned = args
    world = World.load()
    names = [a.name for a in world.artists]
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 64, 64, 3), np.uint8)
    count = np.zeros(n, np.int64)
    attrs = -np.ones((n, 2, 3), np.int64)
    plans = -np.ones((n, 2, 2), np.int64)
    for i in range(n):
        k = 2 if rng.random() < pair_share else 1
        scene = world.sample_planned_scene(rng, k) if planned else world.sample_scene(rng, k)
        images[i] = world.render(scene, rng)
        count[i] = k
        for j, thing in enumerate(scene.things):
            attrs[i, j] = [world.values[a].index(thing.value(a)) for a in AXES]
            plan = scene.plan(j)
            plans[i, j] = [names.index(plan.artist) if plan.artist else -1,
                           AXES.index(plan.omit) if plan.omit else -1]  # fmt: skip
    return images, count, attrs, plans


def render_set(
    n: int, seed: int, pair_share: float = 0.3, workers: int = 2, chunk: int = 500, planned: bool = True
) -> RenderedSet:
    """Render ``n`` random scenes (a share ``pair_share`` with two objects), deterministically in ``seed``.

    ``planned``: draw each object with a caption plan from the world's training mix (artists, left-out
    axes drawn from the priors); otherwise every value is uniform and every axis named.
    """
    jobs = [
        (seed * 100_003 + i, min(chunk, n - s), pair_share, planned) for i, s in enumerate(range(0, n, chunk))
    ]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    images, count, attrs, plans = (torch.from_numpy(np.concatenate(p)) for p in zip(*parts, strict=True))
    return RenderedSet(images, count, attrs, plans if planned else None)


def cached_set(
    path: str | Path, n: int, seed: int, pair_share: float = 0.3, planned: bool = True
) -> RenderedSet:
    """Load a rendered set from ``path`` or render and save it there."""
    path = Path(path)
    if path.exists():
        t = load_file(str(path))
        return RenderedSet(t["images"], t["count"], t["attrs"], t.get("plans"))
    data = render_set(n, seed, pair_share, planned=planned)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": data.images, "count": data.count, "attrs": data.attrs}
    if data.plans is not None:
        tensors["plans"] = data.plans
    save_file(tensors, str(path))
    return data


# --------------------------------------------------------------------------- what the training scripts share
def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 -> (N, 3, 64, 64) float in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def log_row(path: Path, **row) -> None:
    """Print one JSON line and append it to ``path`` (a training log)."""
    import json

    print(json.dumps(row), flush=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model``, parameter by parameter."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)
