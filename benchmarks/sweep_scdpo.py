"""Choose SC-DPO's defaults on the mini world: a one-factor-at-a-time sweep around a centre, with ablations.

    python benchmarks/sweep_scdpo.py --dry-run                                  # print the plan
    python benchmarks/sweep_scdpo.py --concepts red circle --out runs/sweep-scdpo
    python benchmarks/sweep_scdpo.py --concepts red --out runs/sweep-scdpo      # resumes: done rows skipped

For each concept (one colour, one object by default):

1. stage 1 once (``cost/``: the cost model, its held-out AUROC);
2. stage 2 once per ``cost_lambda`` value (``pairs-lambda<v>/``);
3. stage 3 once per variant, trained to the largest ``steps`` value with a checkpoint at every value,
   so the ``steps`` variants are the checkpoints of the centre run (each is a loadable adapter);
4. ``bench mini --adapter`` on every variant: UA, IRA, CRA and synonym UA against the base model.

Variants (:data:`ROUNDS` keeps every round that was run): the round's centre over ``SCDPOConfig``'s
defaults and, for each option of its grid, the centre with that one option changed; ``plain-dpo``
(``gamma = 0`` and ``cost_lambda = 0``: plain Diffusion-DPO on pairs ranked by the reward alone) is the
issue's ablation. ``--only`` runs a subset (each bench of a diffusion variant costs minutes on 2 CPU
cores). Results go to
``<out>/results.jsonl`` (one row per variant and concept, resumable) and
``benchmarks/results/sweep_scdpo.json`` + ``sweep_scdpo.md`` (the table, targets marked); timings per
stage come from each run's manifest (target: one concept end to end <= 20 min on 2 CPU cores).

Targets (issue): UA >= 0.95, IRA >= 0.90 x base, CRA >= 0.95 x base, synonym UA >= 0.85.
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

# Every round that was run, so each table can be produced again (``--round N``):
# - round 1 (circle): the first defaults (lr 1e-4, 300 steps) and two lr values, ``sweep_scdpo_round1.md``:
#   lr 1e-4 left UA at 0.000, lr 1e-3 erased at CRA 0.721 x base, lr 3e-4 reached UA 0.833 keeping IRA/CRA;
# - round 2 (circle, red): centred on lr 3e-4 for 450 steps (SCDPOConfig's defaults since):
#   ``sweep_scdpo_round2.md``: red kept IRA at 3e-4 but reached UA 0.783 only, 5e-4 erased it at IRA 0.827;
# - round 3 (circle, red): lr 4e-4, between those two, erased red keeping IRA but cost circle its IRA;
#   the safety-constraint check (stop_share 0 and 0.125) stops each concept where its samples are clean;
#   the plain-DPO ablation at the new defaults: ``sweep_scdpo_round3.md`` (its centre and lr 3e-4 rows
#   are round 2's runs of the same settings, copied into the round's results.jsonl).
# - round 4 (circle, red, striped): the check reads samples of held-out prompts (check_set held-out, 32
#   prompts, stop_share 0.0625), chosen with benchmarks/probe_scdpo_check.py on round 3's checkpoints
#   (results/probe_scdpo_check_*.json): 16 training prompts read red at step 350 as 0.125 flagged while
#   held-out samples read 0.28 (and bench mini UA 0.82); the defaults' runs and the plain-DPO ablation.
# Rounds 2 and 3 pin their centre at lr 3e-4 without the constraint check, the defaults they were centred
# on, and round 3 the check of its day (16 training prompts); round 4's centre was SCDPOConfig's defaults.
# Rounds 1-4 ran before the 128 + 128 pair set, the retain anchor and the cosine lr were tried across
# seeds (sessions 6-9, benchmarks/seeds_scdpo.py): EARLIER pins what their centres had (the defaults
# moved in session 9: 128 + 128 prompts, beta 1000, retain_weight 100, stop_share 0, up to 700 steps).
EARLIER: dict[str, Any] = {
    "n_harmful_prompts": 64,
    "n_clean_prompts": 64,
    "retain_weight": 0.0,
    "lr_schedule": "constant",
    "steps": 450,
    "beta": 2500.0,
    "stop_share": 0.0625,
}
ROUNDS: dict[int, dict[str, Any]] = {
    1: {"centre": {**EARLIER, "lr": 1e-4, "steps": 300}, "grid": {"lr": [3e-4, 1e-3, 3e-3]}},
    2: {
        "centre": {**EARLIER, "lr": 3e-4, "check_every": 0},
        "grid": {
            "beta": [500.0, 10000.0],
            "lr": [5e-4, 1e-3],
            "steps": [300, 450, 600],
            "cost_lambda": [0.0, 3.0],
            "gamma": [0.0, 5.0],
            "lora_rank": [16],
            "rpo_alpha": [1000.0],
        },
    },
    3: {
        "centre": {**EARLIER, "lr": 3e-4, "check_every": 0, "check_prompts": 16, "check_set": "train"},
        "grid": {"lr": [4e-4]},
        "variants": {
            # stop_share 0 (trained, not benched): circle never stopped, red stopped at step 450, so both
            # ended with lr=0.0004's weights (the check does not touch the training's random draws)
            "lr=0.0004+check": {"lr": 4e-4, "check_every": 50, "stop_share": 0.0},
            "lr=0.0004+check=0.125": {"lr": 4e-4, "check_every": 50, "stop_share": 0.125},
            "plain-dpo+lr=0.0004+check=0.125": {
                "lr": 4e-4,
                "check_every": 50,
                "stop_share": 0.125,
                "gamma": 0.0,
                "cost_lambda": 0.0,
            },
        },
    },
    4: {"centre": {**EARLIER, "stop_share": 0.0625}, "grid": {"lr": [1e-3]}, "label": "the defaults then"},
}
LAST = max(ROUNDS)
# the ablation: plain Diffusion-DPO (no DFM) on pairs ranked by the reward alone
ABLATIONS: dict[str, dict[str, Any]] = {"plain-dpo": {"gamma": 0.0, "cost_lambda": 0.0, "retain_weight": 0.0}}


def centre(round_: int = LAST) -> dict[str, Any]:
    from safegen.methods.scdpo_config import SCDPOConfig

    return {**SCDPOConfig().to_dict(), **ROUNDS[round_]["centre"]}


def plan(grid: dict[str, list[Any]] | None = None, round_: int = LAST) -> list[dict[str, Any]]:
    """The variants: ``{"name", "changed": {option: value}, "config": {...}}``, the centre first."""
    from safegen.bench.sweep import one_factor_plan

    extra = ABLATIONS | ROUNDS[round_].get("variants", {})
    return one_factor_plan(centre(round_), ROUNDS[round_]["grid"] if grid is None else grid, extra)


def pairs_name(config: dict[str, Any], round_: int = LAST) -> str:
    """The folder of a variant's pair set: ``pairs-lambda<v>`` plus every other pairs-stage option changed."""
    import dataclasses

    from safegen.methods.scdpo_config import SCDPOConfig

    base = centre(round_)
    name = f"pairs-lambda{config['cost_lambda']:g}"
    for f in dataclasses.fields(SCDPOConfig):
        if f.metadata["stage"] == "pairs" and f.name != "cost_lambda" and config[f.name] != base[f.name]:
            name += f"-{f.name}={config[f.name]}"
    return name


def run_concept(concept: str, args: argparse.Namespace, done: set[tuple[str, str]]) -> list[dict[str, Any]]:
    from safegen.bench.mini import run_bench_mini
    from safegen.bench.sweep import append_row, checkpoint_adapters, gcd_all, scored
    from safegen.methods.scdpo import run_scdpo
    from safegen.methods.scdpo_config import SCDPOConfig

    root = args.out / concept
    variants = [v for v in plan(round_=args.round) if not args.only or v["name"] in args.only]
    steps_values = sorted(
        {v["changed"]["steps"] for v in variants if "steps" in v["changed"]} | {centre(args.round)["steps"]}
    )
    rows = []

    def stage_run(name: str, config: dict[str, Any], stage: str) -> dict[str, Any]:
        out = root / name
        resume = (out / "manifest.json").is_file()
        cfg = SCDPOConfig(**config)
        start = time.time()
        result = run_scdpo(
            concept, model=args.model, config=cfg, out=out, resume=resume, stage=stage, device=args.device
        )
        result["wall_seconds"] = round(time.time() - start, 1)
        return result

    old = args.reuse_from / concept if args.reuse_from else None  # an earlier sweep's stages 1-2
    reuse_cost = {"cost_dir": str(old / "cost" / "cost")} if old and (old / "cost" / "cost").is_dir() else {}
    cost = stage_run("cost", centre(args.round) | reuse_cost, "cost")
    cost_dir = reuse_cost.get("cost_dir", str(root / "cost" / "cost"))
    for variant in variants:
        if variant["changed"].get("steps") is not None:
            continue  # a checkpoint of the centre run
        if variant["name"] != "centre" and (concept, variant["name"]) in done:
            continue
        config = dict(variant["config"])
        pname = pairs_name(config, args.round)  # one pair set per pairs-stage setting, shared by variants
        pairs_opts = {k: v for k, v in config.items() if _stage(k) == "pairs"}
        reuse_pairs = {}
        if old and (old / pname / "pairs").is_dir():
            reuse_pairs = {"pairs_dir": str(old / pname / "pairs")}
        pairs = stage_run(
            pname, {**centre(args.round), **pairs_opts, "cost_dir": cost_dir, **reuse_pairs}, "pairs"
        )
        pairs_dir = reuse_pairs.get("pairs_dir", str(root / pname / "pairs"))
        is_centre = variant["name"] == "centre"
        train_cfg = {**config, "cost_dir": cost_dir, "pairs_dir": pairs_dir}
        if is_centre:
            train_cfg |= {
                "steps": max(steps_values),
                "save_every": gcd_all(steps_values),
                "keep_checkpoints": 0,
            }
        trained = stage_run(f"train-{variant['name']}", train_cfg, "train")
        adapters = {variant["name"]: root / f"train-{variant['name']}"}
        if is_centre:  # the steps variants: checkpoints of this run (up to the check's stop, if it stopped)
            run_dir = root / f"train-{variant['name']}"
            adapters = checkpoint_adapters(run_dir, steps_values, centre(args.round)["steps"])
            adapters = {k: a for k, a in adapters.items() if a.is_dir()}
            if trained["stages"]["train"]["stopped_early"]:
                adapters["centre"] = run_dir
        for name, adapter in adapters.items():
            if (concept, name) in done:
                continue
            bench = run_bench_mini(
                model=args.model,
                concept=concept,
                adapter=str(adapter),
                images_per_prompt=args.images_per_prompt,
                steps=args.bench_steps,
                device=args.device,
            )
            row = {
                "concept": concept,
                "variant": name,
                "changed": {"steps": int(name.split("=")[1])}
                if name.startswith("steps=")
                else variant["changed"],
                "adapter": str(adapter),
                "cost_auroc": cost["stages"]["cost"]["holdout_auroc"],
                "seconds": {
                    "cost": cost["stages"]["cost"]["seconds"],
                    "pairs": pairs["stages"]["pairs"]["seconds"],
                    "train": trained["stages"]["train"]["seconds"]
                    * _steps_share(name, train_cfg["steps"], centre(args.round)["steps"]),
                },
                "final": trained["stages"]["train"]["final"],
                **scored(bench),
            }
            append_row(args.out / "results.jsonl", row)
            rows.append(row)
    return rows


def _stage(key: str) -> str:
    import dataclasses

    from safegen.methods.scdpo_config import SCDPOConfig

    return {f.name: f.metadata["stage"] for f in dataclasses.fields(SCDPOConfig)}[key]


def _steps_share(name: str, trained_steps: int, centre_steps: int) -> float:
    """The share of a run's training time that a checkpoint variant (``steps=N`` or the centre) used."""
    steps = int(name.split("=")[1]) if name.startswith("steps=") else centre_steps
    return min(1.0, steps / trained_steps) if name.startswith("steps=") or name == "centre" else 1.0


def table(rows: list[dict[str, Any]], round_: int = LAST) -> str:
    """Markdown: one row per (concept, variant); targets met in bold; the ablations labelled."""
    from safegen.bench.sweep import table as sweep_table

    labels = {
        "gamma=0": "ablation: no DFM",
        "cost_lambda=0": "ablation: no cost",
        "plain-dpo": f"ablation: plain Diffusion-DPO at the centre (lr {centre(round_)['lr']:g})",
        "plain-dpo+lr=0.0004+check=0.125": "ablation: plain Diffusion-DPO at the defaults",
        "lr=0.0004+check=0.125": "the defaults",
    }
    if "label" in ROUNDS[round_]:
        labels["centre"] = ROUNDS[round_]["label"]
    return sweep_table(rows, labels, {"cost AUROC": lambda r: f"{r['cost_auroc']:.3f}"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=["red", "circle"])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep-scdpo"))
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--bench-steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-from", type=Path, help="an earlier --out: reuse its cost models and pair sets")
    ap.add_argument("--round", type=int, default=LAST, choices=sorted(ROUNDS), help="which round's plan")
    ap.add_argument("--only", nargs="+", default=[], help="run these variants (names as --dry-run prints)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="JSON + markdown here")
    ap.add_argument(
        "--table-only", action="store_true", help="write the tables from <out>'s rows, run nothing"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the variants and exit")
    args = ap.parse_args()
    if args.dry_run:
        for v in plan(round_=args.round):
            print(v["name"], json.dumps(v["changed"]))
        return
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from safegen.bench.sweep import best_variants, read_rows, write_results

    previous, done = read_rows(args.out / "results.jsonl")
    new = [] if args.table_only else [r for c in args.concepts for r in run_concept(c, args, done)]
    rows = previous + new
    best = best_variants(rows, args.concepts)
    record = {
        "method": "scdpo",
        "model": args.model,
        "round": args.round,
        "centre": centre(args.round),
        "grid": ROUNDS[args.round]["grid"],
        "ablations": ABLATIONS,
        "images_per_prompt": args.images_per_prompt,
        "bench_steps": args.bench_steps,
        "rows": rows,
        "best": best,
    }
    stem = "sweep_scdpo" if args.round == LAST else f"sweep_scdpo_round{args.round}"
    title = f"SC-DPO sweep, round {args.round} ({args.model})"
    write_results(args.results, stem, title, record, table(rows, args.round), sys.argv)
    print(table(rows, args.round))
    print("best variant per concept (largest worst-case margin to the targets):", json.dumps(best))


if __name__ == "__main__":
    main()
