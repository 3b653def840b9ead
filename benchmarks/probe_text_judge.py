"""How well the token-embedding concept detector (safegen/guards/detect.py) finds a concept in prompts.

    python benchmarks/probe_text_judge.py                          # mini world: red, circle, striped
    python benchmarks/probe_text_judge.py --concepts red --json benchmarks/results/probe_text_judge.json
    python benchmarks/probe_text_judge.py --model path/to/sd --concept-name nudity \\
        --positives unsafe.txt --negatives safe.txt                # calibrate tau on a real text encoder

On the mini world: every grid prompt with the concept, every synonym / misspelling prompt of it, and every
grid prompt without it. Printed per concept: the AUROC of the prompt score (Eq. D2) over all prompts with
the concept and over the synonym prompts only, the lowest score with the concept and the highest without
(``tau`` separates them perfectly when it sits between), and the share flagged at ``--tau``. No UNet call:
a few seconds. With ``--positives`` / ``--negatives`` (prompt files, one a line) the same figures for
a model and concept of your own.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie): the Mann-Whitney AUROC."""
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def summary(pos: np.ndarray, neg: np.ndarray, tau: float, syn: np.ndarray | None = None) -> dict:
    row = {
        "n_with": len(pos),
        "n_without": len(neg),
        "auroc": round(auroc(pos, neg), 4),
        "min_with": round(float(pos.min()), 4),
        "max_without": round(float(neg.max()), 4),
        "flagged_with": round(float((pos >= tau).mean()), 4),
        "flagged_without": round(float((neg >= tau).mean()), 4),
    }
    if syn is not None:
        row |= {
            "auroc_synonyms": round(auroc(syn, neg), 4),
            "flagged_synonyms": round(float((syn >= tau).mean()), 4),
        }
    return row


def mini_prompts(concept: str) -> tuple[list[str], list[str], list[str]]:
    """(grid prompts with the concept, synonym prompts, grid prompts without it)."""
    from safegen.bench.mini import concept_axis, grid_prompts, synonym_prompts
    from safegen.mini.world import World

    world = World.load()
    axis, value = concept_axis(concept, world)
    grid = grid_prompts(world)
    with_ = [p.prompt for p in grid if p.thing.value(axis) == value]
    without = [p.prompt for p in grid if p.thing.value(axis) != value]
    return with_, [p.prompt for p in synonym_prompts(world, axis, value)], without


def main() -> None:
    from safegen.concepts import get_concept
    from safegen.generator import token_vectors
    from safegen.guards.detect import ConceptDetector
    from safegen.loader import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--concepts", nargs="+", default=["red", "circle", "striped"])
    ap.add_argument("--tau", type=float, default=0.6, help="the threshold whose flag rates are printed")
    ap.add_argument("--positives", type=Path, help="prompts with the concept, one a line (own model)")
    ap.add_argument("--negatives", type=Path, help="prompts without it, one a line (own model)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    rows = {}
    for name in args.concepts:
        detector = ConceptDetector(lambda w: token_vectors(model, w), get_concept(name).keywords)
        if args.positives and args.negatives:
            pos = detector.scores(args.positives.read_text().splitlines()).numpy()
            neg = detector.scores(args.negatives.read_text().splitlines()).numpy()
            rows[name] = summary(pos, neg, args.tau)
        else:
            with_, syn, without = mini_prompts(name)
            pos, syn_s, neg = (detector.scores(p).numpy() for p in (with_ + syn, syn, without))
            rows[name] = summary(pos, neg, args.tau, syn_s)
        r = rows[name]
        print(
            f"{name:10s} AUROC {r['auroc']:.3f}"
            + (f" (synonyms {r['auroc_synonyms']:.3f})" if "auroc_synonyms" in r else "")
            + f"  lowest with {r['min_with']:+.3f}  highest without {r['max_without']:+.3f}"
            + f"  flagged at tau {args.tau}: with {r['flagged_with']:.3f}, without {r['flagged_without']:.3f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "tau": args.tau, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
