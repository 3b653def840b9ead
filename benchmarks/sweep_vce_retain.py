"""VCE's retention on the mini world: the retain term, its data and the DPO beta (mini-ar).

    python benchmarks/sweep_vce_retain.py                     # -> benchmarks/results/sweep_vce_retain.md
    python benchmarks/sweep_vce_retain.py --concepts circle --variants centre,retain=1 --seeds 0,1,2
    python benchmarks/sweep_vce_retain.py --concepts red --variants centre --quality   # + new phrasings

Without the retain term VCE erased red and the artist ines-quarry on named, implicit and unprompted
prompts but cost in-domain retention (IRA 0.81-0.87 x base on red, 0.67-0.74 on the artist). The retain
term (``retain_weight``: the NLL of the base model's own samples of clean prompts, in expectation a KL to
the base model on them) is measured here with more retain data (``n_clean_prompts``, ``retain_seeds``),
weights, steps, the DPO beta, TRL's RPO term and more harmful prompts. Each variant erases the concept on
``mini-ar`` with the other options at their defaults (the variants name every option this sweep moved, so
a change of the defaults does not change a variant) and runs ``bench mini`` (one image per prompt) against
the base images of ``robust_methods.py``'s work folder. ``split``: red and striped are the concepts VCE's
defaults were chosen on (``swept``); circle and ines-quarry confirm. The chosen variant,
``retain=0.1+clean=128x2+beta=2.5``, is VCE's default; what each variant did is in docs/methods/vce.md.

``--quality`` also measures what each run costs on captions in phrasings training never used
(``quality_table.py``'s ``bench quality --captions mini``, at the model's own guidance scale), into
``sweep_vce_retain_quality.jsonl`` and the table's last columns (``n/a`` where not measured).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, erasure_row, metric_cells, metric_head, result_rows, write_markdown
from mini_first_measurement import bench
from quality_table import quality_row
from robust_methods import SWEPT, met

RESULTS = ROOT / "benchmarks" / "results"
QUALITY = RESULTS / "sweep_vce_retain_quality.jsonl"
SMALL = {"n_clean_prompts": 32, "retain_seeds": 1}  # the retain data before this sweep
CLEAN = {"n_clean_prompts": 128, "retain_seeds": 2}  # more retain data: clean=128x2
BEFORE = {"beta": 5.0}  # the DPO beta before this sweep (variants that do not set their own)
VARIANTS: dict[str, dict[str, Any]] = {  # explicit, so a change of the defaults does not change a variant
    "centre": {"retain_weight": 0.0, **SMALL},
    "retain=1": {"retain_weight": 1.0, **SMALL},
    "retain=1+clean=128x2": {"retain_weight": 1.0, **CLEAN},
    "retain=0.3+clean=128x2": {"retain_weight": 0.3, **CLEAN},
    "retain=3+clean=128x2": {"retain_weight": 3.0, **CLEAN},
    "retain=0.1+clean=128x2": {"retain_weight": 0.1, **CLEAN},
    "retain=0.3+clean=128x2+steps=400": {"retain_weight": 0.3, "steps": 400, **CLEAN},
    "retain=0.1+clean=128x2+steps=400": {"retain_weight": 0.1, "steps": 400, **CLEAN},
    "retain=0.1+clean=128x2+beta=10": {"retain_weight": 0.1, "beta": 10.0, **CLEAN},
    "retain=0.1+clean=128x2+beta=2.5": {"retain_weight": 0.1, "beta": 2.5, **CLEAN},
    "retain=0.3+clean=128x2+beta=2.5": {"retain_weight": 0.3, "beta": 2.5, **CLEAN},
    "retain=0.1+clean=128x2+beta=2.5+harmful=128": {
        "retain_weight": 0.1,
        "beta": 2.5,
        "n_harmful_prompts": 128,
        **CLEAN,
    },
    "retain=0.3+clean=128x2+harmful=128": {"retain_weight": 0.3, "n_harmful_prompts": 128, **CLEAN},
    "retain=0.1+clean=128x2+harmful=128": {"retain_weight": 0.1, "n_harmful_prompts": 128, **CLEAN},
    "retain=0.2+clean=128x2+harmful=128": {"retain_weight": 0.2, "n_harmful_prompts": 128, **CLEAN},
    "retain=0.3+clean=128x2+rpo=0.2": {"retain_weight": 0.3, "rpo_alpha": 0.2, **CLEAN},
    "retain=0.3+clean=128x2+rpo=1": {"retain_weight": 0.3, "rpo_alpha": 1.0, **CLEAN},
}
VARIANTS = {name: BEFORE | v for name, v in VARIANTS.items()}


def erase(concept: str, variant: str, seed: int, out: Path) -> str:
    """The adapter of one VCE run with the variant's options (reused when it finished earlier)."""
    from safegen.methods import get_method

    if not (out / "adapter.json").is_file():
        entry = get_method("vce")
        config = entry.config_class()(seed=seed, **VARIANTS[variant])
        resume = (out / "manifest.json").is_file()
        entry.load()(concept, model="mini-ar", config=config, out=out, resume=resume)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="red,striped")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-vce-retain")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    parser.add_argument("--quality", action="store_true", help="also bench quality on new phrasings")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_vce_retain.jsonl"
    rows, quality = result_rows(rows_file), result_rows(QUALITY)
    done = {(r["concept"], r["variant"], r["seed"]) for r in rows}
    measured = {(r["concept"], r["variant"], r["seed"]) for r in quality}
    for concept in args.concepts.split(","):
        base = args.base_work / f"base-mini-ar-{concept}"
        bench("mini-ar", concept, base, 1)
        for variant in args.variants.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                tag = f"{concept}-{variant.replace('+', '-')}-s{seed}"
                if args.quality and (concept, variant, seed) not in measured:
                    adapter = erase(concept, variant, seed, args.work / f"erase-{tag}")
                    out = args.work / f"quality-{tag}"
                    q = quality_row("vce", concept, None, 20, args.work, adapter=adapter, out=out)
                    add_row(QUALITY, quality, {"concept": concept, "variant": variant, "seed": seed} | q)
                if (concept, variant, seed) in done:
                    continue
                start = time.time()
                adapter = erase(concept, variant, seed, args.work / f"erase-{tag}")
                out = args.work / f"vce-{tag}"
                result = bench("mini-ar", concept, out, 1, adapter=adapter, base_from=base)
                split = "swept" if concept in SWEPT else "confirm"
                row = {"concept": concept, "variant": variant, "seed": seed, "split": split}
                row |= erasure_row(result) | {"seconds": round(time.time() - start, 1)}
                add_row(rows_file, rows, row)
    write_table(rows, quality)


def quality_cells(row: dict[str, Any] | None) -> list[str]:
    """Accuracy per axis and FID on new phrasings (``n/a`` where not measured)."""
    if row is None:
        return ["n/a"] * 4
    accuracy = [f"{row['accuracy_without_concept'][a]:.3f}" for a in ("object", "color", "texture")]
    return [*accuracy, f"{max(row['fid'], 0.0):.0f}"]


def write_table(rows: list[dict[str, Any]], quality: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "variant", "seed", *metric_head("vce"), "targets"]
    head += ["new phrasings: object", "colour", "texture", "FID"]
    names = list(VARIANTS)
    key = lambda r: (r["split"] != "swept", r["concept"], names.index(r["variant"]), r["seed"])  # noqa: E731
    by = {(q["concept"], q["variant"], q["seed"]): q for q in quality}
    cells = [
        [r["split"], r["concept"], r["variant"], str(r["seed"]), *metric_cells(r), "yes" if met(r) else "no"]
        + quality_cells(by.get((r["concept"], r["variant"], r["seed"])))
        for r in sorted(rows, key=key)
    ]
    intro = (
        "`python benchmarks/sweep_vce_retain.py`: VCE on `mini-ar` (1 image per prompt) with the retain "
        "term, its data and the DPO beta varied from the defaults before this sweep (`centre`: "
        "retain_weight 0, 32 clean prompts x 1 sample, beta 5; a variant that names no beta has 5). "
        "`clean=128x2`: n_clean_prompts 128, retain_seeds 2; `harmful=128`: n_harmful_prompts 128; `rpo`: "
        "rpo_alpha. The chosen `retain=0.1+clean=128x2+beta=2.5` is the default. `targets`: every "
        "robust-methods target met on the row. `new phrasings`: `--quality`, `bench quality --captions mini` "
        "against the unmodified model at the model's own guidance scale: per-axis accuracy on the captions "
        "that do not show the concept, FID (mini features) on every caption (the concept's own change by "
        "design)."
    )
    print(write_markdown(RESULTS / "sweep_vce_retain.md", "VCE retention sweep", intro, head, cells))


if __name__ == "__main__":
    main()
