"""Sweep the noise-judged guards' calibration rule and strength on the swept concepts (red, striped).

    python benchmarks/sweep_guards.py                       # -> benchmarks/results/sweep_guards.md
    python benchmarks/sweep_guards.py --guards sp --concepts red

The judge is calibrated once per concept (``safegen calibrate``'s measurement, kept in the work folder);
each variant turns the same scores into thresholds by its rule (``target_fpr``: share of clean prompts
guided; ``sat_quantile``: the concept prompts' quantile at full strength) and runs ``bench mini`` on
``mini`` with them (one image per prompt). Variants: the centre and one factor changed at a time. The
chosen rule becomes ``safegen calibrate``'s default and the bundled calibrations; the confirmation runs
on concepts not swept are in ``robust_methods.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, one_factor_plan, result_rows, write_markdown
from mini_first_measurement import bench

RESULTS = ROOT / "benchmarks" / "results"
CENTRE = {"target_fpr": 0.05, "sat_quantile": 0.25, "lam_max": 40.0, "context": "append"}
GRID = {"target_fpr": [0.10, 0.20], "sat_quantile": [0.10], "lam_max": [60.0], "context": ["rewrite"]}
GUARD_OPTIONS = {"sp": ("lam_max",), "dlr": ("context",)}  # the rule's factors apply to both
COMBINED = {  # the factors that helped, together
    "sp": {"combined": {"sat_quantile": 0.10, "lam_max": 60.0}},
    "dlr": {"combined": {"sat_quantile": 0.10, "context": "rewrite"}},
}


def scores(concept: str, work: Path) -> dict[str, list[float]]:
    """The judge's h on the concept's example prompts and on clean captions (measured once)."""
    from safegen.calibrate import calibrate_guard
    from safegen.concepts import get_concept

    path = work / f"calibration-{concept}.json"
    if not path.is_file():
        result = calibrate_guard("sp", get_concept(concept), "mini", seeds=2, device="cpu")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result["harm"]["scores"]))
    return json.loads(path.read_text())


def main() -> None:
    from safegen.calibrate import thresholds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guards", default="sp,dlr")
    parser.add_argument("--concepts", default="red,striped")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-guards")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_guards.jsonl"
    rows = result_rows(rows_file)
    done = {(r["guard"], r["concept"], r["variant"]) for r in rows}
    for concept in args.concepts.split(","):
        h = scores(concept, args.work)
        base = args.work / f"base-{concept}"
        bench("mini", concept, base, 1)
        for guard in args.guards.split(","):
            own = GUARD_OPTIONS[guard]
            grid = {k: v for k, v in GRID.items() if k in own or k in ("target_fpr", "sat_quantile")}
            for variant in one_factor_plan(CENTRE, grid, COMBINED[guard]):
                if (guard, concept, variant["name"]) in done:
                    continue
                cfg = variant["config"]
                tau, h_sat = thresholds(h["harmful"], h["clean"], cfg["target_fpr"], cfg["sat_quantile"])
                options: dict[str, Any] = {"tau": round(tau, 5), "h_sat": round(h_sat, 5)}
                options.update({k: cfg[k] for k in own})
                out = args.work / f"{guard}-{concept}-{variant['name']}"
                result = bench("mini", concept, out, 1, guard=guard, guard_options=options, base_from=base)
                e, b = result["erasure"], result["erasure"]["base"]
                add_row(rows_file, rows, {
                    "guard": guard, "concept": concept, "variant": variant["name"], **options,
                    **{k: e[k] for k in ("ua", "synonym_ua", "implicit_ua")},
                    "unprompted": e["unprompted_rate"], "unprompted_base": b["unprompted_rate"],
                    "ira_ratio": e["ira"] / b["ira"], "cra_ratio": e["cra"] / b["cra"],
                })  # fmt: skip
    write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["guard", "concept", "variant", "tau", "h_sat", "UA", "synonym UA", "implicit UA"]
    head += ["unprompted (base -> guard)", "IRA / base", "CRA / base"]
    cells = [
        [r["guard"], r["concept"], r["variant"], f"{r['tau']:.3f}", f"{r['h_sat']:.3f}"]
        + [f"{r[k]:.3f}" for k in ("ua", "synonym_ua", "implicit_ua")]
        + [
            f"{r['unprompted_base']:.3f} -> {r['unprompted']:.3f}",
            f"{r['ira_ratio']:.3f}",
            f"{r['cra_ratio']:.3f}",
        ]
        for r in sorted(rows, key=lambda r: (r["guard"], r["concept"]))
    ]
    intro = (
        "`python benchmarks/sweep_guards.py`: the calibration rule (target_fpr, sat_quantile), sp's "
        f"lam_max and dlr's context, one factor at a time around {CENTRE}, then the factors that helped "
        "together (`combined`), on the swept concepts (mini, 1 image per prompt)."
    )
    print(
        write_markdown(
            RESULTS / "sweep_guards.md", "Guard sweep: calibration rule and strength", intro, head, cells
        )
    )


if __name__ == "__main__":
    main()
