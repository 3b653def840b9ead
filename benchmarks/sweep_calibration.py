"""Sweep the calibration's concept prompts and ramp floor for the noise judge with presence (sp, mini).

    python benchmarks/sweep_calibration.py                    # -> benchmarks/results/sweep_calibration.md
    python benchmarks/sweep_calibration.py --concepts square,triangle --variants current,world-median

``safegen calibrate`` turns the judge's scores into thresholds: tau at a clean quantile, h_sat at the
concept prompts' 0.10 quantile but at least a ramp's width above tau (``ramp_floor``). Two choices are
swept, each a named option of :func:`safegen.calibrate.calibrate_guard`:

- ``world_captions``: the concept prompts are the registry's few examples, or the examples plus mini-world
  captions that show the concept in the clean captions' phrasing (no benchmark uses it);
- ``ramp_floor``: ``clean-spread`` (a tenth of the clean scores' range) or ``to-median`` (a tenth of the
  way from tau to the concept prompts' median).

The judge is measured once per concept on the examples and the captions (4 seeds, the guard's defaults);
each variant turns the same scores into thresholds (both judgements, the presence share included) and runs
``bench mini`` with sp at them (one image per prompt, the base images of ``robust_methods.py``'s work
folder). ``split``: ``swept`` concepts were compared to pick a variant, ``confirm`` ones (never looked at
before) were run with the picked variant and the current rule only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, erasure_row, metric_cells, metric_head, result_rows, write_markdown
from mini_first_measurement import bench

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {  # name -> (world_captions, ramp_floor)
    "current": (False, "clean-spread"),
    "median": (False, "to-median"),
    "world": (True, "clean-spread"),
    "world-median": (True, "to-median"),
}
SWEPT = ("red", "circle", "striped", "checkered", "square")  # square: its failure prompted the sweep
KEYS = (("harm", "tau", "h_sat"), ("harm_presence", "presence_tau", "presence_h_sat"))


def scores(concept: str, work: Path) -> dict[str, Any]:
    """The judge's scores on the concept's examples, its world captions and the clean captions."""
    from safegen.calibrate import calibrate_guard, default_prompts
    from safegen.concepts import get_concept

    path = work / f"scores-{concept}.json"
    if not path.is_file():
        c = get_concept(concept)
        prompts = default_prompts(c, world_captions=True)[0]
        result = calibrate_guard("sp", c, "mini", prompts=prompts, device="cpu")
        kept = {k: result[k]["scores"] for k, _, _ in KEYS}
        kept |= {"n_examples": len(c.examples) * result["seeds"], "options": result["options"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept))
    return json.loads(path.read_text())


def options_for(measured: dict[str, Any], world: bool, floor: str, target_fpr: float = 0.05) -> dict:
    """The guard options a calibration with this variant writes (safegen.calibrate's rule)."""
    from safegen.calibrate import presence_share, thresholds

    n = None if world else measured["n_examples"]
    on = {k: measured[k]["harmful"][:n] for k, _, _ in KEYS}
    off = {k: measured[k]["clean"] for k, _, _ in KEYS}
    share = presence_share([on[k] + off[k] for k, _, _ in KEYS], len(on["harm"]), target_fpr)
    fpr = {"harm": (1 - share) * target_fpr, "harm_presence": share * target_fpr}
    options = {k: measured["options"][k] for k in ("judge_steps", "judge_start", "judge_direction")}
    options |= {"anchor_weight": measured["options"]["anchor_weight"], "presence": True}
    for key, tau_name, sat_name in KEYS:
        tau, h_sat = thresholds(on[key], off[key], fpr[key], 0.10, floor)
        options[tau_name], options[sat_name] = round(tau, 5), round(h_sat, 5)
    return options | {"presence_share": share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(SWEPT))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-calibration")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_calibration.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["variant"]) for r in rows}
    for concept in args.concepts.split(","):
        measured = scores(concept, args.work)
        base = args.base_work / f"base-mini-{concept}"
        bench("mini", concept, base, 1)
        for name in args.variants.split(","):
            if (concept, name) in done:
                continue
            options = options_for(measured, *VARIANTS[name])
            share = options.pop("presence_share")
            out = args.work / f"sp-{concept}-{name}"
            result = bench("mini", concept, out, 1, guard="sp", guard_options=options, base_from=base)
            add_row(rows_file, rows, {
                "concept": concept, "variant": name, "split": "swept" if concept in SWEPT else "confirm",
                "presence_share": share, **{k: options[k] for _, t, s in KEYS for k in (t, s)},
                **erasure_row(result),
            })  # fmt: skip
    write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "variant", "share", "tau / h_sat", "presence tau / h_sat", *metric_head("sp")]
    order = list(VARIANTS)
    cells = [
        [r["split"], r["concept"], r["variant"], f"{r['presence_share']:g}",
         f"{r['tau']:.3f} / {r['h_sat']:.3f}", f"{r['presence_tau']:.3f} / {r['presence_h_sat']:.3f}"]
        + metric_cells(r)
        for r in sorted(rows, key=lambda r: (r["split"] != "swept", r["concept"], order.index(r["variant"])))
    ]  # fmt: skip
    intro = (
        "`python benchmarks/sweep_calibration.py`: sp on `mini` (1 image per prompt) with thresholds from "
        "each calibration variant: `current` (the registry's examples, ramp floor a tenth of the clean "
        "range), `median` (floor a tenth of the way from tau to the concept prompts' median), `world` (the "
        "examples plus mini-world captions of the concept), `world-median` (both). `share`: the presence "
        "judge's share of the clean budget. `confirm`: a concept not looked at before, run with `current` "
        "and the picked variant only."
    )
    title = "Calibration sweep: concept prompts and ramp floor"
    print(write_markdown(RESULTS / "sweep_calibration.md", title, intro, head, cells))


if __name__ == "__main__":
    main()
