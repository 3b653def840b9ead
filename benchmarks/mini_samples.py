"""A sample grid of the bundled mini model: one row per object, one column per colour (texture cycled).

    python benchmarks/mini_samples.py --out docs/mini_samples.png

Each cell is generated with seed 0 from the caption "a {colour} {texture} {object}"; the file is
written next to a JSON sidecar listing the prompts and what the mini classifier read in each cell.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from safegen.generator import generate
from safegen.loader import load_model
from safegen.mini.classifier import MiniClassifier
from safegen.mini.world import World
from safegen.sampling import GenerationConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scale", type=int, default=2, help="upscale factor of the saved grid")
    ap.add_argument("--out", type=Path, default=Path("docs/mini_samples.png"))
    args = ap.parse_args()
    world = World.load()
    objects, colors, textures = (world.values[a] for a in ("object", "color", "texture"))
    prompts = [
        f"a {c} {textures[(i + j) % len(textures)]} {o}"
        for i, o in enumerate(objects)
        for j, c in enumerate(colors)
    ]
    images = generate(
        load_model(args.model), prompts, seeds=[0] * len(prompts), config=GenerationConfig(steps=args.steps)
    )
    arrays = [np.asarray(im.image) for im in images]
    rows = [
        np.concatenate(arrays[r * len(colors) : (r + 1) * len(colors)], axis=1) for r in range(len(objects))
    ]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * args.scale, grid.height * args.scale), Image.NEAREST)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    reads = MiniClassifier.load().classify([im.image for im in images])
    sidecar = [{"prompt": p, "read": r} for p, r in zip(prompts, reads, strict=True)]
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    print(f"wrote {args.out} ({len(prompts)} cells)")


if __name__ == "__main__":
    main()
