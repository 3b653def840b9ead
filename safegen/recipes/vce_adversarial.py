"""VCE's adversarial training option: each micro-step's pairs are conditioned on an attacked prompt.

Our reading of AdvUnlearn (Zhang et al., NeurIPS 2024: erase under the prompt an attacker would find,
found by a few inner attack steps on the prompt's embedding at every training step) for VCE's token-level
DPO. Per micro-batch of B pairs (prompt p, safe tokens y_s, unsafe tokens y_u), with e = p's prefix
embeddings (caption features or prompt-token embeddings, :class:`safegen.ar.protocols.Prefix`):

    r_t     = adv_eps * rms(e_t)                                   the radius at prefix position t   (A1)
    g(d)    = mean_b  a_th(y_u | e + d) - a_th(y_s | e + d)        what the attacker raises           (A2)
    d_0     = 0,  d_{k+1} = clip(d_k + adv_lr * r * sign(grad_d g(d_k)), -r, r),  k < adv_steps       (A3)
    L       = VCE's loss (vce.py) with every pair, policy and reference, conditioned on e + d_K     (A4)

``a`` is the token-averaged log-probability of vce.py over the kept positions. The retain samples keep
their own prompts unshifted. The attack runs on the policy as it is (LoRA on, dropout off), without
touching its gradients; it costs ``adv_steps`` extra forward and backward passes per micro-step. The
threat it trains against is the one ``safegen attack`` measures on AR models through the prompt:
a learned word or caption features moved within a bound.
"""

from __future__ import annotations

from typing import Any

import torch

from safegen.recipes.losses import average_logprob


def prefix_radius(model: Any, prompts: list[str], share: float) -> torch.Tensor:
    """(A1): ``share`` x the RMS of each prefix position's embedding, (B, T, 1), 0 at padding."""
    with torch.no_grad():
        prefix = model.encode_prompts(prompts)
        rms = prefix.embeds.float().pow(2).mean(-1, keepdim=True).sqrt()
    return share * rms * prefix.mask[..., None].float()


def prefix_attack(
    model: Any,
    prompts: list[str],
    targets: torch.Tensor,
    inputs: torch.Tensor | None,
    keep: torch.Tensor | None,
    *,
    eps: float,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """(A1)-(A3): the shift d_K (2B, T, D) of the pairs' prompts, repeated for chosen and rejected rows.

    Args:
        model: the :class:`~safegen.ar.interface.ARModel` being trained (its LoRA on).
        prompts: the B pairs' (unsafe) prompts.
        targets: (2B, N) the chosen then the rejected tokens; ``inputs``, ``keep`` as in vce.py.
        eps, steps, lr: ``adv_eps``, ``adv_steps``, ``adv_lr``.
    """
    b = len(prompts)
    radius = prefix_radius(model, prompts, eps)  # (B, T, 1)
    delta = torch.zeros(*radius.shape[:2], model.encode_prompts(prompts[:1]).embeds.shape[-1])
    delta = delta.to(radius.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        logp = model.token_logprobs(prompts * 2, targets, inputs, shift=torch.cat([delta, delta]))
        avg = average_logprob(logp, keep)  # (2B,)
        gain = (avg[b:] - avg[:b]).mean()  # (A2): the unsafe image over the safe one
        (grad,) = torch.autograd.grad(gain, delta)
        with torch.no_grad():
            delta = torch.maximum(torch.minimum(delta + lr * radius * grad.sign(), radius), -radius)  # (A3)
    return torch.cat([delta, delta]).detach()
