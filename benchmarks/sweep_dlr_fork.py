"""Dual-latent reconstruction's fork under the gate: at the judgement (step K) or speculatively at tau_gc.

    python benchmarks/sweep_dlr_fork.py                          # -> benchmarks/results/sweep_dlr_fork.md
    python benchmarks/sweep_dlr_fork.py --concepts square --variants off,on,on+hard
    python benchmarks/sweep_dlr_fork.py --off-from runs/sweep-dlr-context   # `off` read from those runs

With ``gate=noise`` omega is known at step K (6 of 20), so stream B forked there; the paper forks at tau_gc
(one step of 20). By step K a prompt that implies a shape or a texture has laid it out, and stream B can no
longer redraw it. ``speculate`` (``on``) runs stream B from tau_gc while the gate judges and keeps it for
the images judged harmful. Each variant runs ``bench mini`` with dlr at its other defaults and the bundled
calibration (one image per prompt, the base images of ``robust_methods.py``'s work folder; a concept
without a bundled calibration is calibrated as in ``sweep_dlr_context.py``). ``split``: as in
``robust_methods.py`` for the guards. ``--off-from`` reads the ``off`` rows from the finished
``rewrite-append`` runs of ``sweep_dlr_context.py`` (the same settings, the code path without speculation)
instead of running them again. ``on+hard`` also gives every image the gate flags the full weight
(``gate_shape=hard``, Eq. G'), instead of a share on the judge's ramp: a partial blend of a shape or a
texture is often still the shape or the texture.
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
from sweep_dlr_context import CONCEPTS, calibration

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {
    "off": {"speculate": False},
    "on": {"speculate": True},
    "on+hard": {"speculate": True, "gate_shape": "hard"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-dlr-fork")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    parser.add_argument("--off-from", type=Path, help="sweep_dlr_context.py's work folder, for `off`")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_dlr_fork.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["variant"]) for r in rows}
    for concept in args.concepts.split(","):
        base = args.base_work / f"base-mini-{concept}"
        bench("mini", concept, base, 1)
        for variant in args.variants.split(","):
            if (concept, variant) in done:
                continue
            start = time.time()
            read = variant == "off" and args.off_from is not None
            if read:
                out = args.off_from / f"dlr-{concept}-rewrite-append"
                result = json.loads((out / "results.json").read_text())
            else:
                options = calibration(concept) | VARIANTS[variant]
                out = args.work / f"dlr-{concept}-{variant}"
                result = bench("mini", concept, out, 1, guard="dlr", guard_options=options, base_from=base)
            split = "swept" if concept in GUARD_SWEPT else "confirm"
            row = {"concept": concept, "variant": variant, "split": split, **erasure_row(result)}
            add_row(rows_file, rows, row | {"seconds": None if read else round(time.time() - start, 1)})
    write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "fork", *metric_head("dlr"), "targets"]
    cells = variant_cells(rows, list(VARIANTS), met)
    intro = (
        "`python benchmarks/sweep_dlr_fork.py`: dlr on `mini` (1 image per prompt, bundled calibrations, "
        "context rewrite-append) with stream B forked at the gate's judgement (step 6 of 20, `off`) or "
        "speculatively at tau_gc (step 1, kept for the images judged harmful, `on`). The `off` rows are "
        "read from `sweep_dlr_context.py`'s rewrite-append runs (`--off-from runs/sweep-dlr-context`: the "
        "same settings). `on+hard`: `on` with `gate_shape=hard` (omega = 1 for every image the gate "
        "flags at all)."
    )
    print(write_markdown(RESULTS / "sweep_dlr_fork.md", "DLR fork under the gate", intro, head, cells))


if __name__ == "__main__":
    main()
