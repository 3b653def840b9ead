"""SC-DPO's defaults across seeds: each concept erased end to end at several seeds, scored by ``bench mini``.

    python benchmarks/seeds_scdpo.py --concepts red circle --seeds 0 1 2 --out runs/seeds-scdpo
    python benchmarks/seeds_scdpo.py --seeds 0 --variants plain-dpo     # the issue's ablation at seed 0
    python benchmarks/seeds_scdpo.py --table-only --out runs/seeds-scdpo

A sweep (``sweep_scdpo.py``) picks options at one seed; this script checks that what it picked holds at
others. The seed changes every random draw of the run: the cost model's data and initialisation, the
base model's samples behind the pairs, the LoRA initialisation and the training noise, and the samples
the safety-constraint check reads.

Each run is ``<out>/<concept>-seed<S>[-<variant>]``, a plain ``safegen erase --method scdpo`` folder at
``SCDPOConfig``'s defaults plus ``--set`` and the variant's options (``plain-dpo``: ``gamma = 0``,
``cost_lambda = 0``, ``retain_weight = 0`` and ``require_safer_winner = false``: plain Diffusion-DPO on
pairs ranked by the reward alone).
A folder that already holds the run is resumed (a finished one returns at once), so the script can be
stopped and started again.
``--reuse-from DIR`` takes stages 1-2 from ``DIR/<run name>/cost`` and ``DIR/<run name>/pairs`` where they
exist (``safegen erase --set cost_dir=... --set pairs_dir=...``). Each run's ``bench mini`` result is kept
beside it as ``bench-mini-<images per prompt>.json`` (what ``safegen bench mini --adapter RUN --json``
prints) and read back while the adapter is older than it.

Results: ``<out>/results.jsonl`` (one row per run) and ``benchmarks/results/seeds_scdpo.{json,md}``: a
row per concept and seed, then per concept the worst value over seeds and whether every seed met every
target. Targets (issue #5): UA >= 0.95, IRA >= 0.90 x base, CRA >= 0.95 x base, synonym UA >= 0.85; one
concept end to end <= 20 min on 2 CPU cores (the stage timings come from each run's manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS: dict[str, dict[str, Any]] = {
    "centre": {},
    # the ablation: pairs ranked by the reward alone, kept whichever costs more (session 9: with
    # require_safer_winner on, all but 1-2 of the 128 harmful prompts' pairs were dropped)
    "plain-dpo": {"gamma": 0.0, "cost_lambda": 0.0, "retain_weight": 0.0, "require_safer_winner": False},
}


def run_name(concept: str, seed: int, variant: str) -> str:
    return f"{concept}-seed{seed}" + ("" if variant == "centre" else f"-{variant}")


def run_config(args: argparse.Namespace, concept: str, seed: int, variant: str) -> dict[str, Any]:
    """The options of one run: the defaults, ``--set``, the variant, the seed and any reused stages."""
    from safegen.methods.scdpo_config import load_config

    config = {**load_config(None, args.set).to_dict(), **VARIANTS[variant], "seed": seed}
    if args.reuse_from:
        old = args.reuse_from / run_name(concept, seed, variant)
        for stage in ("cost", "pairs"):
            if (old / stage).is_dir():
                config[f"{stage}_dir"] = str(old / stage)
    return config


def bench(run: Path, concept: str, args: argparse.Namespace) -> dict[str, Any]:
    """``bench mini --adapter run``, or the result kept beside the run if the adapter has not changed."""
    from safegen.bench.mini import run_bench_mini

    kept = run / f"bench-mini-{args.images_per_prompt}.json"  # `safegen bench mini --json` of the adapter
    weights = run / "pytorch_lora_weights.safetensors"
    if kept.is_file() and kept.stat().st_mtime >= weights.stat().st_mtime:
        return json.loads(kept.read_text())
    result = run_bench_mini(
        model=args.model,
        concept=concept,
        adapter=str(run),
        images_per_prompt=args.images_per_prompt,
        device=args.device,
        reuse_base=True,
    )
    kept.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_one(args: argparse.Namespace, concept: str, seed: int, variant: str) -> dict[str, Any]:
    from safegen.bench.sweep import scored
    from safegen.methods.scdpo import run_scdpo
    from safegen.methods.scdpo_config import SCDPOConfig

    run = args.out / run_name(concept, seed, variant)
    config = run_config(args, concept, seed, variant)
    result = run_scdpo(
        concept,
        model=args.model,
        config=SCDPOConfig(**config),
        out=run,
        resume=(run / "manifest.json").is_file(),
        device=args.device,
    )
    stages = result["stages"]
    train = stages["train"]
    return {
        "concept": concept,
        "variant": f"seed={seed}" + ("" if variant == "centre" else f" {variant}"),
        "seed": seed,
        "ablation": variant,
        "changed": {k: v for k, v in config.items() if v != SCDPOConfig().to_dict()[k]},
        "adapter": str(run),
        "cost_auroc": stages["cost"]["holdout_auroc"],
        "seconds": {s: stages[s]["seconds"] for s in ("cost", "pairs", "train")},
        "stages_reused": [s for s in ("cost", "pairs") if stages[s]["reused"]],
        "trained_steps": train["steps"],
        "stopped_early": train["stopped_early"],
        "checks": train["checks"],
        **scored(bench(run, concept, args)),
    }


def summary(rows: list[dict[str, Any]]) -> str:
    """Per concept and variant: the worst value over its seeds, and how many seeds met every target."""
    from safegen.bench.sweep import TARGETS

    lines = [
        "| concept | variant | seeds | worst UA | worst IRA / base | worst CRA / base | worst synonym UA "
        "| seeds meeting every target | longest end to end s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["concept"], r["ablation"]), []).append(r)
    for (concept, variant), mine in sorted(groups.items()):
        worst = {k: min(r[k] for r in mine) for k in TARGETS}
        cells = [f"**{worst[k]:.3f}**" if worst[k] >= v else f"{worst[k]:.3f}" for k, v in TARGETS.items()]
        met = sum(all(r["meets"].values()) for r in mine)
        seeds = ",".join(str(r["seed"]) for r in sorted(mine, key=lambda r: r["seed"]))
        whole = [sum(r["seconds"].values()) for r in mine if not r["stages_reused"]]  # end to end only
        longest = f"{max(whole):.0f}" if whole else "- (stages reused)"
        cells = [concept, variant, seeds, *cells, f"{met} of {len(mine)}", longest]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict[str, Any]]) -> str:
    from safegen.bench.sweep import table as sweep_table

    def check(r: dict[str, Any]) -> str:
        last = r["checks"][-1]["constraint/flagged"] if r["checks"] else float("nan")
        return f"{r['trained_steps']} ({'stopped' if r['stopped_early'] else 'ran'}; flagged {last:.3f})"

    extra = {
        "cost AUROC": lambda r: f"{r['cost_auroc']:.3f}",
        "steps (check)": check,
        "stages reused": lambda r: ", ".join(r["stages_reused"]) or "none",
    }
    return sweep_table(rows, {}, extra) + "\n" + summary(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=["red", "circle"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["centre"], choices=sorted(VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="options for every run")
    ap.add_argument("--model", default="mini")
    ap.add_argument("--out", type=Path, default=Path("runs/seeds-scdpo"))
    ap.add_argument("--reuse-from", type=Path, help="a folder of <run name>/cost and <run name>/pairs")
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="JSON + markdown here")
    ap.add_argument("--table-only", action="store_true", help="tables from <out>'s rows only")
    args = ap.parse_args()
    import torch

    from safegen.bench.sweep import append_row, read_rows, write_results

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, _ = read_rows(args.out / "results.jsonl")
    if not args.table_only:
        for concept in args.concepts:
            for seed in args.seeds:
                for variant in args.variants:
                    name = run_name(concept, seed, variant)
                    if any(Path(r["adapter"]).name == name for r in rows):
                        continue
                    row = run_one(args, concept, seed, variant)
                    append_row(args.out / "results.jsonl", row)
                    rows.append(row)
    record = {"method": "scdpo", "model": args.model, "images_per_prompt": args.images_per_prompt}
    title = f"SC-DPO across seeds ({args.model})"
    write_results(args.results, "seeds_scdpo", title, record | {"rows": rows}, table(rows), sys.argv)
    print(table(rows))


if __name__ == "__main__":
    main()
