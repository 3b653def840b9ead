"""Choose an AR model's sampling defaults (CFG scale, temperature, top-k) on the mini world.

    python benchmarks/sweep_ar_sampling.py                       # the bundled mini-ar, 180 prompts x 1 seed
    python benchmarks/sweep_ar_sampling.py --model DIR --seeds 2 --out benchmarks/results/x.md

Every configuration of the grid samples the 180 single-object grid prompts of ``bench mini`` (same seeds
for every configuration), the mini-world classifier reads the images, and the per-axis accuracy is
reported. The chosen configuration has the largest smallest-axis accuracy (ties: the largest mean); it
becomes the ``sampling`` block of the model's ``llamagen.json`` (``python -m safegen.mini.train_ar export
--sampling '{...}'`` for mini-ar). Writes a markdown table and the same rows as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
GRID = {"cfg": [3.0, 5.0, 7.5], "temperature": [0.7, 1.0], "top_k": [0, 50]}


def run(args: argparse.Namespace) -> list[dict]:
    from safegen.ar.generate import generate
    from safegen.ar.sampler import SamplingConfig
    from safegen.bench.mini import grid_prompts, score
    from safegen.loader import load_model
    from safegen.mini.classifier import MiniClassifier
    from safegen.mini.world import World

    model, classifier = load_model(args.model), MiniClassifier.load()
    prompts = [p for p in grid_prompts(World.load()) for _ in range(args.seeds)]
    seeds = [k % args.seeds for k in range(len(prompts))]
    rows = []
    for values in itertools.product(*GRID.values()):
        settings = dict(zip(GRID, values, strict=True))
        start = time.perf_counter()
        config = SamplingConfig(**settings, batch_size=args.batch_size)
        images = generate(model, [p.prompt for p in prompts], seeds=seeds, config=config)
        accuracy = score(prompts, classifier.classify([im.image for im in images]), None)["accuracy"]
        row = {**settings, **accuracy, "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: (min(r[a] for a in ("object", "color", "texture")), _mean(r)))
    best["chosen"] = True
    return rows


def _mean(row: dict) -> float:
    return (row["object"] + row["color"] + row["texture"]) / 3


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"# AR sampling sweep: `{args.model}`",
        "",
        f"Command: `python benchmarks/sweep_ar_sampling.py {' '.join(args.argv)}`; 180 grid prompts x "
        f"{args.seeds} seed(s). **bold**: chosen (largest smallest-axis accuracy).",
        "",
        "| cfg | temperature | top_k | object | colour | texture | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [str(r["cfg"]), str(r["temperature"]), str(r["top_k"])]
        cells += [f"{r[a]:.3f}" for a in ("object", "color", "texture")] + [str(r["seconds"])]
        if r.get("chosen"):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-ar")
    parser.add_argument("--seeds", type=int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_ar_sampling.md")
    args = parser.parse_args(argv)
    args.argv = argv
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, args))
    args.out.with_suffix(".json").write_text(json.dumps({"argv": argv, "rows": rows}, indent=2) + "\n")
    chosen = next(r for r in rows if r.get("chosen"))
    print(f"chosen: cfg {chosen['cfg']}, temperature {chosen['temperature']}, top_k {chosen['top_k']}")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
