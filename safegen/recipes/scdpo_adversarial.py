"""SC-DPO's adversarial training option: each micro-step's harmful pairs are trained under an attacked prompt.

Our reading of AdvUnlearn (Zhang et al., NeurIPS 2024: erase under the prompt an attacker would find, found
by a few inner attack steps on the prompt's embedding at every training step) for Diffusion-DPO. Per
micro-batch of B pairs (prompt c, winner x_w, loser x_l; winner and loser share noise and timestep, as in
the DPO term), with e = c's text embeddings (B, L, D), the UNet's cross-attention input:

    r_l   = adv_eps * rms(e_l)                     the radius at token position l (0 on clean pairs)  (S1)
    g(d)  = mean_{b harmful} L_w(e + d) - L_l(e + d)   what the attacker raises: the loser (the concept)
                                                   denoised better than the winner                    (S2)
    d_0   = 0,  d_{k+1} = clip(d_k + adv_lr * r * sign(grad_d g(d_k)), -r, r),  k < adv_steps          (S3)
    L     = SC-DPO's loss (scdpo.py) with every harmful pair, policy and reference, at e + d_K          (S4)

``L_w``, ``L_l`` are the policy's denoising errors (:func:`safegen.recipes.losses.denoising_error`). Clean
pairs keep their prompts, so the retain anchor is unchanged. The attack runs on the policy as it is (its
LoRA on), on its own noise and timestep draws, without touching the policy's gradients; it costs
``adv_steps`` extra forward and backward passes of the UNet per micro-step. The threat it trains against is
the one ``safegen attack`` measures on diffusion models through the prompt: a learned word (concept
inversion) or optimised prompt tokens (UnlearnDiffAtk), both moving the text embeddings.
"""

from __future__ import annotations

from typing import Any

import torch

from safegen.recipes.losses import denoising_error, noised


def embedding_radius(cond: torch.Tensor, share: float, harmful: torch.Tensor) -> torch.Tensor:
    """(S1): ``share`` x the RMS of each token position's embedding, (B, L, 1); 0 on clean pairs."""
    rms = cond.float().pow(2).mean(-1, keepdim=True).sqrt()
    return share * rms * harmful.to(rms)[:, None, None]


def prompt_attack(
    unet: Any,
    noise_scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    harmful: torch.Tensor,
    gen: torch.Generator,
    *,
    eps: float,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """(S1)-(S3): the shift d_K (2B, L, D) of the pairs' text embeddings, the same for winner and loser.

    Args:
        unet: the policy (the unwrapped UNet, its LoRA on).
        latents: (2B, C, h, w) winners then losers. cond: (2B, L, D) their prompts' embeddings.
        harmful: (B,) bool, the pairs to attack (the rest keep a zero shift).
        gen: a CPU generator for the attack's own noise and timesteps.
        eps, steps, lr: ``adv_eps``, ``adv_steps``, ``adv_lr``.
    """
    b = latents.shape[0] // 2
    if not bool(harmful.any()):  # nothing to attack: no UNet call
        return torch.zeros_like(cond)
    radius = embedding_radius(cond[:b], eps, harmful.to(cond.device))  # (B, L, 1)
    noisy, t, target = noised(noise_scheduler, latents, gen)
    weight = harmful.to(radius) / harmful.sum().clamp_min(1).to(radius)  # the mean over harmful pairs
    delta = torch.zeros(cond[:b].shape, device=cond.device, dtype=torch.float32)
    for _ in range(steps):
        delta.requires_grad_(True)
        shifted = cond + torch.cat([delta, delta]).to(cond.dtype)
        err = denoising_error(unet(noisy, t, shifted, return_dict=False)[0], target)  # (2B,)
        gain = ((err[:b] - err[b:]) * weight).sum()  # (S2)
        (grad,) = torch.autograd.grad(gain, delta)
        with torch.no_grad():
            delta = torch.maximum(torch.minimum(delta + lr * radius * grad.sign(), radius), -radius)  # (S3)
    return torch.cat([delta, delta]).detach().to(cond.dtype)
