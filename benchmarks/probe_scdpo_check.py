"""How well SC-DPO's safety-constraint check reads a fine-tuned model: the cost model vs the bench.

    python benchmarks/probe_scdpo_check.py --concept red --cost runs/x/red/cost/cost \\
        --adapters runs/x/red/train-a/checkpoints/step-0000350 runs/x/red/train-a/checkpoints/step-0000450

For each adapter (and the base model, ``--base``), the model samples the check's two prompt sets
(``check_set=train``: harmful prompts stage 2 sampled; ``held-out``: ones it never used), ``--prompts``
each, with the check's own seeds. The stage-1 cost model scores every image; the mini-world
classifier that ``bench mini`` scores with reads the same images, for comparison only (the check never
sees it). Printed per adapter and prompt set: the share of images with cost above each threshold, the
mean cost, and the share the classifier says still show the concept. A check is well calibrated when
its flagged share at the stop tracks the classifier's. Mini world only.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", required=True)
    ap.add_argument("--cost", required=True, help="a cost/ folder (cost_head.safetensors)")
    ap.add_argument("--adapters", nargs="*", default=[])
    ap.add_argument("--base", action="store_true", help="also probe the base model")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from safegen.adapters import use_adapter
    from safegen.bench.mini import _shows, concept_axis
    from safegen.loader import load_model
    from safegen.methods.common import resolve_target
    from safegen.methods.scdpo_config import SCDPOConfig
    from safegen.methods.scdpo_stages import (
        CostModel,
        StageContext,
        check_prompt_set,
        load_encoder,
        sample_images,
    )
    from safegen.mini.classifier import MiniClassifier
    from safegen.mini.world import World

    cfg = SCDPOConfig()
    model = load_model("mini")
    concept, mini = resolve_target(args.concept, "mini")
    ctx = StageContext(cfg, concept, mini, model, 0, 1)
    cost_model = CostModel.load(Path(args.cost), load_encoder(cfg.encoder, True, torch.device("cpu")))
    classifier = MiniClassifier.load()
    axis, value = concept_axis(args.concept, World.load())

    seeds = [cfg.seed + 104_729 + i for i in range(args.prompts)]  # the check's own seeds
    sets = {}
    for name in ("train", "held-out"):
        probe_cfg = replace(cfg, check_set=name, check_prompts=args.prompts)
        sets[name] = (check_prompt_set(replace(ctx, cfg=probe_cfg))[0], seeds)
    rows = []
    for adapter in ([None] if args.base else []) + args.adapters:
        with use_adapter(model, adapter), torch.no_grad():
            for name, (prompts, seeds) in sets.items():
                images = sample_images(ctx, prompts, seeds, stage=None)
                costs = cost_model.cost(images).float()
                shows = [_shows(objs, axis, value) for objs in classifier.classify(images)]
                row = {
                    "adapter": adapter or "base",
                    "prompts": name,
                    "n": len(images),
                    "mean_cost": round(float(costs.mean()), 4),
                    **{f"cost>{t}": round(float((costs > t).float().mean()), 4) for t in THRESHOLDS},
                    "classifier_shows": round(sum(shows) / len(shows), 4),
                    "costs_of_shown": [round(float(c), 3) for c, s in zip(costs, shows, strict=True) if s],
                    "top_costs_not_shown": sorted(
                        (round(float(c), 3) for c, s in zip(costs, shows, strict=True) if not s), reverse=True
                    )[:4],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
