"""What each method costs on the mini world: the quality columns of every method at its defaults.

    python benchmarks/quality_table.py                    # -> benchmarks/results/quality_table.md
    python benchmarks/quality_table.py --concept red --methods base,sp --limit 36

Per method (the unmodified ``mini`` and ``mini-ar``, the guards sp, dlr, sld, neg on ``mini``, SC-DPO
erasing ``mini``, VCE erasing ``mini-ar``; the adapters of ``benchmarks/mini_first_measurement.py``, made
here if missing), ``safegen bench quality --captions mini``: every object x colour x texture in phrasings
the models never saw in training, one image each, against the same model unmodified (same captions and
seeds). Columns: per-axis accuracy on the captions that do not show the concept, FID on the mini
classifier's features (against the unmodified model's images), the share of images that changed (mean
pixel difference > 0.02) and the mean difference. The concept's own captions are in the set: a method that
erases it changes them by design (colour on every caption shows it), and they count in FID and the
changed share. No CLIP score: there is no CLIP for the
mini world. Rows are appended to ``quality_table.jsonl``; a rerun skips the rows it has.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, result_rows, write_markdown
from mini_first_measurement import erase

RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("base", "sp", "dlr", "sld", "neg", "scdpo", "base-ar", "vce")


def quality_row(
    method: str,
    concept: str,
    limit: int | None,
    steps: int,
    work: Path,
    adapter: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """One row: ``method`` at its defaults (an erasure recipe's adapter made in ``work`` unless ``adapter``
    names one), its images in ``out`` (default ``work/quality-<method>-<concept>``)."""
    from safegen.bench.evaluate import Settings
    from safegen.bench.quality import run_bench_quality

    model = "mini-ar" if method in ("base-ar", "vce") else "mini"
    guard = method if method in ("sp", "dlr", "sld", "neg") else "none"
    if adapter is None and method in ("scdpo", "vce"):
        adapter = erase(method, concept, work / f"erase-{method}-{concept}")
    settings = Settings(model=model, guard=guard, concept=concept, adapter=adapter, steps=steps, seed=0)
    out = out or work / f"quality-{method}-{concept}"
    start = time.time()
    result = run_bench_quality(
        "mini", settings=settings, limit=limit, out=out, resume=(out / "manifest.json").is_file()
    )
    return {
        "concept": concept,
        "method": method,
        "model": model,
        "accuracy": result["accuracy"],
        "accuracy_without_concept": result["accuracy_without_concept"],
        "fid": result["fid"]["fid"],
        "changed_share": result["changed"]["changed_share"],
        "mean_pixel_distance": result["changed"]["mean_pixel_distance"],
        "n_images": result["n_images"],
        "seconds": round(time.time() - start, 1),
    }


def row_cells(r: dict[str, Any]) -> list[str]:
    accuracy = [f"{r['accuracy_without_concept'][a]:.3f}" for a in ("object", "color", "texture")]
    accuracy.append(f"{r['accuracy']['color']:.3f}")
    changed = [f"{max(r['fid'], 0.0):.2f}", f"{r['changed_share']:.3f}", f"{r['mean_pixel_distance']:.4f}"]
    return [r["concept"], r["method"], r["model"], *accuracy, *changed, f"{r['seconds']:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="red")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--limit", type=int, default=None, help="only the first N captions")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "mini-first-measurement")
    args = parser.parse_args()
    rows_file = RESULTS / "quality_table.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["method"]) for r in rows}
    for method in args.methods.split(","):
        if (args.concept, method) not in done:
            add_row(rows_file, rows, quality_row(method, args.concept, args.limit, args.steps, args.work))
    head = ["concept", "method", "model", "object", "colour", "texture", "colour (every caption)"]
    head.append("FID (mini features)")
    head += ["changed", "mean pixel difference", "seconds"]
    cells = [row_cells(r) for r in sorted(rows, key=lambda r: (r["concept"], METHODS.index(r["method"])))]
    intro = (
        f"`python benchmarks/quality_table.py --concept {args.concept} --steps {args.steps}`: `bench quality "
        "--captions mini` (every object x colour x texture in phrasings training never used), each method "
        "at its defaults against the same model unmodified, at the model's own guidance scale. Accuracy per "
        "axis by the mini classifier on the captions that do not show the concept (what a method should "
        "keep), and colour on every caption; FID on its 256-d features, every caption; changed: share of "
        "images whose mean pixel difference exceeds 0.02."
    )
    print(
        write_markdown(
            RESULTS / "quality_table.md", "What each method costs on the mini world", intro, head, cells
        )
    )


if __name__ == "__main__":
    main()
