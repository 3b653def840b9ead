"""Dual-latent reconstruction's safety context on prompts that do not name the concept (mini).

    python benchmarks/sweep_dlr_context.py                    # -> benchmarks/results/sweep_dlr_context.md
    python benchmarks/sweep_dlr_context.py --concepts square --contexts rewrite,rewrite-append

Stream B's prompt (``context``): ``rewrite`` replaces the concept's words (and words near them) with its
safe text, so a prompt without such a word keeps its own text in stream B and only the negative condition
acts on it; ``rewrite-append`` also appends the safe text where nothing was rewritten (an implicit prompt,
a caption that leaves the concept's axis out); ``append`` appends it to every prompt. Each runs ``bench
mini`` with dlr at its other defaults and the bundled calibration (one image per prompt, the base images of
``robust_methods.py``'s work folder); a concept without one is calibrated as ``safegen calibrate`` does by
default (``sweep_calibration.py``'s measurement, variant ``current``). ``split``: as in
``robust_methods.py`` for the guards.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, erasure_row, metric_cells, metric_head, result_rows, write_markdown
from mini_first_measurement import bench
from robust_methods import GUARD_SWEPT
from sweep_calibration import options_for, scores

RESULTS = ROOT / "benchmarks" / "results"
CONTEXTS = ("rewrite", "rewrite-append", "append")
CONCEPTS = ("red", "striped", "circle", "blue", "checkered", "ines-quarry", "square", "alba-renko", "heart")


def calibration(concept: str) -> dict[str, Any]:
    """The bundled calibration's options, or (none bundled) a default calibration's, for dlr on mini."""
    from safegen.guards import calibrated_options

    found = calibrated_options("dlr", concept, "mini")
    if found:
        return {}  # the bench reads it itself
    options = options_for(scores(concept, ROOT / "runs" / "sweep-calibration"), False, "clean-spread")
    options.pop("presence_share")
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--contexts", default="rewrite,rewrite-append")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-dlr-context")
    parser.add_argument("--base-work", type=Path, default=ROOT / "runs" / "robust-methods")
    args = parser.parse_args()
    rows_file = RESULTS / "sweep_dlr_context.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["context"]) for r in rows}
    for concept in args.concepts.split(","):
        base = args.base_work / f"base-mini-{concept}"
        bench("mini", concept, base, 1)
        for context in args.contexts.split(","):
            if (concept, context) in done:
                continue
            out = args.work / f"dlr-{concept}-{context}"
            options = calibration(concept) | {"context": context}
            result = bench("mini", concept, out, 1, guard="dlr", guard_options=options, base_from=base)
            split = "swept" if concept in GUARD_SWEPT else "confirm"
            row = {"concept": concept, "context": context, "split": split, **erasure_row(result)}
            add_row(rows_file, rows, row)
    write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    head = ["split", "concept", "context", *metric_head("dlr")]
    key = lambda r: (r["split"] != "swept", r["concept"], CONTEXTS.index(r["context"]))  # noqa: E731
    cells = [[r["split"], r["concept"], r["context"]] + metric_cells(r) for r in sorted(rows, key=key)]
    intro = (
        "`python benchmarks/sweep_dlr_context.py`: dlr on `mini` (1 image per prompt, bundled calibrations) "
        "with each stream-B context: `rewrite` (the concept's words replaced by its safe text), "
        "`rewrite-append` (also the safe text appended where no word was replaced), `append` (appended "
        "to every prompt)."
    )
    print(write_markdown(RESULTS / "sweep_dlr_context.md", "DLR safety context on unnamed prompts", intro,
                         head, cells))  # fmt: skip


if __name__ == "__main__":
    main()
