"""Calibrate the noise judge of sp / dlr for the bundled mini model's concepts (the files it ships).

    python benchmarks/calibrate_bundled.py                       # -> safegen/assets/mini-sd/calibration/
    python benchmarks/calibrate_bundled.py --concepts red,blue --seeds 4

For each concept: ``safegen calibrate --guard sp`` on ``mini`` with its defaults (the registry's example
prompts, mini captions without the concept, the judge's default K and statistic), written as
``safegen/assets/mini-sd/calibration/<concept>.yaml``; sp and dlr read it when they run on ``mini``
(:func:`safegen.guards.calibrated_options`). A summary table goes to
``benchmarks/results/calibration_mini.md``. An existing file is replaced only with ``--force`` (its
row is read back from the file's comments).
"""

from __future__ import annotations

import argparse

from helpers import ROOT, write_markdown

FOLDER = ROOT / "safegen" / "assets" / "mini-sd" / "calibration"
CONCEPTS = ("red", "striped", "circle", "ines-quarry", "blue", "square", "checkered", "alba-renko")
CONCEPTS += ("triangle", "heart")  # two more objects


def recorded(text: str, options: dict) -> dict:
    """A kept file's measurement, read back from the comments :func:`write_guard_config` wrote."""
    import re

    result: dict = {"options": options}
    for key in ("harm", "harm_presence"):
        found = re.search(rf"^# {key}: AUROC ([0-9.]+)", text, re.M)
        if found:
            result[key] = {"auroc": float(found.group(1))}
    share = re.search(r"\(presence share ([0-9.]+)\)", text)
    if share:
        result["presence_share"] = float(share.group(1))
    either = re.search(r"^# either judge: guided concept ([0-9.]+), clean ([0-9.]+)", text, re.M)
    if either:
        result["guided_share"] = {"harmful": float(either.group(1)), "clean": float(either.group(2))}
    return result


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
            result = recorded(path.read_text(), yaml.safe_load(path.read_text()))
        else:
            result = calibrate_guard("sp", get_concept(name), "mini", seeds=args.seeds, device="cpu")
            path.unlink(missing_ok=True)
            write_guard_config(result, path)
        opts, harm, seen = result["options"], result.get("harm"), result.get("harm_presence")
        auroc = f"{harm['auroc']:.3f}" if harm else "(kept)"
        p_auroc = f"{seen['auroc']:.3f}" if seen else "(kept)" if opts.get("presence") else "off"
        either = result.get("guided_share")
        cells.append([name, opts.get("judge_direction", "unsafe"), auroc, f"{opts['tau']:.4f}",
                      f"{opts['h_sat']:.4f}", p_auroc, str(opts.get("presence_tau", "-")),
                      str(opts.get("presence_h_sat", "-")),
                      str(result.get("presence_share", "-")),
                      f"{either['harmful']:.2f} / {either['clean']:.2f}" if either else "-",
                      str(opts["judge_steps"])])  # fmt: skip
    head = ["concept", "statistic", "AUROC (examples vs clean)", "tau", "h_sat", "presence AUROC"]
    head += ["presence_tau", "presence_h_sat", "presence share", "guided concept / clean (either)", "K"]
    intro = (
        "`python benchmarks/calibrate_bundled.py`: the noise judge (Eq. b) and the presence judge (Eq. b4) "
        "measured on the bundled `mini` with `safegen calibrate --guard sp` defaults (the two judges' taus "
        "share the clean budget, `presence share` to presence: `safegen.calibrate.presence_share`); the "
        "files in safegen/assets/mini-sd/calibration/."
    )
    print(write_markdown(ROOT / "benchmarks" / "results" / "calibration_mini.md", "Bundled calibrations",
                         intro, head, cells))  # fmt: skip


if __name__ == "__main__":
    main()
