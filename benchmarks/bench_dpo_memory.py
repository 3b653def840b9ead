"""Peak memory of an SC-DPO step against a plain LoRA fine-tuning step on the same model and batch.

    python benchmarks/bench_dpo_memory.py                          # tiny random SD (bench size), CPU
    python benchmarks/bench_dpo_memory.py --model safegen/assets/mini-sd --pairs 8
    python benchmarks/bench_dpo_memory.py --device cuda --model path/to/sd --pairs 4 --json out.json

Both steps take the same batch: B pairs = 2B images (winners and losers), VAE-encoded, one prompt each;
the same LoRA (``scdpo.add_lora``), AdamW and dtype. The plain step fine-tunes on the 2B images with
the denoising loss; the SC-DPO step (``scdpo.dpo_errors`` + ``losses.scdpo_loss``) adds the reference
pass (the same UNet with its adapters disabled, under ``no_grad``). Target: DPO <= 1.3x plain.

Each mode runs in its own fresh process; how the peak is read is described in
``benchmarks/helpers.py`` (shared with ``bench_vce_memory.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(args: argparse.Namespace) -> dict:
    """One mode in this process: set up, then measure ``--steps`` optimiser steps."""
    import torch
    from helpers import measure

    from safegen.generator import encode_text
    from safegen.loader import load_model
    from safegen.recipes.losses import denoising_error, scdpo_loss
    from safegen.recipes.scdpo import add_lora, dpo_errors

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    model = load_model(args.model, device=args.device, dtype="fp32")
    for part in (model.unet, model.vae, model.text_encoder):
        part.requires_grad_(False)
    params = add_lora(model.unet, args.rank, args.rank, "attn", seed=0)
    opt = torch.optim.AdamW(params, lr=1e-4)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.scheduler.config)
    size = model.unet.config.sample_size * model.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(2 * args.pairs, 3, size, size, generator=gen) * 2 - 1  # (2B, 3, H, W)
    prompts = [f"a red circle number {i}" for i in range(args.pairs)]

    def step() -> None:
        with torch.no_grad():
            latents = (
                model.vae.encode(pixels.to(model.device)).latent_dist.mean * model.vae.config.scaling_factor
            )
            cond = encode_text(model, prompts).repeat(2, 1, 1)
        if args.mode == "dpo":
            err, ref = dpo_errors(model.unet, model.unet, scheduler, latents, cond, gen)
            loss = scdpo_loss(*err.chunk(2), *ref.chunk(2), beta=2500.0, gamma=2.0).loss
        else:  # plain LoRA fine-tuning on the same 2B images, noise and timesteps drawn alike
            noise = torch.randn(latents.shape, generator=gen).to(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
            noisy = scheduler.add_noise(latents, noise, t.to(latents.device))
            pred = model.unet(noisy, t.to(latents.device), cond, return_dict=False)[0]
            loss = denoising_error(pred, noise).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"mode": args.mode, **measure(step, args.steps, cuda)}


def main() -> None:
    from helpers import compare, forwarded, parser, report, run_modes

    ap = parser(__doc__, "SD folder [default: a tiny random SD, --size bench]")
    ap.add_argument("--size", default="bench", choices=["test", "bench"], help="tiny model size")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from helpers import save_tiny_sd

            args.model = str(save_tiny_sd(Path(tmp) / "tiny", size=args.size))
        rows = run_modes(__file__, forwarded(args), args.threads, args.repeats)
    result = {
        "model": args.model if not args.model.startswith(tempfile.gettempdir()) else f"tiny-{args.size}",
        "device": args.device,
        "pairs": args.pairs,
        "images_per_step": 2 * args.pairs,
        "rank": args.rank,
        **compare(rows),
        "target": "ratio <= 1.3",
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
