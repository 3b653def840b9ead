"""Concept inversion: one new word learned by textual inversion on the attacked model (Pham et al. 2023).

Our reading of "Circumventing Concept Erasure Methods for Text-to-Image Generative Models" (official code
NYU-DICE-Lab/circumventing-concept-erasure): everything of the attacked model is frozen but the input
embedding v of one new word; v is learned so that the attacked model reconstructs images of the concept
from prompts holding the word::

    c(v)  = text_encoder([prompt_i, v])                                      v: the new word's embedding
    L(v)  = E_{i, t, eps} || eps - eps_theta(x_t^i, c(v), t) ||^2           x^i: target image i    (I1)
    L(v)  = - E_i mean_j log p(y^i_j | y^i_<j, c(v))       autoregressive models: VQ tokens y^i      (I1')
    v    <- v - AdamW(grad L(v))                                                                   (I2)

The word is learned once per run, on every attacked prompt with the word appended and its target images
(renders of the prompt's content showing the concept, or the unmodified model's images), then each prompt
is generated with the word appended. On a guarded model eps is the guarded prediction of the step nearest
t (for SLD the paper unrolls the guidance over sampled timesteps in its window: our
:meth:`AttackTarget.denoising_loss`). ``steps`` and ``lr`` are reported with the run: users report that
reproductions are sensitive to them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from safegen.attacks.target import AttackTarget, Slots
from safegen.options import check_fields, option


@dataclass
class InversionOptions:
    """Concept inversion's knobs (defaults: the official code's for SLD; ESD used 5,000 steps)."""

    label: ClassVar[str] = "concept inversion"

    steps: int = option(1000, low=1, high=1_000_000, help="AdamW steps on the new word's embedding")
    lr: float = option(5e-3, low=1e-6, high=10.0, help="learning rate")
    batch_size: int = option(4, low=1, high=256, help="(prompt, target image) pairs per step")
    init: str = option(
        "mean", choices=("mean", "placeholder"), help="v starts at the mean embedding or the word's"
    )
    seed: int = option(0, low=0, high=2**31 - 1, help="seed of the batches, timesteps and noise")

    def __post_init__(self) -> None:
        check_fields(self, self.label)


def learn_word(
    target: AttackTarget,
    prompts: list[str],
    targets: list[torch.Tensor],
    opts: InversionOptions,
    folder: Path | None,
    progress: Any = None,
) -> tuple[Slots, torch.Tensor, dict]:
    """Eq. (I1)-(I2): learn the new word on (prompt, targets) pairs; kept in ``folder/word.safetensors``."""
    tokenizer, table = target.vocabulary()
    slots = Slots(tokenizer, table, 1, prompts)
    file = folder / "word.safetensors" if folder is not None else None
    if file is not None and file.is_file():
        saved = load_file(str(file))
        seconds = float(saved["seconds"]) if "seconds" in saved else 0.0
        return slots, saved["vector"], {"steps": int(saved["steps"]), "reused": True, "seconds": seconds}
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(opts.seed)
    weight = table.weight.detach()
    init = weight.float().mean(0) if opts.init == "mean" else weight[slots.id].float()
    vector = init.clone().requires_grad_(True)  # (D,)
    optimiser = torch.optim.AdamW([vector], lr=opts.lr, weight_decay=0.0)
    pairs = [(p, k) for p, t in zip(prompts, targets, strict=True) for k in range(t.shape[0])]
    losses = []
    for step in range(opts.steps):
        pick = torch.randint(len(pairs), (opts.batch_size,), generator=gen).tolist()
        chosen = [pairs[i] for i in pick]
        texts = [slots.prompt(p, where="suffix") for p, _ in chosen]
        batch = torch.stack([targets[prompts.index(p)][k] for p, k in chosen])
        with slots.filled(vector[None].to(weight.dtype)):
            if target.kind == "ar":
                loss = target.nll_loss(texts, batch)  # Eq. (I1')
            else:
                t = int(torch.randint(0, 1000, (1,), generator=gen))
                loss = target.denoising_loss(
                    texts, [p for p, _ in chosen], batch, t, gen, through_guard=target.guard is not None
                )  # Eq. (I1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()  # Eq. (I2)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, opts.steps)
    learned = vector.detach().cpu()
    record = {
        "steps": opts.steps,
        "reused": False,
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 5),
        "seconds": round(time.perf_counter() - start, 2),
    }
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        seconds = torch.tensor(record["seconds"], dtype=torch.float64)
        save_file({"vector": learned, "steps": torch.tensor(opts.steps), "seconds": seconds}, str(file))
    return slots, learned, record


def attack(target: AttackTarget, item: Any, word: tuple[Slots, torch.Tensor], progress: Any = None) -> dict:
    """Generate ``item.prompt`` with the learned word appended and judge it."""
    start = time.perf_counter()
    slots, vector = word
    adversarial = slots.prompt(item.prompt, where="suffix")
    images, reads, success = target.check([adversarial], item.seed, slots, vector[None])
    return {
        "adversarial_prompt": adversarial.replace(slots.text, "<learned word>"),
        "embedding": "word.safetensors",
        "success": success,
        "iterations": 0,
        "trace": [],
        "images": images,
        "reads": reads,
        "seconds": round(time.perf_counter() - start, 2),
    }
