"""The losses of :mod:`safegen.recipes.losses` against numbers computed by hand.

Hand computation for the two-pair batch used below (beta = 10):

    err_w = [0.10, 0.30], err_l = [0.20, 0.10], ref_err_w = [0.15, 0.20], ref_err_l = [0.15, 0.20]
    model_diff = err_w - err_l = [-0.10, 0.20];  ref_diff = [0, 0]
    inside = -0.5 * 10 * (model_diff - ref_diff) = [0.5, -1.0]
    -logsigmoid(0.5) = log(1 + e^-0.5) = 0.4740769842;  -logsigmoid(-1) = log(1 + e) = 1.3132616875
    loss (gamma 0) = (0.4740769842 + 1.3132616875) / 2 = 0.8936693358
    rewards chosen = 0.5 * 10 * (ref_err_w - err_w) = [0.25, -0.5];  rejected = 5 * (ref_err_l - err_l)
        = [-0.25, 0.5];  margins = chosen - rejected = [0.5, -1.0] = inside;  accuracy = 1/2
    DFM, gamma 2: (1 - sigmoid(0.5))^2 = 0.1425369566, (1 - sigmoid(-1))^2 = 0.5344466454;
        normalised to mean 1: [0.4210942663, 1.5789057337];
        loss = (0.4210942663 * 0.4740769842 + 1.5789057337 * 1.3132616875) / 2 = 1.1365737540
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safegen.recipes.losses import (
    cost_anchor_loss,
    denoising_error,
    diffusion_dpo_logits,
    dpo_loss,
    focal_weights,
    implicit_rewards,
    prototype_infonce,
    retain_loss,
    scdpo_loss,
)

ERR_W = torch.tensor([0.10, 0.30])
ERR_L = torch.tensor([0.20, 0.10])
REF_W = torch.tensor([0.15, 0.20])
REF_L = torch.tensor([0.15, 0.20])


def approx(values, rel=1e-6):
    return pytest.approx(values, rel=rel, abs=1e-7)


def test_denoising_error_is_per_sample_mean_square():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0]).reshape(2, 1, 2, 2)
    assert denoising_error(pred, target).tolist() == approx([1.0, 1.0])  # (1+1+1+1)/4, (0+0+0+4)/4


def test_retain_loss_is_the_mean_drift_of_the_kept_samples():
    drift = torch.tensor([0.1, 0.3, 0.5])
    assert retain_loss(drift, torch.tensor([True, False, True])).item() == approx(0.3)  # (0.1 + 0.5) / 2
    assert retain_loss(drift, torch.zeros(3, dtype=torch.bool)).item() == 0.0  # a batch of harmful pairs


def test_diffusion_dpo_logits_by_hand():
    assert diffusion_dpo_logits(ERR_W, ERR_L, REF_W, REF_L, beta=10).tolist() == approx([0.5, -1.0])


def test_diffusion_dpo_loss_by_hand_gamma_zero_is_plain_diffusion_dpo():
    out = scdpo_loss(ERR_W, ERR_L, REF_W, REF_L, beta=10, gamma=0.0)
    assert out.loss.item() == approx(0.8936693358)
    assert out.rewards_chosen.tolist() == approx([0.25, -0.5])
    assert out.rewards_rejected.tolist() == approx([-0.25, 0.5])
    assert (out.rewards_chosen - out.rewards_rejected).tolist() == approx([0.5, -1.0])
    assert (out.rewards_chosen > out.rewards_rejected).float().mean().item() == 0.5
    assert out.weights.tolist() == [1.0, 1.0]


def test_diffusion_dpo_matches_the_research_example_formula():
    """diffusers' example: logits = ref_diff - model_diff, loss = -logsigmoid(beta' * logits).

    Ours carries the 0.5 of the original Diffusion-DPO, so beta' = beta / 2 gives the same loss.
    """
    torch.manual_seed(0)
    ew, el, rw, rl = torch.rand(4, 8).unbind(0)
    example = -F.logsigmoid(1250.0 * ((rw - rl) - (ew - el))).mean()
    assert scdpo_loss(ew, el, rw, rl, beta=2500.0).loss.item() == approx(example.item(), rel=1e-5)


def test_focal_weights_by_hand():
    z = torch.tensor([0.5, -1.0])
    assert focal_weights(z, 2.0).tolist() == approx([0.4210942663, 1.5789057337])
    assert focal_weights(z, 2.0, normalize=False).tolist() == approx([0.1425369566, 0.5344466454])
    assert focal_weights(z, 0.0).tolist() == [1.0, 1.0]
    assert not focal_weights(z.requires_grad_(), 2.0).requires_grad


def test_scdpo_loss_with_dfm_by_hand():
    out = scdpo_loss(ERR_W, ERR_L, REF_W, REF_L, beta=10, gamma=2.0)
    assert out.loss.item() == approx(1.1365737540)
    assert out.weights.mean().item() == approx(1.0)


def test_safety_margin_shifts_the_logits():
    # margin 0.5 on the first pair: z = [0.0, -1.0]; loss = (log 2 + log(1 + e)) / 2 = 1.0032044340
    out = scdpo_loss(ERR_W, ERR_L, REF_W, REF_L, beta=10, margin=torch.tensor([0.5, 0.0]))
    assert out.logits.tolist() == approx([0.0, -1.0])
    assert out.loss.item() == approx(1.0032044340)


def test_gradient_flows_to_the_model_errors_only():
    ew = ERR_W.clone().requires_grad_()
    out = scdpo_loss(ew, ERR_L, REF_W, REF_L, beta=10, gamma=2.0)
    out.loss.backward()
    # d/d L_w of w * -logsigmoid(-5 (L_w - ...)) = w * 5 * sigmoid(-z) / B, weights held fixed
    expected = [
        w * 5 * (1 - 1 / (1 + math.exp(-z))) / 2
        for w, z in zip(out.weights.tolist(), [0.5, -1.0], strict=True)
    ]
    assert ew.grad.tolist() == approx(expected, rel=1e-5)


def test_implicit_rewards_and_dpo_loss_by_hand():
    assert implicit_rewards(torch.tensor([0.1]), torch.tensor([0.3]), beta=10).tolist() == approx([1.0])
    # beta 0.1, log-ratios 2 and -1: -logsigmoid(0.3) = log(1 + e^-0.3) = 0.5543552445
    assert dpo_loss(torch.tensor([2.0]), torch.tensor([-1.0]), beta=0.1).tolist() == approx([0.5543552445])


def test_prototype_infonce_by_hand():
    # z = e1, e2, both labelled 0; prototypes e1, e2; tau 0.5: cos = 1 or 0, logits 2 or 0
    # -log(e^2 / (e^2 + 1)) = 0.1269280110, -log(1 / (1 + e^2)) = 2.1269280110, mean 1.1269280110
    z = torch.eye(2) * 3.0  # norms do not matter
    loss = prototype_infonce(z, torch.tensor([0, 0]), torch.eye(2), temperature=0.5)
    assert loss.item() == approx(1.1269280110)


def test_cost_anchor_loss_by_hand():
    # (0.2 - 0)^2 = 0.04, (0.5 - 1)^2 = 0.25, mean 0.145
    assert cost_anchor_loss(torch.tensor([0.2, 0.5]), torch.tensor([0, 1])).item() == approx(0.145)
