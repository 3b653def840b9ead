"""SP-Guard's strength: on the judge's ramp (the paper's adaptive strength) or all or nothing.

    python benchmarks/sweep_sp_shape.py                          # -> benchmarks/results/sweep_sp_shape.md
    python benchmarks/sweep_sp_shape.py --concepts square --variants hard

On the confirm object square, sp's judge flags 27-29 of 30 named, synonym and implicit prompts, yet 29 of
them are still drawn square, 19 of those at a partial strength (lam 2-45 of 60). ``hard``
(``strength_shape=hard``, judge.py Eq. c'') guides every image the judge flags at all with lam_max. Each
variant runs ``bench mini`` with sp at its other defaults and the bundled calibrations (one image per
prompt, the base images of ``robust_methods.py``'s work folder); ``ramp`` is read from that script's sp
runs (the same settings). ``split``: as in ``robust_methods.py`` for the guards. Measured so far: square
only (``--concepts square``); hard raised it to 0.63 / 0.67 / 0.73 at CRA 0.925 x base (from 0.94), not
enough to leave the paper's adaptive strength, so ``ramp`` stays the default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, erasure_row, metric_head, result_rows, variant_cells, write_markdown
from mini_first_measurement import bench
from robust_methods import GUARD_SWEPT, met

RESULTS = ROOT / "benchmarks" / "results"
CONCEPTS = ("red", "striped", "circle", "blue", "checkered", "square", "ines-quarry", "alba-renko")
VARIANTS = {"ramp": {"strength_shape": "ramp"}, "hard": {"strength_shape": "hard"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-sp-shape")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_sp_shape.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["variant"]) for r in rows}
    for concept in args.concepts.split(","):
        base = args.base_work / f"base-mini-{concept}"
        for variant in args.variants.split(","):
            if (concept, variant) in done:
                continue
            start = time.time()
            read = variant == "ramp"
            if read:
                result = json.loads((args.base_work / f"sp-{concept}-s0" / "results.json").read_text())
            else:
                out = args.work / f"sp-{concept}-{variant}"
                options = VARIANTS[variant]
                result = bench("mini", concept, out, 1, guard="sp", guard_options=options, base_from=base)
            split = "swept" if concept in GUARD_SWEPT else "confirm"
            row = {"concept": concept, "variant": variant, "split": split, **erasure_row(result)}
            add_row(rows_file, rows, row | {"seconds": None if read else round(time.time() - start, 1)})
    write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "strength", *metric_head("sp"), "targets"]
    cells = variant_cells(rows, list(VARIANTS), met)
    intro = (
        "`python benchmarks/sweep_sp_shape.py`: sp on `mini` (1 image per prompt, bundled calibrations) with "
        "lam on the judge's ramp (`ramp`, read from `robust_methods.py`'s sp runs) or lam_max for every "
        "image the judge flags (`hard`)."
    )
    print(write_markdown(RESULTS / "sweep_sp_shape.md", "SP-Guard strength shape", intro, head, cells))


if __name__ == "__main__":
    main()
