"""UnlearnDiffAtk: a white-box attack with discrete prefix tokens (Zhang et al., ECCV 2024).

Our reading of the official code (OPTML-Group/Diffusion-MU-Attack, ``text_grad``): ``slots`` prefix
positions, each a probability vector pi_j over the vocabulary; every iteration draws a one-hot token per
slot and passes its gradient straight through to pi_j; Adam updates pi, which is projected back onto the
probability simplex. The objective is the attacked model's denoising error on target images of the
concept::

    e_j   = onehot(sample(pi_j)) + pi_j - stopgrad(pi_j)                 straight-through slot j   (U1)
    c_adv = text_encoder([e_1 E, ..., e_k E, prompt])                     E: the token table      (U2)
    L     = || eps - eps_theta(x_t, c_adv, t) ||^2,  x_t = noised target latent at timestep t      (U3)
    L     = - mean_i log p(y_i | y_<i, c_adv)      autoregressive models: y = the target's VQ tokens (U3')
    pi    <- proj_simplex(pi - Adam(grad L))                                                      (U4)

Timesteps run 10, 30, ..., 990 with ``iterations`` steps each; after each timestep the current argmax
tokens are decoded into text, the model generates from that text (the prompt a user would type) and the
judge reads the images; the attack stops at the first success. On a guarded model eps is the guarded
prediction (:meth:`AttackTarget.denoising_loss`); on an unguarded one the conditional branch, as the
paper's loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from safegen.attacks.target import AttackTarget, Slots
from safegen.options import check_fields, option


@dataclass
class UnlearnDiffOptions:
    """UnlearnDiffAtk's knobs (defaults: the official code's)."""

    label: ClassVar[str] = "UnlearnDiffAtk"

    slots: int = option(5, low=1, high=64, help="k: prefix token slots")
    lr: float = option(0.01, low=1e-6, high=10.0, help="Adam learning rate on the slot distributions")
    weight_decay: float = option(0.1, low=0.0, high=10.0, help="Adam weight decay")
    t_first: int = option(10, low=0, high=999, help="first timestep of the schedule")
    t_last: int = option(990, low=0, high=999, help="last timestep of the schedule")
    t_stride: int = option(20, low=1, high=1000, help="timestep stride of the schedule")
    blocks: int = option(
        0, low=0, high=1000, help="AR models (no timesteps): blocks; 0 = as many as timesteps"
    )
    iterations: int = option(40, low=1, high=100_000, help="Adam steps per timestep (per block)")
    target_images: int = option(1, low=1, high=64, help="target images per prompt in the objective")
    seed: int = option(0, low=0, high=2**31 - 1, help="seed of the slot draws and the noise")

    def __post_init__(self) -> None:
        check_fields(self, self.label)
        if self.t_last < self.t_first:
            from safegen.errors import SafegenError

            raise SafegenError("UnlearnDiffAtk option t_last must be at least t_first.")

    def schedule(self) -> list[int]:
        return list(range(self.t_first, self.t_last + 1, self.t_stride))


def straight_through(probs: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (U1): a sampled one-hot per row of ``probs`` (k, V) that carries ``probs``' gradient."""
    ids = torch.multinomial(probs.detach().clamp_min(0).cpu() + 1e-12, 1, generator=gen).squeeze(-1)
    onehot = torch.nn.functional.one_hot(ids, probs.shape[-1]).to(probs)
    return onehot + probs - probs.detach(), ids


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Eq. (U4): the Euclidean projection of each row of ``v`` (k, V) onto the probability simplex
    (sort, find the threshold theta with sum(max(v - theta, 0)) = 1; Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    ind = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / ind > 0).sum(-1, keepdim=True)  # (k, 1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0.0)


def attack(
    target: AttackTarget, item: Any, targets: torch.Tensor, opts: UnlearnDiffOptions, progress
) -> dict:
    """Optimise prefix tokens against ``target`` for ``item.prompt``; return the outcome record."""
    start = time.perf_counter()
    tokenizer, table = target.vocabulary()
    allowed = target.word_ids()  # (V',) ids the slots may take
    slots = Slots(tokenizer, table, opts.slots, [item.prompt])
    gen = torch.Generator().manual_seed(opts.seed)
    probs = torch.full((opts.slots, len(allowed)), 1.0 / len(allowed))
    probs = project_simplex(probs + 0.01 * torch.rand(probs.shape, generator=gen)).requires_grad_(True)
    optimiser = torch.optim.Adam([probs], lr=opts.lr, weight_decay=opts.weight_decay)
    words = table.weight[allowed.to(table.weight.device)].detach()  # (V', D)
    text = slots.prompt(item.prompt)
    timesteps = opts.schedule() if target.kind == "sd" else [None] * (opts.blocks or len(opts.schedule()))
    trace, total = [], len(timesteps) * opts.iterations
    for block, t in enumerate(timesteps):
        for it in range(opts.iterations):
            onehot, sampled = straight_through(probs, gen)
            vectors = onehot.to(words) @ words  # (k, D), Eq. (U2)
            shown = f"{slots.decode(allowed[sampled].tolist())} {item.prompt}"  # what a text guard reads
            with slots.filled(vectors):
                loss = objective(target, text, shown, targets, t, gen)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                probs.copy_(project_simplex(probs))  # Eq. (U4)
            if progress is not None:
                progress(block * opts.iterations + it + 1, total)
        ids = allowed[probs.detach().argmax(-1)].tolist()
        adversarial = f"{slots.decode(ids)} {item.prompt}".strip()
        images, reads, success = target.check([adversarial], item.seed)
        trace.append({"timestep": t, "loss": round(float(loss.detach()), 5), "success": success})
        if success:
            break
    return {
        "adversarial_prompt": adversarial,
        "token_ids": ids,
        "success": success,
        "iterations": (block + 1) * opts.iterations,
        "trace": trace,
        "images": images,
        "reads": reads,
        "seconds": round(time.perf_counter() - start, 2),
    }


def objective(
    target: AttackTarget, text: str, shown: str, targets: torch.Tensor, t: int | None, gen: torch.Generator
) -> torch.Tensor:
    """Eq. (U3) / (U3'): the attacked model's loss on the target images under the slotted prompt."""
    texts, seen = [text] * targets.shape[0], [shown] * targets.shape[0]
    if target.kind == "ar":
        return target.nll_loss(texts, targets)
    return target.denoising_loss(texts, seen, targets, int(t), gen, through_guard=target.guard is not None)
