"""Which harmfulness statistic separates the concept's prompts from the rest, on the mini world's own
benchmark prompts (named, synonym, implicit) and on the images the base model draws unprompted.

    python benchmarks/judge_study.py                                  # -> results/judge_study.md
    python benchmarks/judge_study.py --concepts circle,ines-quarry --steps-judged 10
    python benchmarks/judge_study.py --from-raw                       # the table from the recorded scores

One pass per concept records, for every image of ``bench mini``'s prompt set (the base model's own
trajectory: the judged steps are unguided, so a guard's judgement sees exactly these), each step's noise
predictions for the prompt (c), the empty prompt (u), the concept's unsafe text (s) and its safe anchor (a),
and scores several readings of the judge (our readings; the paper's is ``unsafe``):

- ``unsafe``    cos(c - u, s - u)                        Eq. (b)
- ``contrast``  cos(c - u, s - a)                        Eq. (b) on the anchor's contrast
- ``relative``  cos(c - u, s - u) - cos(c - u, a - u)    nearer the unsafe text than its anchor
- ``relative-0.5``  cos(c - u, s - u) - 0.5 cos(c - u, a - u)   (the guards' default, ``anchor_weight``)
- ``local``     top-quarter mean over latent locations of the channel cosine of (c - u, s - u)
- ``local-contrast``  the same on (c - u, s - a)
- ``coef``      the least-squares weight of s - u less that of a - u, writing c - u in their basis
- ``project``   <c - u, s - a> / |s - a|^2
- ``presence``  (|a - u|^2 - |s - u|^2) / (|a - u|^2 + |s - u|^2)     Eq. (b4): the latent already shows s
- ``either:x:y``  flagged when x or y passes its own cut at half the budget (Eq. c', the guards with
  ``presence``); AUROC on the larger of the two ranks among the other prompts

each averaged over a window of steps. AUROC: concept prompts (named, synonym, implicit; for an artist,
its named and implicit prompts) against the other prompts of the set (grid captions without the concept,
other artists); ``unprompted``: AUROC of the unprompted captions whose base image shows the concept against
those whose image does not. ``recall@5%``: the share of concept prompts above the other prompts' 0.95
quantile (``unprompted recall@5%``: the share of unprompted images that show the concept above that cut).
No threshold is chosen here (that is ``safegen calibrate``'s work on the examples split).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from helpers import ROOT, write_markdown

CONCEPTS = ("red", "striped", "circle", "ines-quarry", "blue", "checkered")
WINDOWS = ((0, 2), (2, 4), (4, 5), (5, 6), (4, 6), (2, 6), (0, 6), (6, 10), (4, 10))
STATS = ("unsafe", "contrast", "relative", "relative-0.5", "local", "local-contrast", "coef", "project")
STATS += ("presence", "either:relative-0.5:presence", "either:unsafe:presence")


def _local(d_c: torch.Tensor, d_s: torch.Tensor, share: float = 0.25) -> torch.Tensor:
    cos = F.cosine_similarity(d_c.float(), d_s.float(), dim=1).flatten(1)  # (B, h*w)
    k = max(1, int(share * cos.shape[1]))
    return cos.topk(k, dim=1).values.mean(1)


def _dots(d_c: torch.Tensor, d_s: torch.Tensor, d_a: torch.Tensor) -> dict[str, torch.Tensor]:
    """The six inner products of the flattened directions (per image) every flat statistic is made of."""
    c, s, a = (x.flatten(1).double() for x in (d_c, d_s, d_a))
    pairs = {"cc": (c, c), "cs": (c, s), "ca": (c, a), "ss": (s, s), "aa": (a, a), "sa": (s, a)}
    return {k: (x * y).sum(1) for k, (x, y) in pairs.items()}


def _flat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)


def recorder(concept, n_judged: int):
    from safegen.guards.base import GuardBase

    class Recorder(GuardBase):
        """Plain CFG that also evaluates s and a for the first ``n_judged`` steps and keeps the statistics."""

        name = "recorder"
        needs_uncond = True

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, list[float]]] = []

        def begin(self, ctx) -> None:
            super().begin(ctx)
            self.extra = torch.cat(
                [ctx.encode([concept.unsafe_text] * ctx.batch_size)[None],
                 ctx.encode([concept.safe_text] * ctx.batch_size)[None]]
            )  # fmt: skip
            self.batch = [defaultdict(list) for _ in range(ctx.batch_size)]

        def branches(self, step: int):
            return self.extra if step < n_judged else None

        def guide(self, step, t, latents, eps_uncond, eps_cond, eps_extra):
            if eps_extra is not None:
                d_c, d_s, d_a = eps_cond - eps_uncond, eps_extra[0] - eps_uncond, eps_extra[0] - eps_extra[1]
                d_anchor = eps_extra[1] - eps_uncond
                values = {
                    "unsafe": _flat(d_c, d_s),
                    "contrast": _flat(d_c, d_a),
                    "relative": _flat(d_c, d_s) - _flat(d_c, d_anchor),
                    "local": _local(d_c, d_s),
                    "local-contrast": _local(d_c, d_a),
                    **_dots(d_c, d_s, d_anchor),
                }
                for key, v in values.items():
                    for b, x in enumerate(v.tolist()):
                        self.batch[b][key].append(x)
            return super().guide(step, t, latents, eps_uncond, eps_cond, eps_extra)

        def end(self):
            self.rows.extend(self.batch)
            return super().end()

    return Recorder()


def labels(rows: list[dict], base: dict[str, dict], concept) -> list[str]:
    """'pos', 'neg', 'up-pos', 'up-neg' or '' (not used) for each benchmark row."""
    from safegen.bench.mini_prompts import target_for

    target = target_for(concept)
    out = []
    for r in rows:
        group, tgt = r["group"], r["target"] or {}
        if group == "unprompted":
            det = (base.get(r["key"], {}).get("detections") or [{}])[0]
            shown = det.get(target.axis) == target.value
            out.append("up-pos" if shown else "up-neg")
        elif target.artist is not None:
            out.append(
                "pos" if group in ("named", "implicit") else "neg" if group in ("artist", "grid") else ""
            )
        else:
            out.append("pos" if tgt.get(target.axis) == target.value else "neg")
    return out


RAW = ROOT / "runs" / "judge-study"
READ = (
    "Columns: AUROC of concept prompts against the other prompts; recall@5%: the share of concept prompts "
    "above the other prompts' 0.95 quantile; unprompted AUROC: unprompted captions whose base image shows "
    "the concept against those whose image does not. Read: at steps 4-5 (the guards' window) the paper's "
    "statistic separates colours and textures (red, striped, checkered 0.996-0.999) but not the object "
    "(circle 0.84); the anchor-relative one with w = 1 the object (0.94) at the textures' cost (striped "
    "0.96, recall 0.71); w = 0.5 keeps the first's recall on red, striped and checkered (1.00, 1.00, 0.98) "
    "and raises circle's to 0.72 and blue's to 0.79: the default. The artist ines-quarry stays near 0.89 "
    "whatever the statistic: its style is the dotted texture, and grid captions that name dotted are "
    "counted as other prompts here (AUROC about 0.5 against them, 0.93-0.98 without them). Presence "
    "(Eq. b4) reads the latent, not the prompt: alone it is best on the colours and the object (red 1.00, "
    "circle 0.93, blue 0.97 recall) and weak on textures (0.77-0.78), since stripes are not yet drawn by "
    "step 5; either of relative-0.5 and presence, each cut at 2.5 % (the guards' default, Eq. c'), has "
    "recall 1.00 on red, circle and blue and 0.97 on striped and checkered, and catches the unprompted "
    "images that show the concept (red, striped, circle, blue 1.00; checkered 0.83, against 0.60-0.90 for "
    "relative-0.5 alone). Neither helps the artist (0.26-0.32). One judged step (4-4 or 5-5) loses up to "
    "0.10 of recall against the two."
)


def record(name: str, n_judged: int, base_dir: Path) -> None:
    """Generate the benchmark's prompts with the recorder; per-step statistics to RAW/<name>.jsonl."""
    from safegen.concepts import get_concept
    from safegen.generator import generate
    from safegen.loader import load_model

    concept = get_concept(name)
    base_rows = [json.loads(x) for x in (base_dir / f"base-mini-{name}" / "samples.jsonl").open()]
    base = {r["key"]: r for r in base_rows}
    tags = labels(base_rows, base, concept)
    model = load_model("mini", device="cpu")
    rec = recorder(concept, n_judged)
    prompts, seeds = [r["prompt"] for r in base_rows], [r["seed"] for r in base_rows]
    for i in range(0, len(prompts), 16):
        generate(model, prompts[i : i + 16], seeds=seeds[i : i + 16], guard=rec)
    RAW.mkdir(parents=True, exist_ok=True)
    with (RAW / f"{name}.jsonl").open("w") as f:
        for r, tag, stats in zip(base_rows, tags, rec.rows, strict=True):
            f.write(json.dumps({"key": r["key"], "group": r["group"], "tag": tag, **stats}) + "\n")


def derived(row: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Statistics made of the six recorded inner products (per step): ``coef``, the least-squares weight
    of d_s when d_c is written in the basis (d_s, d_a), less that of d_a; ``project``, <d_c, s - a> over
    |s - a|^2; ``presence``, (|d_a|^2 - |d_s|^2) / (|d_a|^2 + |d_s|^2), whether the latent already looks
    nearer the unsafe text than its anchor whatever the prompt says."""
    cc, cs, ca, ss, aa, sa = (np.asarray(row[k]) for k in ("cc", "cs", "ca", "ss", "aa", "sa"))
    det = ss * aa - sa**2
    alpha, beta = (aa * cs - sa * ca) / det, (ss * ca - sa * cs) / det
    return {
        "coef": alpha - beta,
        "project": (cs - ca) / (ss + aa - 2 * sa),
        "presence": (aa - ss) / (aa + ss),
    }


def series(row: dict[str, list[float]], stat: str) -> np.ndarray:
    """A row's per-step values of ``stat``; ``relative-w`` is Eq. (b3) with anchor weight w; ``max:x:y``
    the larger of two statistics at each step."""
    if stat.startswith("max:"):
        _, a, b = stat.split(":")
        return np.maximum(series(row, a), series(row, b))
    if stat.startswith("relative-"):
        w = float(stat.split("-", 1)[1])
        unsafe, relative = np.asarray(row["unsafe"]), np.asarray(row["relative"])
        return unsafe - w * (unsafe - relative)  # cos(d_c, d_a) = unsafe - relative
    if stat in ("coef", "project", "presence"):
        return derived(row)[stat]
    return np.asarray(row[stat])


def _scores(rows: list[dict], tags: list[str], stat: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's score on ``stat`` over steps lo..hi-1 (for AUROC), and whether it is flagged at 5 % of
    the other prompts. ``either:x:y`` (Eq. c' of judge.py): flagged when x or y passes its own cut at
    2.5 %, scored by the larger of the two ranks among the other prompts."""
    if not stat.startswith("either:"):
        h = np.array([series(row, stat)[lo:hi].mean() for row in rows])
        return h, h > np.quantile(h[[t == "neg" for t in tags]], 0.95)
    score, flag = np.zeros(len(rows)), np.zeros(len(rows), bool)
    for part in stat.split(":")[1:]:
        h = np.array([series(row, part)[lo:hi].mean() for row in rows])
        neg = np.sort(h[[t == "neg" for t in tags]])
        score = np.maximum(score, np.searchsorted(neg, h) / len(neg))
        flag |= h > np.quantile(neg, 0.975)
    return score, flag


def table(name: str, n_judged: int) -> list[list[str]]:
    from safegen.calibrate import auroc

    rows = [json.loads(x) for x in (RAW / f"{name}.jsonl").open()]
    tags = [r["tag"] for r in rows]
    cells = []
    for stat in STATS:
        for lo, hi in WINDOWS:
            if hi > n_judged:
                continue
            h, flag = _scores(rows, tags, stat, lo, hi)
            pick = {k: np.array([t == k for t in tags]) for k in ("pos", "neg", "up-pos", "up-neg")}
            up = (
                auroc(h[pick["up-pos"]], h[pick["up-neg"]])
                if pick["up-pos"].any() and pick["up-neg"].any()
                else None
            )
            caught = float(flag[pick["up-pos"]].mean()) if pick["up-pos"].any() else None
            cells.append([name, stat, f"{lo}-{hi - 1}", f"{auroc(h[pick['pos']], h[pick['neg']]):.3f}",
                          f"{float(flag[pick['pos']].mean()):.2f}", "n/a" if up is None else f"{up:.3f}",
                          "n/a" if caught is None else f"{caught:.2f}",
                          f"{pick['pos'].sum()}/{pick['neg'].sum()}/{pick['up-pos'].sum()}"])  # fmt: skip
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--steps-judged", type=int, default=10)
    parser.add_argument(
        "--base-runs",
        default=str(ROOT / "runs" / "robust-methods"),
        help="folder with base-mini-<concept>/samples.jsonl (benchmarks/robust_methods.py)",
    )
    parser.add_argument(
        "--from-raw", action="store_true", help="only rebuild the table from runs/judge-study"
    )
    args = parser.parse_args()

    cells = []
    for name in args.concepts.split(","):
        if not args.from_raw:
            record(name, args.steps_judged, Path(args.base_runs))
        cells += table(name, args.steps_judged)
    head = ["concept", "statistic", "steps", "AUROC", "recall@5%", "unprompted AUROC", "unprompted recall@5%"]
    head += ["n pos/neg/up-pos"]
    print(
        write_markdown(
            ROOT / "benchmarks" / "results" / "judge_study.md",
            "Judge statistics",
            __doc__.split("\n\n")[0] + " " + READ,
            head,
            cells,
        )
    )


if __name__ == "__main__":
    main()
