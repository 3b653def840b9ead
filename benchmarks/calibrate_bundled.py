"""Calibrate the noise judge of sp / dlr for the bundled mini model's concepts (the files it ships).

    python benchmarks/calibrate_bundled.py                       # -> safegen/assets/mini-sd/calibration/
    python benchmarks/calibrate_bundled.py --concepts red,blue --seeds 4

For each concept: ``safegen calibrate --guard sp`` on ``mini`` with its defaults (the registry's example
prompts, mini captions without the concept, the judge's default K and statistic), written as
``safegen/assets/mini-sd/calibration/<concept>.yaml``; sp and dlr read it when they run on ``mini``
(:func:`safegen.guards.calibrated_options`). A summary table goes to
``benchmarks/results/calibration_mini.md``. An existing file is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse

from helpers import ROOT, write_markdown

FOLDER = ROOT / "safegen" / "assets" / "mini-sd" / "calibration"
CONCEPTS = ("red", "striped", "circle", "ines-quarry", "blue", "square", "checkered", "alba-renko")


def main() -> None:
    import yaml

    from safegen.calibrate import calibrate_guard, write_guard_config
    from safegen.concepts import get_concept

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    FOLDER.mkdir(parents=True, exist_ok=True)
    cells = []
    for name in args.concepts.split(","):
        path = FOLDER / f"{name}.yaml"
        if path.exists() and not args.force:
            result = {"options": yaml.safe_load(path.read_text()), "harm": None}
        else:
            result = calibrate_guard("sp", get_concept(name), "mini", seeds=args.seeds, device="cpu")
            path.unlink(missing_ok=True)
            write_guard_config(result, path)
        opts, harm = result["options"], result.get("harm")
        auroc = f"{harm['auroc']:.3f}" if harm else "(kept)"
        cells.append([name, opts.get("judge_direction", "unsafe"), auroc, f"{opts['tau']:.4f}",
                      f"{opts['h_sat']:.4f}", str(opts["judge_steps"])])  # fmt: skip
    head = ["concept", "statistic", "AUROC (examples vs clean)", "tau", "h_sat", "K"]
    intro = (
        "`python benchmarks/calibrate_bundled.py`: the noise judge (Eq. b) measured on the bundled `mini` "
        "with `safegen calibrate --guard sp` defaults; the files in safegen/assets/mini-sd/calibration/."
    )
    print(write_markdown(ROOT / "benchmarks" / "results" / "calibration_mini.md", "Bundled calibrations",
                         intro, head, cells))  # fmt: skip


if __name__ == "__main__":
    main()
