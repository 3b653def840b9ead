"""An erasure recipe with and without adversarial training: the benchmark's metrics and the three attacks.

    python benchmarks/adversarial.py --method vce               # -> results/adversarial_vce.md
    python benchmarks/adversarial.py --method scdpo --concepts circle --limit 4   # -> adversarial_scdpo.md

Variants (``VARIANTS``): the recipe at its defaults (``off``) and with ``adv_steps`` inner attack steps on
the pairs' prompt embeddings (VCE: ``safegen/recipes/vce_adversarial.py``; SC-DPO:
``safegen/recipes/scdpo_adversarial.py``). Each is trained with seed 0 (VCE on ``mini-ar``, SC-DPO on
``mini``), scored by ``bench mini`` against the unmodified model (the ``robust_methods.py`` columns) and
attacked as ``attack_table.py`` attacks (its budgets, the first ``--limit`` prompts that leave the
concept's axis out). The ``off`` adapter is ``robust_methods.py``'s (reused when present). Rows go to
``results/adversarial_<method>.jsonl``; a rerun skips the rows it has.
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
MODELS = {"vce": "mini-ar", "scdpo": "mini"}
LABELS = {"vce": "VCE", "scdpo": "SC-DPO"}


def train(method: str, concept: str, variant: str, work: Path) -> tuple[Path, float]:
    """The seed-0 adapter of ``variant`` and the seconds its training took (0 when reused)."""
    from safegen.methods import get_method

    tag = f"erase-{method}-{concept}"
    out = work / (f"{tag}-s0" if variant == "off" else f"{tag}-{variant}")
    if (out / "adapter.json").is_file():
        return out, 0.0
    start = time.time()
    entry = get_method(method)
    config = entry.config_class()(seed=0, **VARIANTS[variant])
    resume = (out / "manifest.json").is_file()
    entry.load()(concept, model=MODELS[method], config=config, out=out, resume=resume)
    return out, time.time() - start


def measure(method: str, concept: str, variant: str, work: Path, limit: int) -> dict[str, Any]:
    adapter, seconds = train(method, concept, variant, work)
    model = MODELS[method]
    base = work / f"base-{model}-{concept}"
    bench(model, concept, base, 1)
    scored = bench(
        model, concept, work / f"{method}-{concept}-{variant}", 1, base_from=base, adapter=str(adapter)
    )
    out = {**row(concept, method, model, scored, seconds), "variant": variant, **VARIANTS[variant]}
    for attack in ATTACKS:
        r = attack_row(attack, concept, method, limit, work / f"attacks-{method}-{variant}", adapter)
        out[f"{attack}_asr"], out[f"{attack}_pre"] = r["post_asr"], r["pre_asr"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="vce", choices=tuple(MODELS))
    parser.add_argument("--concepts", default="circle,red")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    method, label = args.method, LABELS[args.method]
    rows_file = RESULTS / f"adversarial_{method}.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["variant"]) for r in rows}
    for concept in args.concepts.split(","):
        for variant in args.variants.split(","):
            if (concept, variant) not in done:
                add_row(rows_file, rows, measure(method, concept, variant, args.work, args.limit))
    head = ["concept", "variant", "UA", "synonym UA", "implicit UA", f"unprompted (base -> {label})"]
    head += ["IRA / base", "CRA / base", *(f"{a} ASR" for a in ATTACKS), "train s"]
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
        f"`python benchmarks/adversarial.py --method {method} --limit {args.limit}`: {label} (seed 0, "
        f"{MODELS[method]}) at its defaults and with adversarial training ({VARIANTS['adv']}); metrics as in "
        f"robust_methods.md, post-attack ASR on the first {args.limit} prompts that leave the concept's axis "
        "out (attack_table.md's budget)."
    )
    title = f"{label} with adversarial training"
    print(write_markdown(RESULTS / f"adversarial_{method}.md", title, intro, head, cells))


if __name__ == "__main__":
    main()
