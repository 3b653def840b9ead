"""When the guards' noise judge reads the prompt: judged steps S..K-1, sp and dlr on mini.

    python benchmarks/sweep_judge_steps.py                  # -> benchmarks/results/sweep_judge_steps.md
    python benchmarks/sweep_judge_steps.py --concepts square --steps 4-2 --guards sp

sp guides from step K (the judgement) on, so an object whose shape the model lays out before K keeps it:
most of square's misses at the defaults (K = 6, S = 4 of 20 steps) are drawn square at full strength.
Judging earlier steps lets guidance start earlier, on noisier judgements (the first steps' cosine depends on
the noise as much as on the prompt, ``judge_study.md``), at the same cost (two judged steps). Each variant
``K-S`` is calibrated as the bundled files were (:func:`safegen.calibrate.calibrate_guard`, sp, 4 seeds;
written under the work folder, not shipped), then ``bench mini`` runs sp and dlr with that calibration (one
image per prompt, the base images of ``robust_methods.py``'s work folder). ``6-4`` (the defaults) reads
``robust_methods.jsonl`` (the same settings). ``split``: as in ``robust_methods.py`` for the guards. The
``4-2`` rows: ``--concepts square,circle,triangle,heart,striped,red --steps 4-2``.

Measured (UA / synonym / implicit; sp, then dlr). ``5-3`` raises every confirm object: square 0.53 / 0.57 /
0.60 -> 0.90 / 0.90 / 0.93 and 0.90 / 0.90 / 0.97 -> 0.97 / 0.97 / 1.00 (every target met with dlr), triangle
0.77 / 0.77 / 0.73 -> 0.83 / 0.87 / 0.90 and 0.80 -> 0.93, heart 0.53 / 0.53 / 0.57 -> 0.70 / 0.67 / 0.67 and
0.70 / 0.70 / 0.27 -> 0.80 / 0.80 / 0.43 (unprompted 0.13 -> 0.03 with both). It costs the swept concepts:
blue 1.00 -> 0.77 (sp) and 0.83 (dlr) with unprompted 0.00 -> 0.10, circle 1.00 -> 0.93 (sp) and 0.97 (dlr),
striped with sp 0.97 / 0.92 / 0.89 -> 0.94 / 0.94 / 0.94 and unprompted 0.03 -> 0.06 (two targets lost), red's
unprompted 0.00 -> 0.03 (met), the artist ines-quarry 0.17 -> 0.08 (sp), and sp's CRA on objects (square 0.94
-> 0.92, triangle 0.96 -> 0.93); checkered gains (sp 0.97 / 0.94 / 0.94 -> 1.00 / 0.97 / 0.97, dlr 1.00 / 1.00
/ 1.00; unprompted 0.08 -> 0.06 with sp). ``4-2`` goes further on square and heart with sp (0.80, 0.90) and
loses more where the judge reads worse that early: circle 0.77 with sp (its examples' AUROC 0.996 -> 0.935),
red 0.93 with unprompted 0.10. A trade, not a gain: over the ten concepts ``6-4`` meets every target on six
rows of 20, ``5-3`` on four (it loses blue and striped with sp, gains square with dlr), and concepts the
defaults hold (blue, circle with sp) fall below the UA target. The defaults stay ``6-4``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from helpers import ROOT, erasure_row, metric_cells, metric_head, write_markdown
from mini_first_measurement import bench
from robust_methods import met
from sweep_judge_window import sweep_cells, whole_latent_row

RESULTS = ROOT / "benchmarks" / "results"
CONCEPTS = ("square", "circle", "triangle", "heart", "striped", "red", "checkered", "blue", "ines-quarry")
CONCEPTS += ("alba-renko",)
DEFAULT = "6-4"


def parse(variant: str) -> dict[str, int]:
    k, s = (int(x) for x in variant.split("-"))
    return {"judge_steps": k, "judge_start": s}


def calibration(concept: str, variant: str, work: Path) -> dict[str, Any]:
    """The judge's options for ``concept`` judged at ``variant``: calibrated once into the work folder."""
    import yaml

    from safegen.calibrate import calibrate_guard, write_guard_config
    from safegen.concepts import get_concept

    path = work / f"calibration-{concept}-k{variant}.yaml"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        options = parse(variant)
        found = calibrate_guard("sp", get_concept(concept), "mini", seeds=4, device="cpu", options=options)
        write_guard_config(found, path)
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "judge"}


def variant_row(guard: str, concept: str, variant: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """One row's metrics (None: the defaults without a robust_methods row to read)."""
    if variant == DEFAULT:
        return whole_latent_row(guard, concept)
    options = calibration(concept, variant, args.work)
    out, base = args.work / f"{guard}-{concept}-k{variant}", args.base_work / f"base-mini-{concept}"
    return erasure_row(bench("mini", concept, out, 1, guard=guard, guard_options=options, base_from=base))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--steps", default=f"{DEFAULT},5-3", help="variants K-S: judged steps S..K-1")
    parser.add_argument("--guards", default="sp,dlr")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-judge-steps")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    variants = [{"variant": v} for v in args.steps.split(",")]
    measure = lambda g, c, v: variant_row(g, c, v["variant"], args)  # noqa: E731
    rows_file = RESULTS / "sweep_judge_steps.jsonl"
    concepts, guards = args.concepts.split(","), args.guards.split(",")
    write_table(sweep_cells(rows_file, concepts, variants, guards, measure, {"variant": DEFAULT}))


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "guard", "K-S", *metric_head("guard"), "targets"]
    key = lambda r: (r["split"] != "swept", r["concept"], r["guard"], r["variant"] != DEFAULT)  # noqa: E731
    cells = [
        [r["split"], r["concept"], r["guard"], r["variant"], *metric_cells(r), "yes" if met(r) else "no"]
        for r in sorted(rows, key=key)
    ]
    intro = (
        "`python benchmarks/sweep_judge_steps.py`: sp and dlr on `mini` (1 image per prompt, 20 steps) with "
        "the noise judge reading steps S..K-1 (`K-S`; sp guides from step K on), each variant with its own "
        f"calibration; `{DEFAULT}`: the defaults (`robust_methods.md`'s rows). `targets`: every "
        "robust-methods target met on the row."
    )
    print(write_markdown(RESULTS / "sweep_judge_steps.md", "When the noise judge reads", intro, head, cells))


if __name__ == "__main__":
    main()
