"""The adversarial-training options SC-DPO and VCE share: a few inner attack steps on the prompt
embeddings at every training step (our reading of AdvUnlearn; each recipe's own: ``scdpo_adversarial.py``,
``vce_adversarial.py``). Off unless ``adv_steps`` > 0."""

from __future__ import annotations

from dataclasses import dataclass

from safegen.options import option


@dataclass
class AdversarialOptions:
    adv_steps: int = option(
        0,
        "train",
        low=0,
        high=100,
        help="adversarial training: attack steps on the pairs' prompt embeddings per micro-step (0: off)",
    )
    adv_eps: float = option(
        0.5, "train", low=0.0, high=100.0, help="adversarial training: radius, a share of each position's RMS"
    )
    adv_lr: float = option(
        0.5, "train", low=0.0, high=10.0, help="adversarial training: step size, a share of the radius"
    )
