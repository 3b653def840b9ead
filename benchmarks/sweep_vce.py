"""Choose VCE's defaults on the mini world: one-factor-at-a-time sweeps around a centre, with ablations.

    python benchmarks/sweep_vce.py --dry-run                                  # print the plan (round 3)
    python benchmarks/sweep_vce.py --concepts circle striped                  # needs the trained mini-ar
    python benchmarks/sweep_vce.py --round 2 --concepts circle striped --work runs/sweep-vce-2
    python benchmarks/sweep_vce.py --model DIR --quick                        # smoke run on any AR folder

For each concept (an object and a texture by default):

1. the pairs once (``run_vce(stage="pairs")``): no swept option is a pairs option, so every variant trains
   on the same pair set (``pairs_dir=``);
2. training once per variant, the ``steps`` variants being checkpoints of the centre run (trained to the
   largest ``steps`` value with a checkpoint at every value; each checkpoint is a loadable adapter);
3. ``run_bench_mini(model, adapter=..., concept=...)`` on every variant: UA, IRA, CRA and synonym UA
   against the base model.

:data:`ROUNDS` keeps every round that was run (its centre over ``VCEConfig``'s defaults, its one-factor
grid and its ablations), so each table in ``benchmarks/results/`` can be produced again:

- round 1 (circle): centre lr 7e-4 with the retain term; found it costly (``sweep_vce_round1.md``);
- round 2 (circle, striped): centre lr 7e-4 without it; chose lr 5e-4 (``sweep_vce_round2.md``);
- round 3 (circle, striped): the defaults that came out (lr 5e-4, retain_weight 0) with the issue's
  ablations, ``no-token-drop`` (``token_drop=0``) and the retain term put back (``retain_weight=1``).

Results: ``<work>/results.jsonl`` (one row per variant and concept, resumable), and
``benchmarks/results/sweep_vce.json`` + ``sweep_vce.md`` (the table, targets in bold; rounds other than
the last write ``sweep_vce_round<N>.*``); with ``--quick`` the two result files go to ``--work`` instead.

Targets (issue #6): UA >= 0.95, IRA >= 0.90 x base, CRA >= 0.95 x base, synonym UA >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROUNDS: dict[int, dict[str, Any]] = {
    1: {
        "centre": {"lr": 7e-4, "retain_weight": 1.0},
        "grid": {
            "beta": [1.0, 2.0, 20.0],
            "token_drop": [0.25],
            "lr": [5e-4, 1e-3],
            "steps": [100, 200, 300],
            "lora_rank": [4, 16],
        },
        "ablations": {"no-token-drop": {"token_drop": 0.0}, "no-retain": {"retain_weight": 0.0}},
    },
    2: {
        "centre": {"lr": 7e-4},
        "grid": {
            "beta": [2.0],
            "token_drop": [0.25],
            "lr": [5e-4, 1e-3],
            "steps": [100, 200, 300],
            "lora_rank": [16],
            "retain_weight": [1.0],
        },
        "ablations": {"no-token-drop": {"token_drop": 0.0}},
    },
    3: {"centre": {}, "grid": {"retain_weight": [1.0]}, "ablations": {"no-token-drop": {"token_drop": 0.0}}},
}
LAST = max(ROUNDS)
# --quick: a few pairs, a few steps, two grid values; runs in about a minute on a tiny model
QUICK = dict(
    n_harmful_prompts=2,
    seeds_per_prompt=2,
    n_clean_prompts=2,
    batch_size=2,
    retain_batch_size=2,
    warmup_steps=1,
    lora_rank=2,
    steps=2,
)
QUICK_GRID: dict[str, list[Any]] = {"beta": [1.0], "steps": [1, 2]}
LABELS = {
    "no-token-drop": "ablation",
    "no-retain": "ablation",
    "retain_weight=1": "with the retain term",
}


def centre(quick: bool = False, round_: int = LAST) -> dict[str, Any]:
    from safegen.methods.vce_config import VCEConfig

    return {**VCEConfig().to_dict(), **ROUNDS[round_]["centre"], **(QUICK if quick else {})}


def plan(quick: bool = False, round_: int = LAST) -> list[dict[str, Any]]:
    """The variants: ``{"name", "changed": {option: value}, "config": {...}}``, the centre first."""
    from safegen.bench.sweep import one_factor_plan

    r = ROUNDS[round_]
    return one_factor_plan(centre(quick, round_), QUICK_GRID if quick else r["grid"], r["ablations"])


def run_concept(concept: str, args: argparse.Namespace, done: set[tuple[str, str]]) -> list[dict[str, Any]]:
    from safegen.bench.mini import run_bench_mini
    from safegen.bench.sweep import append_row, checkpoint_adapters, gcd_all, scored
    from safegen.methods.vce import run_vce
    from safegen.methods.vce_config import VCEConfig

    root, base = args.work / concept, centre(args.quick, args.round)
    steps_values = sorted({v["config"]["steps"] for v in plan(args.quick, args.round)})

    def vce_run(name: str, config: dict[str, Any], stage: str) -> dict[str, Any]:
        out, start = root / name, time.time()
        resume = (out / "manifest.json").is_file()
        result = run_vce(
            concept, args.model, VCEConfig(**config), out=out, resume=resume, stage=stage, device=args.device
        )
        return {**result, "wall_seconds": round(time.time() - start, 1)}

    pairs = vce_run("pairs", base, "pairs")
    pairs_dir = str(root / "pairs" / "pairs")
    rows = []
    for variant in plan(args.quick, args.round):
        if "steps" in variant["changed"]:
            continue  # a checkpoint of the centre run
        adapters = {variant["name"]: root / f"train-{variant['name']}"}
        if all((concept, name) in done for name in adapters) and variant["name"] != "centre":
            continue
        config = {**variant["config"], "pairs_dir": pairs_dir}
        if variant["name"] == "centre":  # the steps variants: checkpoints of this run
            config |= {"steps": max(steps_values), "save_every": gcd_all(steps_values), "keep_checkpoints": 0}
            adapters = checkpoint_adapters(root / "train-centre", steps_values, base["steps"])
        trained = vce_run(f"train-{variant['name']}", config, "train")
        for name, adapter in adapters.items():
            if (concept, name) in done:
                continue
            bench = run_bench_mini(
                model=args.model,
                concept=concept,
                adapter=str(adapter),
                images_per_prompt=args.images_per_prompt,
                device=args.device,
            )
            steps = int(name.split("=")[1]) if name.startswith("steps=") else variant["config"]["steps"]
            share = steps / config["steps"]  # a checkpoint used this share of its run's training time
            row = {
                "concept": concept,
                "variant": name,
                "changed": {"steps": steps} if name.startswith("steps=") else variant["changed"],
                "adapter": str(adapter),
                "seconds": {
                    "pairs": pairs["stages"]["pairs"]["seconds"],
                    "train": trained["stages"]["train"]["seconds"] * share,
                },
                "final": trained["stages"]["train"]["final"],
                **scored(bench),
            }
            append_row(args.work / "results.jsonl", row)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=["circle", "striped"])
    ap.add_argument("--model", default="mini-ar", help="mini-ar, or any LlamaGen / Janus folder")
    ap.add_argument("--work", type=Path, default=Path("runs/sweep-vce"), help="run folders and results.jsonl")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="JSON + markdown here")
    ap.add_argument("--round", type=int, default=LAST, choices=sorted(ROUNDS), help="which round's plan")
    ap.add_argument("--quick", action="store_true", help="tiny settings and grid: a smoke run")
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="print the variants and exit")
    args = ap.parse_args()
    if args.dry_run:
        for v in plan(args.quick, args.round):
            print(v["name"], json.dumps(v["changed"]))
        return
    import torch

    from safegen.bench.sweep import best_variants, read_rows, table, write_results

    torch.set_num_threads(args.threads)
    if args.quick:
        args.concepts, args.images_per_prompt, args.results = args.concepts[:1], 1, args.work
    args.work.mkdir(parents=True, exist_ok=True)
    previous, done = read_rows(args.work / "results.jsonl")
    rows = previous + [r for c in args.concepts for r in run_concept(c, args, done)]
    best = best_variants(rows, args.concepts)
    record = {
        "method": "vce",
        "model": args.model,
        "quick": args.quick,
        "centre": centre(args.quick, args.round),
        "round": args.round,
        "grid": QUICK_GRID if args.quick else ROUNDS[args.round]["grid"],
        "ablations": ROUNDS[args.round]["ablations"],
        "images_per_prompt": args.images_per_prompt,
        "rows": rows,
        "best": best,
    }
    stem = "sweep_vce" if args.round == LAST else f"sweep_vce_round{args.round}"
    title = f"VCE sweep, round {args.round} ({args.model})"
    write_results(args.results, stem, title, record, table(rows, LABELS), sys.argv)
    print(table(rows, LABELS))
    print("best variant per concept (largest worst-case margin to the targets):", json.dumps(best))


if __name__ == "__main__":
    main()
