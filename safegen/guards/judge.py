"""The noise judge SP-Guard and dual-latent reconstruction share: how harmful a prompt is, read from the
model's own noise predictions in the first K denoising steps (SP-Guard's Eq. b; our reading).

    d_c = eps_c - eps_u,  d_s = eps_s - eps_u,  d_a = eps_a - eps_u     (a)  directions (a: safe anchor)
    h   = mean_{S <= t < K} g_t                                          (b)  harmfulness (S = judge_start)
    g_t = cos(flat(d_c), flat(d_s))                  statistic=unsafe    (b1) the paper's
    g_t = cos(flat(d_c), flat(eps_s - eps_a))        statistic=contrast  (b2) what s adds over its anchor
    g_t = cos(flat(d_c), flat(d_s)) - w cos(flat(d_c), flat(d_a))
                                                     statistic=relative  (b3) nearer s than its anchor
    r   = clamp((h - tau) / (h_sat - tau), 0, 1)                         (c)  the share of full strength

It reads no word of the prompt: a prompt that reaches the concept through an artist, a description or a
learned token is judged by what the model is about to draw. ``tau`` and ``h_sat`` are on the cosine scale
of the model at hand, which differs between models and concepts: measure them with ``safegen calibrate``
(the bundled models ship theirs, :func:`safegen.guards.calibrated_options`).

Which statistic: (b1) is the paper's; (b2) and (b3) are our readings that use the concept's safe anchor
(one more branch while judging). ``benchmarks/judge_study.py`` measures each on the mini world's
benchmark prompts (results/judge_study.md): (b1) separates colours and textures best, (b3) with w = 1
objects; (b3) with w = 0.5 (``anchor_weight``) kept (b1)'s recall on colours and textures and raised it on
the object, so it is the guards' default. A concept without a safe anchor is judged with (b1); each image's
report names the statistic used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine(d_c: torch.Tensor, d_s: torch.Tensor) -> torch.Tensor:
    """Eq. (b): per-image cosine of the flattened directions, (B, C, h, w) x2 -> (B,)."""
    return F.cosine_similarity(d_c.flatten(1).float(), d_s.flatten(1).float(), dim=1)


STATISTICS = ("unsafe", "contrast", "relative")


def statistic(
    name: str,
    d_c: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_extra: torch.Tensor,
    anchor_weight: float = 1.0,
) -> torch.Tensor:
    """One step's g_t, (B,): Eq. (b1)-(b3) from ``eps_extra`` = [eps_s] or [eps_s, eps_a] (k, B, C, h, w);
    ``anchor_weight`` is (b3)'s w."""
    d_s = eps_extra[0] - eps_uncond
    if name == "unsafe":
        return cosine(d_c, d_s)
    if eps_extra.shape[0] < 2:
        raise ValueError(f"statistic {name!r} needs the safe anchor's prediction (eps_extra[1])")
    if name == "contrast":
        return cosine(d_c, eps_extra[0] - eps_extra[1])
    return cosine(d_c, d_s) - anchor_weight * cosine(d_c, eps_extra[1] - eps_uncond)


def needs_anchor(name: str) -> bool:
    return name != "unsafe"


def ramp(h: torch.Tensor, tau: float, h_sat: float) -> torch.Tensor:
    """Eq. (c): clamp((h - tau) / (h_sat - tau), 0, 1); exactly 0 for h <= tau."""
    return ((h - tau) / (h_sat - tau)).clamp(0.0, 1.0)


class NoiseJudge:
    """Accumulates Eq. (b) over steps ``start .. steps - 1`` of a batch of ``batch_size`` images (the
    first steps' cosine depends on the noise as much as on the prompt; each judged step costs a branch)."""

    def __init__(
        self,
        steps: int,
        batch_size: int,
        start: int = 0,
        stat: str = "unsafe",
        anchor_weight: float = 1.0,
    ) -> None:
        if stat not in STATISTICS:
            raise ValueError(f"unknown judge statistic {stat!r} (one of {', '.join(STATISTICS)})")
        self.steps, self.start, self.stat = steps, min(start, max(steps - 1, 0)), stat
        self.anchor_weight = anchor_weight
        self.total = torch.zeros(batch_size)
        self.per_step: list[list[float]] = [[] for _ in range(batch_size)]
        self.h = torch.zeros(batch_size)

    def judging(self, step: int) -> bool:
        return self.start <= step < self.steps

    def branch_texts(self, concept) -> list[str]:
        """The texts whose predictions :meth:`update` reads: the unsafe text, and the anchor if needed (a
        concept without a safe anchor is judged with Eq. b1: ``stat`` becomes ``unsafe``)."""
        if needs_anchor(self.stat) and not concept.safe_text:
            self.stat = "unsafe"
        if not needs_anchor(self.stat):
            return [concept.unsafe_text]
        return [concept.unsafe_text, concept.safe_text]

    def update(self, step: int, d_c: torch.Tensor, eps_uncond: torch.Tensor, eps_extra: torch.Tensor) -> bool:
        """Add one step's g_t; True when this was the last judged step (``h`` is then set)."""
        cos = statistic(self.stat, d_c, eps_uncond, eps_extra, self.anchor_weight).cpu()
        self.total += cos
        for b, value in enumerate(cos.tolist()):
            self.per_step[b].append(round(value, 5))
        if step == self.steps - 1:
            self.h = self.total / (self.steps - self.start)
            return True
        return False
