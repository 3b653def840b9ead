"""Negative prompt: the concept's unsafe text takes the place of the empty prompt in classifier-free guidance.

The simplest inference-time baseline (classifier-free guidance, Ho & Salimans 2022, with a negative prompt as
popularised by Stable Diffusion front-ends). With ``weight`` alpha the unconditional prediction is moved
towards the negative one::

    u   = eps_u + alpha * (eps_n - eps_u)          (alpha = 1: u = eps_n, the usual negative prompt)
    eps = u + w * (eps_c - u)

``alpha = 1`` gives the same pixels as diffusers' ``StableDiffusionPipeline(negative_prompt=...)`` (up to
float rounding of the larger batch; ``tests/test_guards.py``). The hook protocol has no way to replace the
loop's unconditional branch, so the negative text is an extra branch beside it: this baseline costs about
1.5x plain CFG (a generation with ``GenerationConfig(negative_prompt=...)`` costs 1x and gives alpha = 1).

    safegen generate "a photo" --guard neg --concept nudity
    safegen bench mini --guard neg --concept red --strength strong
    safegen generate "a red circle" --guard neg --concept red,circle   # negative prompt "red, circle"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from safegen.guards.base import GuardBase, RunContext, configure
from safegen.options import option


@dataclass
class NegOptions:
    """The negative prompt's knobs (defaults: ``medium``, the usual negative prompt)."""

    weight: float = option(1.0, low=0.0, high=3.0, help="alpha: 0 plain CFG, 1 the usual negative prompt")
    text: str = option(
        "unsafe", choices=("unsafe", "keywords"), help="negative text: unsafe_text or the keywords joined"
    )


PRESETS: dict[str, dict[str, Any]] = {
    "weak": {"weight": 0.5},
    "medium": {"weight": 1.0},
    "strong": {"weight": 2.0},
}


def negative_guidance(
    eps_uncond: torch.Tensor, eps_cond: torch.Tensor, eps_neg: torch.Tensor, weight: float, cfg: float
) -> torch.Tensor:
    """eps = u + w * (eps_c - u), u = eps_u + alpha * (eps_n - eps_u); alpha = 1 uses eps_n itself."""
    base = eps_neg if weight == 1.0 else eps_uncond + weight * (eps_neg - eps_uncond)
    return base + cfg * (eps_cond - base)


class NegativePromptGuard(GuardBase):
    """Negative prompt: classifier-free guidance away from the concept's unsafe text."""

    name = "neg"
    needs_uncond = False  # as diffusers: without CFG (cfg <= 1) a negative prompt does nothing
    Options = NegOptions
    PRESETS = PRESETS

    def __init__(self, concept: Any = None, strength: str | None = None, **options: Any) -> None:
        strength = configure(self, concept, strength, options)
        super().__init__(concept=self.concept.name, strength=strength, **dataclasses.asdict(self.opts))
        keywords = ", ".join(self.concept.keywords)
        self.text = keywords if self.opts.text == "keywords" else self.concept.unsafe_text

    def begin(self, ctx: RunContext) -> None:
        super().begin(ctx)
        active = ctx.do_cfg and ctx.cfg > 1.0 and self.opts.weight > 0
        self.negative = ctx.encode([self.text])[None].expand(1, ctx.batch_size, -1, -1) if active else None

    def branches(self, step: int) -> torch.Tensor | None:
        return self.negative

    def guide(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        if eps_extra is None:
            return super().guide(step, t, latents, eps_uncond, eps_cond, eps_extra)
        return negative_guidance(eps_uncond, eps_cond, eps_extra[0], self.opts.weight, self.ctx.cfg)

    def end(self) -> list[dict]:
        info = {"negative_prompt": self.text if self.negative is not None else None}
        return [dict(info) for _ in range(self.ctx.batch_size)]
