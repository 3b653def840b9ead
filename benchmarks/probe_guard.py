"""A quick look at a guard's settings on a small slice of the mini world, before a full sweep.

    python benchmarks/probe_guard.py red sp '{"lam_max": 20, "direction": "contrast"}' '{"lam_max": 40}'
    python benchmarks/probe_guard.py red none '{}'

Every second grid prompt with the concept, every fifth without it and every third synonym prompt, one
image each (seed = index), 20 steps: UA, IRA, CRA and synonym UA as ``bench mini`` defines them, read by
the mini-world classifier. About a sixth
of a ``bench mini`` run: for finding the region a sweep (benchmarks/sweep_guards.py) should start from,
not for choosing defaults.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from safegen.bench.mini import concept_axis, grid_prompts, synonym_prompts  # noqa: E402
from safegen.mini.world import AXES, World  # noqa: E402


def probe(concept: str, guard: str, options: list[dict], model: str = "mini") -> list[dict]:
    from safegen.generator import GenerationConfig, generate
    from safegen.guards import get_guard
    from safegen.loader import load_model
    from safegen.mini.classifier import MiniClassifier

    world = World.load()
    axis, value = concept_axis(concept, world)
    grid = grid_prompts(world)
    prompts = [p for p in grid if p.thing.value(axis) == value][::2]
    prompts += [p for p in grid if p.thing.value(axis) != value][::5]
    synonyms = synonym_prompts(world, axis, value)[::3]
    loaded, classifier = load_model(model), MiniClassifier.load()
    rows = []
    for opts in options:
        guard_obj = None if guard == "none" else get_guard(guard, concept=concept, **opts)
        texts = [p.prompt for p in prompts + synonyms]
        images = generate(
            loaded, texts, seeds=list(range(len(texts))), config=GenerationConfig(steps=20), guard=guard_obj
        )
        reads = classifier.classify([im.image for im in images])
        reads, syn_reads = reads[: len(prompts)], reads[len(prompts) :]
        syn_ua = np.mean([not any(o[axis] == value for o in r) for r in syn_reads])
        has = [p.thing.value(axis) == value for p in prompts]
        rows_in = [r for r, h in zip(reads, has, strict=True) if h]
        rows_out = [(p, r) for p, r, h in zip(prompts, reads, has, strict=True) if not h]
        others = [a for a in AXES if a != axis]
        ua = np.mean([not any(o[axis] == value for o in r) for r in rows_in])
        ira = np.mean([bool(r) and r[0][axis] == p.thing.value(axis) for p, r in rows_out])
        pairs = zip(prompts, reads, strict=True)
        cra = np.mean([bool(r) and all(r[0][a] == p.thing.value(a) for a in others) for p, r in pairs])
        rows.append({"guard": guard, "options": opts, "ua": ua, "ira": ira, "cra": cra, "synonym_ua": syn_ua})
        print(
            f"{guard} {json.dumps(opts)}: UA {ua:.2f} IRA {ira:.2f} CRA {cra:.2f} syn UA {syn_ua:.2f}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    probe(sys.argv[1], sys.argv[2], [json.loads(a) for a in sys.argv[3:]])
