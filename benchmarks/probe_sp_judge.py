"""How well SP-Guard's harmfulness judge separates prompts with a concept from prompts without it.

    python benchmarks/probe_sp_judge.py circle striped red        # bundled mini model, about a minute

For every second grid prompt with the concept and every fourth without it (seed = index), plain CFG
(7.5) runs 6 of 20 steps; at each step the UNet is also run on the empty prompt, the concept's unsafe
text and its safe anchor, and two judges are read per image:

- ``unsafe``:   h = cos(eps_c - eps_u, eps_s - eps_u)   (SP-Guard's Eq. (b), what the guard uses)
- ``contrast``: h = cos(eps_c - eps_u, eps_s - eps_a)   (the guided direction of ``direction=contrast``)

Printed per step: the AUROC of h (prompts with the concept vs without), the same for h averaged over
steps 0..i (``judge_steps = i + 1``), and the 10 % quantile of h with the concept / the 90 % quantile
without it, which bound where ``tau`` can sit.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(h_pos > h_neg) + 0.5 P(tie): the Mann-Whitney AUROC."""
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def cosine(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1).numpy()


def probe(concept_name: str, model, steps: int = 20, judged: int = 6, cfg: float = 7.5) -> None:
    from safegen.bench.mini import concept_axis, grid_prompts
    from safegen.concepts import get_concept
    from safegen.generator import encode_text, fresh_scheduler, initial_noise
    from safegen.mini.world import World

    world, concept = World.load(), get_concept(concept_name)
    axis, value = concept_axis(concept_name, world)
    grid = grid_prompts(world)
    pos = [p.prompt for p in grid if p.thing.value(axis) == value][::2]
    neg = [p.prompt for p in grid if p.thing.value(axis) != value][::4]
    prompts, n_pos = pos + neg, len(pos)
    scheduler = fresh_scheduler(model, steps)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    size = (model.unet.config.sample_size * model.vae_scale_factor,) * 2
    latents = initial_noise(model, gens, size, torch.float32) * scheduler.init_noise_sigma
    with torch.no_grad():
        texts = [[""] * len(prompts), prompts, [concept.unsafe_text] * len(prompts)]
        embeds = [encode_text(model, t) for t in [*texts, [concept.safe_text] * len(prompts)]]
    print(
        f"{concept_name}: unsafe '{concept.unsafe_text}', anchor '{concept.safe_text}', {n_pos} + {len(neg)}"
    )
    history: dict[str, list[np.ndarray]] = {}
    for i, t in enumerate(scheduler.timesteps[:judged]):
        x = scheduler.scale_model_input(latents, t)
        with torch.no_grad():
            eu, ec, es, ea = (model.unet(x, t, encoder_hidden_states=e, return_dict=False)[0] for e in embeds)
        for name, h in {"unsafe": cosine(ec - eu, es - eu), "contrast": cosine(ec - eu, es - ea)}.items():
            history.setdefault(name, []).append(h)
            mean = np.mean(history[name], axis=0)
            print(
                f"  step {i} {name:8s} AUROC {auroc(h[:n_pos], h[n_pos:]):.3f}"
                f" (mean of steps 0..{i}: {auroc(mean[:n_pos], mean[n_pos:]):.3f})"
                f"  with: q10 {np.quantile(h[:n_pos], 0.1):+.3f}"
                f"  without: q90 {np.quantile(h[n_pos:], 0.9):+.3f}"
            )
        latents = scheduler.step(eu + cfg * (ec - eu), t, latents, return_dict=False)[0]


def main() -> None:
    from safegen.loader import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = load_model("mini", device="cpu")
    for name in sys.argv[1:] or ["red", "circle", "striped"]:
        probe(name, model)


if __name__ == "__main__":
    main()
