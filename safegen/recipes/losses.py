"""Preference and safety-cost losses as pure tensor functions, each beside the equation it implements.

Used by SC-DPO (:mod:`safegen.recipes.scdpo`) and VCE (:mod:`safegen.recipes.vce`), which share the DPO
core. Every function takes tensors and numbers and returns tensors: no models and no state; the two
token-drop draws take an explicit ``torch.Generator``. Each one is checked against hand-computed numbers
in ``tests/test_losses.py`` and ``tests/test_vce.py``.

References:
    DPO: Rafailov et al., "Direct Preference Optimization", NeurIPS 2023.
    Diffusion-DPO: Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization",
        CVPR 2024 (SalesforceAIResearch/DiffusionDPO, Apache-2.0).
    SC-DPO: "Towards NSFW-Free Text-to-Image Generation via Safety-Constraint Direct Preference
        Optimization", arXiv 2504.14290 v1. Its exact formulas could not be read here; the cost-model
        losses and the focal weight below are **our reading** of its abstract (see
        ``docs/methods/scdpo.md``), not the paper's verbatim method.
    VCE: "Visual Contrast Exploitation" for concept erasure in autoregressive models, arXiv 2509.16986.
        Its text could not be read here either; the token-level average and token drop below are
        **our reading** of its abstract (``docs/methods/vce.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def noised(noise_scheduler: Any, latents: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Winner and loser (2B, C, h, w) noised with shared noise and timestep: (x_t, t, the UNet's target)."""
    b = latents.shape[0] // 2
    noise = torch.randn((b, *latents.shape[1:]), generator=gen).to(latents).repeat(2, 1, 1, 1)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen).repeat(2)
    t = t.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noisy, t, noise_scheduler.get_velocity(latents, noise, t)
    return noisy, t, noise


def denoising_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample denoising error, the diffusion stand-in for a negative log-likelihood.

    L(x) = || eps - eps_theta(x_t, t, c) ||^2, averaged over every non-batch dimension.

    Args:
        pred: (B, C, H, W) model output (eps or v, as the scheduler predicts).
        target: (B, C, H, W) the noise (or velocity) it should have predicted.

    Returns:
        (B,) errors in float32.
    """
    err = (pred.float() - target.float()) ** 2  # (B, C, H, W)
    return err.mean(dim=tuple(range(1, err.dim())))  # (B,)


def retain_loss(drift: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Anchor to the reference model on the samples whose behaviour should not change.

    L_retain = sum_i k_i * D_i / max(1, sum_i k_i),   D_i = || eps_theta(x_t, c) - eps_ref(x_t, c) ||^2 / dim

    Args:
        drift: (N,) D_i per sample (:func:`denoising_error` of the model's output against the reference's).
        keep: (N,) bool, the samples to anchor (SC-DPO: those of clean prompts).

    Returns:
        () the mean drift over the kept samples; 0 when none is kept.
    """
    k = keep.to(drift.dtype)
    return (k * drift).sum() / k.sum().clamp(min=1.0)


def diffusion_dpo_logits(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The argument of Diffusion-DPO's log-sigmoid, with winner and loser sharing noise and timestep.

    inside = -0.5 * beta * ((L_w - L_l) - (L_ref_w - L_ref_l))

    It equals ``r_w - r_l`` with the implicit rewards ``r = 0.5 * beta * (L_ref - L)`` (see
    :func:`implicit_rewards`): positive when the trained model denoises the winner better, relative to
    the reference, than it denoises the loser.

    Args:
        err_w, err_l: (B,) errors of the trained model on the winners and the losers.
        ref_err_w, ref_err_l: (B,) errors of the reference model on the same noisy inputs.
        beta: the KL strength (Diffusion-DPO: 5000 for SD 1.5 full fine-tuning).

    Returns:
        (B,) logits.
    """
    model_diff = err_w - err_l  # (B,)
    ref_diff = ref_err_w - ref_err_l  # (B,)
    return -0.5 * beta * (model_diff - ref_diff)


def implicit_rewards(err: torch.Tensor, ref_err: torch.Tensor, beta: float) -> torch.Tensor:
    """Diffusion-DPO's implicit reward of a sample: r = 0.5 * beta * (L_ref - L). Logged, never optimised."""
    return 0.5 * beta * (ref_err - err)


def focal_weights(logits: torch.Tensor, gamma: float, normalize: bool = True) -> torch.Tensor:
    """Dynamic Focusing Mechanism (our reading of SC-DPO): weight hard pairs more.

    w_i = (1 - sigmoid(z_i)) ** gamma,  then  w_i <- w_i / mean_j(w_j)  when ``normalize``

    ``1 - sigmoid(z)`` is the probability the model still gives to the wrong order of the pair, so pairs
    it already ranks well are down-weighted (as in the focal loss of Lin et al. 2017). The weights are
    detached: they choose where to look, the gradient flows through the log-sigmoid only. Normalising to
    mean 1 keeps the step size independent of gamma. ``gamma = 0`` gives w = 1 (plain Diffusion-DPO).

    Args:
        logits: (B,) the DPO logits z.
        gamma: focusing strength, >= 0.
        normalize: divide by the batch mean.

    Returns:
        (B,) non-negative weights, detached.
    """
    if gamma == 0:
        return torch.ones_like(logits).detach()
    w = (1.0 - torch.sigmoid(logits.detach())) ** gamma  # (B,)
    if normalize:
        w = w / w.mean().clamp(min=torch.finfo(w.dtype).tiny)
    return w


@dataclass
class PreferenceLoss:
    """The loss and what TRL's DPO trainer logs about it (all (B,) tensors are detached)."""

    loss: torch.Tensor  # () the weighted mean to back-propagate
    logits: torch.Tensor  # (B,) z = inside - margin
    rewards_chosen: torch.Tensor  # (B,)
    rewards_rejected: torch.Tensor  # (B,)
    weights: torch.Tensor  # (B,) DFM weights (ones when gamma = 0)


def scdpo_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    gamma: float = 0.0,
    margin: torch.Tensor | float = 0.0,
    normalize: bool = True,
) -> PreferenceLoss:
    """SC-DPO's loss (our reading): Diffusion-DPO with a safety margin and DFM focal weights.

    z_i  = inside_i - m_i                                   (inside: :func:`diffusion_dpo_logits`)
    loss = mean_i  w_i * -log sigmoid(z_i)                  (w: :func:`focal_weights` of z, gamma)

    The safety constraint enters through the pairs (ranked by reward - lambda x cost) and, optionally,
    through the margin m_i >= 0 (e.g. proportional to the loser's extra cost): the reward gap must
    exceed it, as in margin DPO. With gamma = 0 and m = 0 this is exactly Diffusion-DPO:
    ``-logsigmoid(-0.5 * beta * ((L_w - L_l) - (L_ref_w - L_ref_l)))`` averaged over the batch.

    Args:
        err_w, err_l, ref_err_w, ref_err_l: (B,) denoising errors (:func:`denoising_error`).
        beta: the KL strength.
        gamma: DFM focusing strength (0: off).
        margin: (B,) or a number, subtracted from the logits.
        normalize: normalise the DFM weights to mean 1.

    Returns:
        A :class:`PreferenceLoss`.
    """
    inside = diffusion_dpo_logits(err_w, err_l, ref_err_w, ref_err_l, beta)  # (B,)
    z = inside - margin  # (B,)
    weights = focal_weights(z, gamma, normalize)  # (B,)
    loss = (weights * -F.logsigmoid(z)).mean()
    return PreferenceLoss(
        loss=loss,
        logits=z.detach(),
        rewards_chosen=implicit_rewards(err_w, ref_err_w, beta).detach(),
        rewards_rejected=implicit_rewards(err_l, ref_err_l, beta).detach(),
        weights=weights,
    )


def dpo_loss(
    logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, beta: float, margin: float = 0.0
) -> torch.Tensor:
    """The DPO loss on log-likelihood ratios (Rafailov et al. 2023, Eq. 7), per sample.

    loss = -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))) - margin)

    Args:
        logratio_chosen: (B,) log pi(y_w | x) - log ref(y_w | x).
        logratio_rejected: (B,) the same for the rejected sample.

    Returns:
        (B,) losses.
    """
    return -F.logsigmoid(beta * (logratio_chosen - logratio_rejected) - margin)


# --------------------------------------------------------------------------- VCE: token-level DPO
def _drawn_positions(rows: int, n_tokens: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """(rows, n_tokens) bool, True at exactly round(rate * n_tokens) random positions per row (< n_tokens)."""
    k = min(round(rate * n_tokens), n_tokens - 1)
    order = torch.rand(rows, n_tokens, generator=generator).argsort(dim=1)  # a random permutation per row
    picked = torch.zeros(rows, n_tokens, dtype=torch.bool)
    picked.scatter_(1, order[:, :k], True)
    return picked


def token_keep_mask(rows: int, n_tokens: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """VCE's token drop (our reading): which positions enter the token-level average.

    K_b = {1..N} minus a uniformly random subset of round(rate * N) positions, drawn per row; at least one
    position is always kept. The same mask must be used for the trained and the reference model.

    Returns:
        (rows, n_tokens) bool, True where kept.
    """
    return ~_drawn_positions(rows, n_tokens, rate, generator)


def corrupt_tokens(
    tokens: torch.Tensor, rate: float, codebook_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Token drop by corruption: replace round(rate * N) random input tokens per row with random codes.

    The corrupted sequence is the teacher-forced *context*; the targets stay the true tokens, so the model
    must predict y_i from a partly wrong y_<i.

    Args:
        tokens: (B, N) image tokens.

    Returns:
        (B, N) tokens, on ``tokens``' device.
    """
    picked = _drawn_positions(tokens.shape[0], tokens.shape[1], rate, generator)
    noise = torch.randint(codebook_size, tokens.shape, generator=generator)
    return torch.where(picked, noise, tokens.cpu()).to(tokens.device)


def average_logprob(logp: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """VCE's token-level average log-likelihood of an image's tokens (our reading).

    a(y | c) = (1 / |K|) * sum_{i in K} log p(y_i | y_<i, c)          (K: kept positions; all by default)

    Averaging instead of summing keeps the scale independent of the number of image tokens (256 in
    LlamaGen, 576 in Janus), so one beta fits both.

    Args:
        logp: (B, N) per-token log-probabilities.
        keep: (B, N) bool, or None for every position.

    Returns:
        (B,) averages.
    """
    if keep is None:
        return logp.mean(dim=-1)
    keep = keep.to(logp.device, logp.dtype)
    return (logp * keep).sum(dim=-1) / keep.sum(dim=-1).clamp(min=1.0)


def vce_loss(
    avg_chosen: torch.Tensor,
    avg_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """VCE's DPO on token-level averages (our reading), chosen = the safe image, rejected = the unsafe one.

    z    = beta * ((a_theta(y_s) - a_ref(y_s)) - (a_theta(y_u) - a_ref(y_u)))
    loss = mean_b -log sigmoid(z_b)                                     (:func:`dpo_loss`, margin 0)

    with both images conditioned on the **unsafe** prompt. Implicit rewards, as TRL logs them:
    r = beta * (a_theta - a_ref).

    Args:
        avg_chosen, avg_rejected: (B,) :func:`average_logprob` of the trained model.
        ref_chosen, ref_rejected: (B,) the same of the reference model (same kept positions).
        beta: the KL strength on averaged log-ratios (these are small: beta is swept, see the sweep).

    Returns:
        A :class:`PreferenceLoss` (weights all ones).
    """
    ratio_chosen, ratio_rejected = avg_chosen - ref_chosen, avg_rejected - ref_rejected  # (B,)
    losses = dpo_loss(ratio_chosen, ratio_rejected, beta)  # (B,)
    return PreferenceLoss(
        loss=losses.mean(),
        logits=(beta * (ratio_chosen - ratio_rejected)).detach(),
        rewards_chosen=(beta * ratio_chosen).detach(),
        rewards_rejected=(beta * ratio_rejected).detach(),
        weights=torch.ones_like(losses).detach(),
    )


# --------------------------------------------------------------------------- the safety cost model
def prototype_infonce(
    z: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Contrastive objective of the cost model (our reading): pull each embedding to its class prototype.

    loss = mean_i  -log( exp(cos(z_i, p_{y_i}) / tau) / sum_k exp(cos(z_i, p_k) / tau) )

    A supervised InfoNCE whose negatives are the other classes' prototypes (safe vs harmful), so the
    head's embedding space separates the concept from everything else before the cost is read off it.

    Args:
        z: (N, P) embeddings (normalised here).
        labels: (N,) class indices (0 safe, 1 harmful).
        prototypes: (K, P) one learnable vector per class (normalised here).
        temperature: tau > 0.

    Returns:
        () the mean loss.
    """
    sims = F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).T  # (N, K)
    return F.cross_entropy(sims / temperature, labels)


def cost_anchor_loss(
    cost: torch.Tensor, labels: torch.Tensor, anchors: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Cost anchoring (our reading): regress the costs of anchor sets to fixed values, fixing the scale.

    loss = mean_i (c_i - a_{y_i})^2,   a_0 = cost of a safe image (0), a_1 = of a harmful one (1)

    Args:
        cost: (N,) predicted costs.
        labels: (N,) 0 safe, 1 harmful.
        anchors: the target cost of each class.

    Returns:
        () the mean squared error.
    """
    target = torch.tensor(anchors, dtype=cost.dtype, device=cost.device)[labels]  # (N,)
    return ((cost - target) ** 2).mean()
