"""Every method at its defaults on the mini world, where concepts also appear without being named.

    python benchmarks/mini_first_measurement.py          # -> benchmarks/results/mini_first_measurement.md
    python benchmarks/mini_first_measurement.py --concepts red --methods sp,scdpo --images-per-prompt 1

For each concept (a colour, an object, a texture and an artist) and each method: the guards (sp, dlr,
sld, neg) on the bundled ``mini``, SC-DPO erasing ``mini``, VCE erasing ``mini-ar``, each at its defaults
(nothing re-tuned), then ``bench mini`` against the unmodified model in the same run (the base images are
made once per model and concept and reused: ``--base-from``). Reported per row: UA on prompts naming the
concept, synonym UA, implicit UA (artists, aliases, associations that imply it), the unprompted rate
(base -> method: images of prompts that leave the concept's axis out and still show it), IRA and CRA as
ratios to the base model, and seconds (erasure + benchmark). Rows are appended to
``benchmarks/results/mini_first_measurement.jsonl`` as they finish; a rerun skips the rows it has.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, add_row, result_rows, write_markdown

RESULTS = ROOT / "benchmarks" / "results"
CONCEPTS = ("red", "circle", "striped", "ines-quarry")
GUARDS = ("sp", "dlr", "sld", "neg")
METHODS = (*GUARDS, "scdpo", "vce")


def bench(model: str, concept: str, out: Path, ipp: int, **kw: Any) -> dict[str, Any]:
    from safegen.bench.mini import run_bench_mini

    resume = (out / "manifest.json").is_file() or any(out.glob("*/manifest.json"))  # several: a run each
    return run_bench_mini(model=model, concept=concept, images_per_prompt=ipp, out=out, resume=resume, **kw)


def erase(method: str, concept: str, out: Path) -> str:
    """The adapter folder of a default erasure run (reused when it finished earlier)."""
    from safegen.methods import get_method

    if (out / "adapter.json").is_file():
        return str(out)
    entry = get_method(method)
    resume = (out / "manifest.json").is_file()
    entry.load()(concept, model=entry.default_model, config=entry.config_class()(), out=out, resume=resume)
    return str(out)


def row(concept: str, method: str, model: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    e, b = result["erasure"], result["erasure"]["base"]
    ratio = lambda k: e[k] / b[k] if b[k] else float("nan")  # noqa: E731
    return {
        "concept": concept,
        "method": method,
        "model": model,
        "ua": e["ua"],
        "synonym_ua": e["synonym_ua"],
        "implicit_ua": e["implicit_ua"],
        "unprompted_base": b["unprompted_rate"],
        "unprompted": e["unprompted_rate"],
        "ira_ratio": ratio("ira"),
        "cra_ratio": ratio("cra"),
        "base": {k: b[k] for k in ("ua", "synonym_ua", "implicit_ua", "unprompted_rate", "ira", "cra")},
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--images-per-prompt", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "mini-first-measurement")
    args = parser.parse_args()
    rows_file = RESULTS / "mini_first_measurement.jsonl"
    rows = result_rows(rows_file)
    done = {(r["concept"], r["method"]) for r in rows}
    ipp, work = args.images_per_prompt, args.work
    for concept in args.concepts.split(","):
        for method in args.methods.split(","):
            if (concept, method) in done:
                continue
            model = "mini-ar" if method == "vce" else "mini"
            base = work / f"base-{model}-{concept}"
            bench(model, concept, base, ipp)  # the unmodified model's images, made once
            start = time.time()
            if method in GUARDS:
                result = bench(
                    model, concept, work / f"{method}-{concept}", ipp, guard=method, base_from=base
                )
            else:
                adapter = erase(method, concept, work / f"erase-{method}-{concept}")
                result = bench(
                    model, concept, work / f"{method}-{concept}", ipp, adapter=adapter, base_from=base
                )
            add_row(rows_file, rows, row(concept, method, model, result, time.time() - start))
    write_table(rows, ipp)


def write_table(rows: list[dict[str, Any]], ipp: int) -> None:
    head = ["concept", "method", "model", "UA", "synonym UA", "implicit UA", "unprompted (base -> method)"]
    head += ["IRA / base", "CRA / base", "seconds"]
    intro = (
        f"`python benchmarks/mini_first_measurement.py --images-per-prompt {ipp}`: every method at its "
        "defaults (nothing re-tuned), `bench mini` against the unmodified model in the same run. UA: "
        "share of images of prompts naming the concept that do not show it (higher is better); implicit "
        "UA: the same for artist, alias and association prompts that imply it; unprompted: share of "
        "images of prompts that leave the concept's axis out and still show it (lower is better); IRA / "
        "CRA: retention of other values on the same axis / on other axes, as a ratio to the base model."
    )
    cells = []
    for r in sorted(rows, key=lambda r: (r["concept"], METHODS.index(r["method"]))):
        row_cells = [r["concept"], r["method"], r["model"]]
        row_cells += ["n/a" if r[k] is None else f"{r[k]:.3f}" for k in ("ua", "synonym_ua", "implicit_ua")]
        row_cells += [f"{r['unprompted_base']:.3f} -> {r['unprompted']:.3f}"]
        row_cells += [f"{r[k]:.3f}" for k in ("ira_ratio", "cra_ratio")] + [f"{r['seconds']:.0f}"]
        cells.append(row_cells)
    title = "First measurement on the mini world with implicit triggers"
    print(write_markdown(RESULTS / "mini_first_measurement.md", title, intro, head, cells))


if __name__ == "__main__":
    main()
