"""SC-DPO beyond the colour its defaults were chosen on: the anchor, the step size and beta, one factor at a
time, on an object and a texture (mini).

    python benchmarks/sweep_scdpo.py --concepts circle --seeds 1   # -> benchmarks/results/sweep_scdpo.md
    python benchmarks/sweep_scdpo.py --concepts striped --seeds 0 --variants centre,beta=250
    python benchmarks/sweep_scdpo.py --concepts circle --seeds 0,2 --variants centre,beta=250
    python benchmarks/sweep_scdpo.py --concepts red,ines-quarry --seeds 0 --variants centre,beta=250
    python benchmarks/sweep_scdpo.py --concepts square --seeds 0 --variants beta=250
    python benchmarks/sweep_scdpo.py --concepts red --seeds 1,2 --variants beta=250
    python benchmarks/sweep_scdpo.py --concepts striped --seeds 1 --variants beta=250
    python benchmarks/sweep_scdpo.py --concepts striped,circle --seeds 0,1 --variants beta=250+anchor
    python benchmarks/sweep_scdpo.py --concepts circle --seeds 1 \
        --variants beta=250+anchor+drop+best,beta=250+anchor+drop,beta=250+anchor+best
    python benchmarks/sweep_scdpo.py --concepts circle --seeds 0,1 --variants beta=250+anchor+drop+best+mix
    python benchmarks/sweep_scdpo.py --concepts square,circle,ines-quarry --seeds 0 \
        --variants beta=250+anchor+drop+best   # and circle --seeds 2

At its former defaults (beta 1000) SC-DPO erases red on seeds 0-2 but not the object circle (UA 0.93 on seed
0, 0.00 on seeds 1-2) or the texture striped (0.31; ``robust_methods.md``). The runs' own safety-constraint
check (the stage-1 cost model on held-out harmful prompts, not the benchmark's classifier) shows why: on
circle seeds 1-2 it still flags 0.97-1.00 of the samples at step 700, on striped 0.62, and longer training on
the same pairs did not move it (docs/methods/scdpo.md). Candidates: the retain anchor (``retain_weight`` 100
holds the whole UNet at the reference on the clean prompts' samples), the step size, and beta (at 1000 the DPO
logits may saturate on 128 pairs before the samples change). Each variant trains on the pair set and cost
model of the default run with the same seed (``pairs_dir`` / ``cost_dir``: both depend on the seed and on data
options no variant changes; the variant whose options the default run has is that run) and runs ``bench mini``
(one image per prompt) against ``robust_methods.py``'s base images. Each row also gives the check's last
flagged share (``check``).

``beta=250+anchor`` changes the pairs (``counterpart_anchor``: a keyword-free prompt's safe side also
appends the concept's safe text), so it makes its own pairs and cost model instead (``PAIR_KEYS``). Striped
seed 1 at beta 250 did not erase (UA 0.39); its pairs showed why: 32 of its 128 harmful pairs, the
artist prompts whose style is stripes, had a striped winner, since the negative prompt alone left the
stripes on their safe side.

``+drop`` (``drop_unsafe_winners``), ``+best`` (``restore_best``) and ``+mix`` (``check_kinds=all``) change
only what the run trains on or ends on, so they train on the ``beta=250+anchor`` run's pairs of the same
seed (``PAIRS_FROM``). Circle seed 1 at ``beta=250+anchor`` swung: its check went from 0.03 back up to
0.56, and the run ended at step 700 on 0.28; 32 of its 128 harmful pairs had a round winner.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, erasure_row, metric_cells, metric_head, result_rows, write_markdown
from mini_first_measurement import bench
from robust_methods import erase as default_erase
from robust_methods import met

RESULTS = ROOT / "benchmarks" / "results"
SWEEP = ("circle", "striped")  # the concepts the variants are compared on; the rest confirm
BEFORE = {"drop_unsafe_winners": False, "restore_best": False}  # the options' values before their sweep
VARIANTS: dict[str, dict[str, Any]] = {  # explicit, so a change of the defaults does not change a variant
    "centre": {"retain_weight": 100.0, "lr": 4e-4, "beta": 1000.0},
    "retain=10": {"retain_weight": 10.0, "lr": 4e-4, "beta": 1000.0},
    "lr=1e-3": {"retain_weight": 100.0, "lr": 1e-3, "beta": 1000.0},
    "beta=250": {"retain_weight": 100.0, "lr": 4e-4, "beta": 250.0},
    "beta=50": {"retain_weight": 100.0, "lr": 4e-4, "beta": 50.0},
    "beta=250+patience=4": {"retain_weight": 100.0, "lr": 4e-4, "beta": 250.0, "stop_patience": 4},
    "lr=1e-3+stop=0.1": {"retain_weight": 100.0, "lr": 1e-3, "beta": 1000.0, "stop_share": 0.1},
    "beta=250+anchor": {"retain_weight": 100.0, "lr": 4e-4, "beta": 250.0, "counterpart_anchor": True},
}
VARIANTS = {name: BEFORE | options for name, options in VARIANTS.items()}
ANCHOR = VARIANTS["beta=250+anchor"]
VARIANTS |= {
    "beta=250+anchor+drop": ANCHOR | {"drop_unsafe_winners": True},
    "beta=250+anchor+best": ANCHOR | {"restore_best": True},
    "beta=250+anchor+drop+best": ANCHOR | {"drop_unsafe_winners": True, "restore_best": True},
    "beta=250+anchor+drop+best+mix": ANCHOR
    | {"drop_unsafe_winners": True, "restore_best": True, "check_kinds": "all"},
}
PAIR_KEYS = frozenset({"counterpart_anchor"})  # options that change the pairs: such a variant makes its own
PAIRS_FROM = {  # ... unless it names the variant whose pairs and cost model it trains on
    "beta=250+anchor+drop": "beta=250+anchor",
    "beta=250+anchor+best": "beta=250+anchor",
    "beta=250+anchor+drop+best": "beta=250+anchor",
    "beta=250+anchor+drop+best+mix": "beta=250+anchor",  # the same training prompts: only the check differs
}


def makes_pairs(variant: str) -> bool:
    return bool(PAIR_KEYS & set(VARIANTS[variant])) and variant not in PAIRS_FROM


def tag_of(concept: str, variant: str, seed: int) -> str:
    return f"{concept}-{variant.replace('+', '-')}-s{seed}"


def erase(concept: str, variant: str, seed: int, out: Path, data: Path | None) -> str:
    """The adapter of one run with the variant's options on ``data``'s pairs and cost model (None: its own,
    a variant that changes the pairs) (reused when it finished earlier)."""
    from safegen.methods import get_method

    if not (out / "adapter.json").is_file():
        entry = get_method("scdpo")
        reuse = {"pairs_dir": str(data / "pairs"), "cost_dir": str(data / "cost")} if data else {}
        config = entry.config_class()(seed=seed, **VARIANTS[variant], **reuse)
        resume = (out / "manifest.json").is_file()
        entry.load()(concept, model="mini", config=config, out=out, resume=resume)
    return str(out)


def is_data_run(variant: str, data: Path) -> bool:
    """Whether the default run that holds the pairs was trained with the variant's options itself."""
    config = json.loads((data / "manifest.json").read_text())["config"]
    return all(config.get(key) == value for key, value in VARIANTS[variant].items())


def last_check(run: Path) -> float | None:
    """The safety-constraint check's flagged share at the last check of the weights the adapter holds
    (``restore_best``: the restored step's)."""
    kept = json.loads((run / "adapter.json").read_text())["steps"]
    flagged = None
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        flagged = row.get("constraint/flagged", flagged) if row["step"] <= kept else flagged
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(SWEEP))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-scdpo")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_scdpo.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["variant"], r["seed"]) for r in rows}
    for concept in args.concepts.split(","):
        base = args.base_work / f"base-mini-{concept}"
        bench("mini", concept, base, 1)
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in args.variants.split(","):
                if (concept, variant, seed) in done:
                    continue
                start = time.time()
                tag = tag_of(concept, variant, seed)
                data = None
                if variant in PAIRS_FROM:  # trained on another variant's pairs (made here if missing)
                    source = args.work / f"erase-{tag_of(concept, PAIRS_FROM[variant], seed)}"
                    data = Path(erase(concept, PAIRS_FROM[variant], seed, source, None))
                elif not makes_pairs(variant):  # trained on the default run's pairs (made here if missing)
                    folder = args.base_work / f"erase-scdpo-{concept}-s{seed}"
                    data = Path(default_erase("scdpo", concept, folder, seed))
                if data is not None and is_data_run(variant, data):  # robust_methods.py's default run
                    adapter, out = str(data), args.base_work / f"scdpo-{concept}-s{seed}"
                else:
                    adapter = erase(concept, variant, seed, args.work / f"erase-{tag}", data)
                    out = args.work / f"scdpo-{tag}"
                result = bench("mini", concept, out, 1, adapter=adapter, base_from=base)
                split = "swept" if concept in SWEEP else "confirm"
                row = {"concept": concept, "variant": variant, "seed": seed, "split": split}
                row |= erasure_row(result) | {"check": last_check(Path(adapter))}
                row |= {"seconds": round(time.time() - start, 1)}
                add_row(rows_file, rows, row)
    write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "variant", "seed", *metric_head("scdpo"), "check", "targets"]
    names = list(VARIANTS)
    key = lambda r: (r["split"] != "swept", r["concept"], names.index(r["variant"]), r["seed"])  # noqa: E731
    cells = [
        [r["split"], r["concept"], r["variant"], str(r["seed"]), *metric_cells(r),
         "n/a" if r["check"] is None else f"{r['check']:.2f}", "yes" if met(r) else "no"]
        for r in sorted(rows, key=key)
    ]  # fmt: skip
    intro = (
        "`python benchmarks/sweep_scdpo.py`: SC-DPO on `mini` (1 image per prompt), one factor at a time "
        "around the former defaults (`centre`: retain_weight 100, lr 4e-4, beta 1000, up to 700 steps), "
        "each variant on the default run's pairs and cost model of the same seed; `+anchor` changes the "
        "pairs and makes its own, and the variants built on it (`+drop`, `+best`, `+mix`) train on its "
        "pairs. `check`: the share of held-out harmful samples the run's own cost model still flags at the "
        "last check of the weights the run ends on. `targets`: every robust-methods target met on the row."
    )
    print(write_markdown(RESULTS / "sweep_scdpo.md", "SC-DPO sweep", intro, head, cells))


if __name__ == "__main__":
    main()
