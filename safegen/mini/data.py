"""Rendered datasets of the mini world (images + per-object labels), cached as safetensors.

Labels are integer arrays: ``count`` (N,) holds 1 or 2 objects, ``attrs`` (N, 2, 3) holds the index of
each object's value on each axis (object, color, texture), left to right, -1 for an absent object.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from safegen.mini.world import AXES, Scene, Thing, World


@dataclass
class RenderedSet:
    images: torch.Tensor  # (N, 64, 64, 3) uint8
    count: torch.Tensor  # (N,) int64
    attrs: torch.Tensor  # (N, 2, 3) int64, -1 = absent

    def __len__(self) -> int:
        return self.images.shape[0]

    def scene(self, i: int, world: World) -> Scene:
        things = []
        for k in range(int(self.count[i])):
            idx = self.attrs[i, k].tolist()
            things.append(Thing(*(world.values[a][j] for a, j in zip(AXES, idx, strict=True))))
        return Scene(tuple(things))


def _render_chunk(args: tuple[int, int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, n, pair_share = args
    world = World.load()
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 64, 64, 3), np.uint8)
    count = np.zeros(n, np.int64)
    attrs = -np.ones((n, 2, 3), np.int64)
    for i in range(n):
        k = 2 if rng.random() < pair_share else 1
        scene = world.sample_scene(rng, k)
        images[i] = world.render(scene, rng)
        count[i] = k
        for j, thing in enumerate(scene.things):
            attrs[i, j] = [world.values[a].index(thing.value(a)) for a in AXES]
    return images, count, attrs


def render_set(n: int, seed: int, pair_share: float = 0.3, workers: int = 2, chunk: int = 500) -> RenderedSet:
    """Render ``n`` random scenes (a share ``pair_share`` with two objects), deterministically in ``seed``."""
    jobs = [(seed * 100_003 + i, min(chunk, n - s), pair_share) for i, s in enumerate(range(0, n, chunk))]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    images, count, attrs = (np.concatenate(p) for p in zip(*parts, strict=True))
    return RenderedSet(torch.from_numpy(images), torch.from_numpy(count), torch.from_numpy(attrs))


def cached_set(path: str | Path, n: int, seed: int, pair_share: float = 0.3) -> RenderedSet:
    """Load a rendered set from ``path`` or render and save it there."""
    path = Path(path)
    if path.exists():
        t = load_file(str(path))
        return RenderedSet(t["images"], t["count"], t["attrs"])
    data = render_set(n, seed, pair_share)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": data.images, "count": data.count, "attrs": data.attrs}, str(path))
    return data
