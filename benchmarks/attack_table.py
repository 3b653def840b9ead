"""The field's three attacks against every method on the mini world, same prompts and seeds.

    python benchmarks/attack_table.py                         # -> benchmarks/results/attack_table.md
    python benchmarks/attack_table.py --concepts red --targets base,sp --limit 4

Targets: the unmodified ``mini``; ``mini`` behind each guard (sp, dlr, sld, neg) at its defaults; ``mini``
erased by SC-DPO and ``mini-ar`` erased by VCE at their defaults (the adapters of
``benchmarks/mini_first_measurement.py``, made here if missing); the unmodified ``mini-ar`` as the VCE
row's reference. Prompts: the concept's prompts that leave its axis out ("a striped square" for red),
the first ``--limit``, the same for every target. Per row: plain ASR (the same content with the concept
named), pre-attack ASR (the prompt as it is), post-attack ASR, and seconds per attacked prompt on this
machine's CPU cores.

The attacks run on a CPU budget, each setting named here and in the table: UnlearnDiffAtk with 10 Adam
steps per timestep on every 100th timestep (the paper: 40 on every 20th; it stops at the first success
either way), concept inversion with 200 steps (the paper: 1,000), Ring-A-Bell with 300 generations of 50
(the paper: 3,000 of 200). Rows are appended to ``attack_table.jsonl``; a rerun skips the rows it has.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, result_rows, write_markdown
from mini_first_measurement import erase

RESULTS = ROOT / "benchmarks" / "results"
ATTACKS = ("unlearndiff", "inversion", "ringabell")
TARGETS = ("base", "sp", "dlr", "sld", "neg", "scdpo", "base-ar", "vce")
BUDGET = {
    "unlearndiff": {"iterations": 10, "t_first": 50, "t_last": 950, "t_stride": 100},
    "inversion": {"steps": 200},
    "ringabell": {"generations": 300, "population": 50},
}


def attack_row(
    attack: str, concept: str, target: str, limit: int, work: Path, adapter: Path | None = None
) -> dict[str, Any]:
    from safegen.attacks import run_attack
    from safegen.methods import get_method

    kwargs: dict[str, Any] = {"model": "mini-ar" if target in ("base-ar", "vce") else "mini"}
    if target in ("sp", "dlr", "sld", "neg"):
        kwargs["guard"] = target
    if target in ("scdpo", "vce"):
        kwargs["adapter"] = erase(target, concept, adapter or work / f"erase-{target}-{concept}")
    options = get_method(attack).config_class()(**BUDGET[attack])
    out = work / f"attack-{attack}-{target}-{concept}"
    start = time.time()
    result = run_attack(
        attack,
        concept,
        options=options,
        limit=limit,
        out=out,
        resume=(out / "manifest.json").is_file(),
        **kwargs,
    )
    return {
        "concept": concept,
        "attack": attack,
        "target": target,
        "plain_asr": result["named_asr"],
        "pre_asr": result["pre_asr"],
        "post_asr": result["post_asr"],
        "seconds_per_attacked_prompt": result["seconds_per_attacked_prompt"],
        "n_prompts": result["n_prompts"],
        "budget": BUDGET[attack],
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="red,circle")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "mini-first-measurement")
    parser.add_argument(
        "--adapters", type=Path, default=None, help="folder of erase-<method>-<concept>-s0 runs"
    )
    args = parser.parse_args()
    rows_file = RESULTS / "attack_table.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["attack"], r["target"]) for r in rows}
    for concept in args.concepts.split(","):
        for attack in args.attacks.split(","):
            for target in args.targets.split(","):
                if (concept, attack, target) in done:
                    continue
                adapter = args.adapters / f"erase-{target}-{concept}-s0" if args.adapters else None
                add_row(rows_file, rows, attack_row(attack, concept, target, args.limit, args.work, adapter))
    write_table(rows, args.limit)


def write_table(rows: list[dict[str, Any]], limit: int) -> None:
    head = [
        "concept",
        "attack",
        "target",
        "plain ASR",
        "pre-attack ASR",
        "post-attack ASR",
        "s / attacked prompt",
    ]
    intro = (
        f"`python benchmarks/attack_table.py --limit {limit}`: the first {limit} prompts that leave the "
        "concept's axis out, the same for every target; budgets: "
        + "; ".join(f"{a} {json.dumps(b)}" for a, b in BUDGET.items())
        + ". ASR: share of prompts with an image the mini classifier reads as showing the concept."
    )
    order = lambda r: (r["concept"], ATTACKS.index(r["attack"]), TARGETS.index(r["target"]))  # noqa: E731
    cells = []
    for r in sorted(rows, key=order):
        row_cells = [r["concept"], r["attack"], r["target"]]
        row_cells += [f"{r[k]:.2f}" for k in ("plain_asr", "pre_asr", "post_asr")]
        spent = r["seconds_per_attacked_prompt"]
        row_cells.append(f"{spent:.0f}" if r["pre_asr"] < 1 else "-")  # "-": no prompt needed the attack
        cells.append(row_cells)
    title = "Attacks against every method on the mini world"
    print(write_markdown(RESULTS / "attack_table.md", title, intro, head, cells))


if __name__ == "__main__":
    main()
