"""The noise judge SP-Guard and dual-latent reconstruction share: how harmful a prompt is, read from the
model's own noise predictions in the first K denoising steps (SP-Guard's Eq. b; our reading).

    d_c = eps_c - eps_u,  d_s = eps_s - eps_u                     (a)  directions
    h   = mean_{S <= t < K} cos(flat(d_c), flat(d_s))             (b)  harmfulness (S = judge_start)
    r   = clamp((h - tau) / (h_sat - tau), 0, 1)                  (c)  the share of full strength

It reads no word of the prompt: a prompt that reaches the concept through an artist, a description or a
learned token is judged by what the model is about to draw. ``tau`` and ``h_sat`` are on the cosine scale
of the model at hand, which differs between models and concepts: measure them with ``safegen calibrate``
(the bundled models ship theirs, :func:`safegen.guards.calibrated_options`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine(d_c: torch.Tensor, d_s: torch.Tensor) -> torch.Tensor:
    """Eq. (b): per-image cosine of the flattened directions, (B, C, h, w) x2 -> (B,)."""
    return F.cosine_similarity(d_c.flatten(1).float(), d_s.flatten(1).float(), dim=1)


def ramp(h: torch.Tensor, tau: float, h_sat: float) -> torch.Tensor:
    """Eq. (c): clamp((h - tau) / (h_sat - tau), 0, 1); exactly 0 for h <= tau."""
    return ((h - tau) / (h_sat - tau)).clamp(0.0, 1.0)


class NoiseJudge:
    """Accumulates Eq. (b) over steps ``start .. steps - 1`` of a batch of ``batch_size`` images (the
    first steps' cosine depends on the noise as much as on the prompt; each judged step costs a branch)."""

    def __init__(self, steps: int, batch_size: int, start: int = 0) -> None:
        self.steps, self.start = steps, min(start, max(steps - 1, 0))
        self.total = torch.zeros(batch_size)
        self.per_step: list[list[float]] = [[] for _ in range(batch_size)]
        self.h = torch.zeros(batch_size)

    def judging(self, step: int) -> bool:
        return self.start <= step < self.steps

    def update(self, step: int, d_c: torch.Tensor, d_s: torch.Tensor) -> bool:
        """Add one step's cosines; True when this was the last judged step (``h`` is then set)."""
        cos = cosine(d_c, d_s).cpu()
        self.total += cos
        for b, value in enumerate(cos.tolist()):
            self.per_step[b].append(round(value, 5))
        if step == self.steps - 1:
            self.h = self.total / (self.steps - self.start)
            return True
        return False
