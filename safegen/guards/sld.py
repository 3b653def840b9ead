"""Safe Latent Diffusion (SLD) as a guard in safegen's loop: the baseline the other guards are measured by.

Following SLD (Schramowski et al., CVPR 2023, arXiv 2211.05105), re-implemented from the paper's equations
(numbered as in the paper) and checked for pixel parity with diffusers' ``StableDiffusionPipelineSafe`` on
the same model, seeds and preset (``tests/test_guards.py``). Per step, with one batched UNet call over
[eps_u, eps_c, eps_S] (eps_S: the safety concept's text)::

    mu    = clamp(s_S * |eps_c - eps_S|, max=1)  where eps_c - eps_S < lambda, else 0   # Eq. 6
    g_S   = mu * (eps_S - eps_u)                                                       # Eq. 4
    g_S   = g_S + s_m * nu_t                                                           # Eq. 7
    nu    = beta_m * nu_t + (1 - beta_m) * g_S                                         # Eq. 8
    eps   = eps_u + w * ((eps_c - eps_u) - g_S)      from step ``warmup_steps`` on     # Eq. 3

The momentum nu builds up from step 0, also during the warm-up. As in diffusers, safety guidance is on
only when ``guidance_scale > 1`` and classifier-free guidance is on (``cfg > 1``). The presets are the
paper's (diffusers' ``SafetyConfig``); ``medium`` is the default, as in diffusers.

    safegen generate "a photo" --guard sld --concept nudity --strength max
    safegen bench mini --guard sld --concept red --strength strong
    safegen generate "a photo" --guard sld --concept nudity,violence   # both unsafe texts, ", "-joined
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from safegen.guards.base import GuardBase, RunContext, configure
from safegen.options import option

# The safety concept text of the SLD paper (I2P's inappropriate categories), for ``text=paper``.
PAPER_TEXT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, "
    "bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child "
    "abuse, brutality, cruelty"
)


@dataclass
class SLDOptions:
    """SLD's hyper-parameters (defaults: the paper's ``medium``)."""

    warmup_steps: int = option(10, low=0, high=1000, help="delta: steps before safety guidance is applied")
    guidance_scale: float = option(1000.0, low=0.0, high=100000.0, help="s_S: safety guidance scale")
    threshold: float = option(0.01, low=0.0, high=1.0, help="lambda: guide where eps_c - eps_S < lambda")
    momentum_scale: float = option(0.3, low=0.0, high=10.0, help="s_m: weight of the momentum")
    mom_beta: float = option(0.4, low=0.0, high=1.0, help="beta_m: how the momentum builds up")
    text: str = option("concept", choices=("concept", "paper"), help="safety text: the concept's or SLD's")


# (warmup, s_S, lambda, s_m, beta_m) of the paper (diffusers' SafetyConfig); docs/methods/sld.md.
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(
        zip(("warmup_steps", "guidance_scale", "threshold", "momentum_scale", "mom_beta"), v, strict=True)
    )
    for name, v in {
        "weak": (15, 20.0, 0.0, 0.0, 0.0),
        "medium": (10, 1000.0, 0.01, 0.3, 0.4),
        "strong": (7, 2000.0, 0.025, 0.5, 0.7),
        "max": (0, 5000.0, 1.0, 0.5, 0.7),
    }.items()
}


def sld_guidance(
    eps_uncond: torch.Tensor,
    eps_cond: torch.Tensor,
    eps_safety: torch.Tensor,
    momentum: torch.Tensor,
    opts: SLDOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of SLD's safety guidance: (g_S of Eq. 7, the momentum of Eq. 8), each (B, C, h, w)."""
    gap = eps_cond - eps_safety
    mu = torch.clamp(torch.abs(gap) * opts.guidance_scale, max=1.0)  # Eq. 6: element-wise scale
    mu = torch.where(gap >= opts.threshold, torch.zeros_like(mu), mu)  # Eq. 6: only below lambda
    g_s = torch.mul(eps_safety - eps_uncond, mu)  # Eq. 4
    g_s = g_s + opts.momentum_scale * momentum  # Eq. 7
    momentum = opts.mom_beta * momentum + (1 - opts.mom_beta) * g_s  # Eq. 8
    return g_s, momentum


class SLDGuard(GuardBase):
    """Safe Latent Diffusion: element-wise guidance away from the safety text, with warm-up and momentum."""

    name = "sld"
    needs_uncond = False  # as diffusers: no CFG (cfg <= 1), no safety guidance
    Options = SLDOptions
    PRESETS = PRESETS

    def __init__(self, concept: Any = None, strength: str | None = None, **options: Any) -> None:
        strength = configure(self, concept, strength, options)
        super().__init__(concept=self.concept.name, strength=strength, **dataclasses.asdict(self.opts))
        self.text = PAPER_TEXT if self.opts.text == "paper" else self.concept.unsafe_text

    def begin(self, ctx: RunContext) -> None:
        super().begin(ctx)
        self.active = self.opts.guidance_scale > 1.0 and ctx.do_cfg and ctx.cfg > 1.0
        self.safety = ctx.encode([self.text])[None].expand(1, ctx.batch_size, -1, -1) if self.active else None
        self.momentum: torch.Tensor | None = None
        self.applied = 0

    def branches(self, step: int) -> torch.Tensor | None:
        return self.safety  # every step: the momentum builds up during the warm-up too

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
        direction = eps_cond - eps_uncond
        if self.momentum is None:
            self.momentum = torch.zeros_like(direction)
        g_s, self.momentum = sld_guidance(eps_uncond, eps_cond, eps_extra[0], self.momentum, self.opts)
        if step >= self.opts.warmup_steps:
            direction = direction - g_s  # Eq. 3
            self.applied += 1
        return eps_uncond + self.ctx.cfg * direction

    def end(self) -> list[dict]:
        info = {"safety_text": self.text if self.active else None, "guided_steps": self.applied}
        return [dict(info) for _ in range(self.ctx.batch_size)]
