"""VCE with and without adversarial training: the benchmark's metrics and the three attacks, same seeds.

    python benchmarks/adversarial_vce.py                        # -> results/adversarial_vce.md
    python benchmarks/adversarial_vce.py --concepts circle --limit 4

Variants (``VARIANTS``): VCE at its defaults (``off``) and with ``adv_steps`` inner attack steps on the
pairs' prompt embeddings (``safegen/recipes/vce_adversarial.py``). Each is trained with seed 0 on
``mini-ar``, scored by ``bench mini`` against the unmodified model (the ``robust_methods.py`` columns)
and attacked as ``attack_table.py`` attacks (its budgets, the first ``--limit`` prompts that leave the
concept's axis out). The ``off`` adapter is ``robust_methods.py``'s (reused when present). Rows go to
``results/adversarial_vce.jsonl``; a rerun skips the rows it has.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from attack_table import ATTACKS, attack_row
from helpers import ROOT, add_row, result_rows, write_markdown
from mini_first_measurement import bench, row

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS: dict[str, dict[str, Any]] = {"off": {}, "adv": {"adv_steps": 3, "adv_eps": 0.5, "adv_lr": 0.5}}


def train(concept: str, variant: str, work: Path) -> tuple[Path, float]:
    """The seed-0 VCE adapter of ``variant`` and the seconds its training took (0 when reused)."""
    from safegen.recipes.vce import run_vce
    from safegen.recipes.vce_config import VCEConfig

    out = work / (f"erase-vce-{concept}-s0" if variant == "off" else f"erase-vce-{concept}-{variant}")
    if (out / "adapter.json").is_file():
        return out, 0.0
    start = time.time()
    config = VCEConfig(seed=0, **VARIANTS[variant])
    run_vce(concept, model="mini-ar", config=config, out=out, resume=(out / "manifest.json").is_file())
    return out, time.time() - start


def measure(concept: str, variant: str, work: Path, limit: int) -> dict[str, Any]:
    adapter, seconds = train(concept, variant, work)
    base = work / f"base-mini-ar-{concept}"
    bench("mini-ar", concept, base, 1)
    scored = bench(
        "mini-ar", concept, work / f"vce-{concept}-{variant}", 1, base_from=base, adapter=str(adapter)
    )
    out = {**row(concept, "vce", "mini-ar", scored, seconds), "variant": variant, **VARIANTS[variant]}
    for attack in ATTACKS:
        r = attack_row(attack, concept, "vce", limit, work / f"attacks-{variant}", adapter)
        out[f"{attack}_asr"], out[f"{attack}_pre"] = r["post_asr"], r["pre_asr"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="circle,red")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    rows_file = RESULTS / "adversarial_vce.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["variant"]) for r in rows}
    for concept in args.concepts.split(","):
        for variant in args.variants.split(","):
            if (concept, variant) not in done:
                add_row(rows_file, rows, measure(concept, variant, args.work, args.limit))
    head = ["concept", "variant", "UA", "synonym UA", "implicit UA", "unprompted (base -> VCE)", "IRA / base"]
    head += ["CRA / base", *(f"{a} ASR" for a in ATTACKS), "train s"]
    cells = []
    for r in sorted(rows, key=lambda r: (r["concept"], list(VARIANTS).index(r["variant"]))):
        c = [r["concept"], r["variant"]] + [
            "n/a" if r[k] is None else f"{r[k]:.3f}" for k in ("ua", "synonym_ua", "implicit_ua")
        ]
        c += [
            f"{r['unprompted_base']:.3f} -> {r['unprompted']:.3f}",
            f"{r['ira_ratio']:.3f}",
            f"{r['cra_ratio']:.3f}",
        ]
        c += [f"{r[f'{a}_asr']:.2f}" for a in ATTACKS] + [
            f"{r['seconds']:.0f}" if r["seconds"] else "(reused)"
        ]
        cells.append(c)
    intro = (
        f"`python benchmarks/adversarial_vce.py --limit {args.limit}`: VCE (seed 0, mini-ar) at its defaults "
        f"and with adversarial training ({VARIANTS['adv']}); metrics as in robust_methods.md, post-attack "
        f"ASR on the first {args.limit} prompts that leave the concept's axis out (attack_table.md's budget)."
    )
    print(write_markdown(RESULTS / "adversarial_vce.md", "VCE with adversarial training", intro, head, cells))


if __name__ == "__main__":
    main()
