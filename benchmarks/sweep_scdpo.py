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

Variants: the centre (:data:`CENTRE`, the current provisional defaults) and, for each option of
:data:`GRID`, the centre with that one option changed. ``gamma = 0`` (plain Diffusion-DPO, no DFM) and
``cost_lambda = 0`` (pairs ranked by reward alone) are the ablations of the issue. Results go to
``<out>/results.jsonl`` (one row per variant and concept) and ``<out>/results.md`` (the table, targets
marked); timings per stage come from each run's manifest (target: one concept end to end <= 20 min on
2 CPU cores).

Targets (issue): UA >= 0.95, IRA >= 0.90 x base, CRA >= 0.95 x base, synonym UA >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CENTRE: dict[str, Any] = {}  # the dataclass defaults; put overrides here once a sweep has chosen them
GRID: dict[str, list[Any]] = {
    "beta": [500.0, 2500.0, 10000.0],
    "lr": [3e-5, 1e-4, 3e-4],
    "steps": [150, 300, 600],
    "cost_lambda": [0.0, 1.0, 3.0],
    "gamma": [0.0, 2.0, 5.0],
    "lora_rank": [4, 8, 16],
}


def centre() -> dict[str, Any]:
    from safegen.methods.scdpo_config import SCDPOConfig

    return {**SCDPOConfig().to_dict(), **CENTRE}


def plan(grid: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """The variants: ``{"name", "changed": {option: value}, "config": {...}}``, the centre first."""
    from safegen.bench.sweep import one_factor_plan

    return one_factor_plan(centre(), GRID if grid is None else grid)


def run_concept(concept: str, args: argparse.Namespace, done: set[tuple[str, str]]) -> list[dict[str, Any]]:
    from safegen.bench.mini import run_bench_mini
    from safegen.bench.sweep import append_row, checkpoint_adapters, gcd_all, scored
    from safegen.methods.scdpo import run_scdpo
    from safegen.methods.scdpo_config import SCDPOConfig

    root = args.out / concept
    variants = plan()
    steps_values = sorted(set(GRID.get("steps", [])) | {centre()["steps"]})
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

    cost = stage_run("cost", centre(), "cost")
    cost_dir = str(root / "cost" / "cost")
    for variant in variants:
        if variant["changed"].get("steps") is not None:
            continue  # a checkpoint of the centre run
        if variant["name"] != "centre" and (concept, variant["name"]) in done:
            continue
        config = dict(variant["config"])
        lam = config["cost_lambda"]  # pairs depend on lambda only: one pair set per value, shared
        pairs = stage_run(
            f"pairs-lambda{lam:g}", {**centre(), "cost_lambda": lam, "cost_dir": cost_dir}, "pairs"
        )
        pairs_dir = str(root / f"pairs-lambda{lam:g}" / "pairs")
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
        if is_centre:  # the steps variants: checkpoints of this run
            adapters = checkpoint_adapters(root / f"train-{variant['name']}", steps_values, centre()["steps"])
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
                    "train": trained["stages"]["train"]["seconds"] * _steps_share(name, train_cfg["steps"]),
                },
                "final": trained["stages"]["train"]["final"],
                **scored(bench),
            }
            append_row(args.out / "results.jsonl", row)
            rows.append(row)
    return rows


def _steps_share(name: str, trained_steps: int) -> float:
    """The share of a run's training time that a checkpoint variant (``steps=N`` or the centre) used."""
    steps = int(name.split("=")[1]) if name.startswith("steps=") else centre()["steps"]
    return min(1.0, steps / trained_steps) if name.startswith("steps=") or name == "centre" else 1.0


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (concept, variant); targets met in bold; the ablations labelled."""
    from safegen.bench.sweep import table as sweep_table

    labels = {"gamma=0": "ablation: no DFM", "cost_lambda=0": "ablation: no cost"}
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
    ap.add_argument("--dry-run", action="store_true", help="print the variants and exit")
    args = ap.parse_args()
    if args.dry_run:
        for v in plan():
            print(v["name"], json.dumps(v["changed"]))
        return
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from safegen.bench.sweep import best_variants, read_rows

    previous, done = read_rows(args.out / "results.jsonl")
    rows = previous + [r for c in args.concepts for r in run_concept(c, args, done)]
    (args.out / "results.md").write_text(table(rows))
    best = best_variants(rows, args.concepts)
    print(table(rows))
    print("best variant per concept (largest worst-case margin to the targets):", json.dumps(best))


if __name__ == "__main__":
    main()
