"""Peak memory of an SC-DPO step against a plain LoRA fine-tuning step on the same model and batch.

    python benchmarks/bench_dpo_memory.py                          # tiny random SD (bench size), CPU
    python benchmarks/bench_dpo_memory.py --model safegen/assets/mini-sd --pairs 8
    python benchmarks/bench_dpo_memory.py --device cuda --model path/to/sd --pairs 4 --json out.json

Both steps take the same batch: B pairs = 2B images (winners and losers), VAE-encoded, one prompt each;
the same LoRA (``scdpo.add_lora``), AdamW and dtype. The plain step fine-tunes on the 2B images with
the denoising loss; the SC-DPO step (``scdpo.dpo_errors`` + ``losses.scdpo_loss``) adds the reference
pass (the same UNet with its adapters disabled, under ``no_grad``). Target: DPO <= 1.3x plain.

Each mode runs in its own fresh process. On CPU the peak is the kernel's high-water mark of resident
memory (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the steps, with glibc's mmap
threshold fixed so freed tensors go back to the system); on CUDA it is ``torch.cuda.max_memory_allocated``.
Reported: the peak above the memory held before the first step (``step MiB``; what the step itself
needs: activations, gradients, optimiser state) and the whole process's peak (``total MiB``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def proc_status(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(args: argparse.Namespace) -> dict:
    """One mode in this process: set up, then measure ``--steps`` optimiser steps."""
    import torch

    from safegen.generator import encode_text
    from safegen.loader import load_model
    from safegen.methods.losses import denoising_error, scdpo_loss
    from safegen.methods.scdpo import add_lora, dpo_errors

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

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = proc_status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = proc_status("VmHWM")
    return {
        "mode": args.mode,
        "before_mib": round(before, 1),
        "total_mib": round(peak, 1),
        "step_mib": round(peak - before, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="SD folder [default: a tiny random SD, --size bench]")
    ap.add_argument("--size", default="bench", choices=["test", "bench"], help="tiny model size")
    ap.add_argument("--pairs", type=int, default=4, help="pairs per step (2x images)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (the peak over them)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per mode (the max is kept)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--mode", choices=["lora", "dpo"], help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from safegen.loader import save_tiny_sd

            args.model = str(save_tiny_sd(Path(tmp) / "tiny", size=args.size))
        env = {
            **os.environ,
            "MALLOC_MMAP_THRESHOLD_": "65536",
            "MALLOC_TRIM_THRESHOLD_": "0",
            "OMP_NUM_THREADS": str(args.threads),
        }
        rows = []
        for repeat in range(args.repeats):
            for mode in ("lora", "dpo") if repeat % 2 == 0 else ("dpo", "lora"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--mode",
                    mode,
                    "--model",
                    args.model,
                    "--pairs",
                    str(args.pairs),
                ]
                cmd += ["--steps", str(args.steps), "--rank", str(args.rank), "--device", args.device]
                cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peak = {m: max(r["step_mib"] for r in rows if r["mode"] == m) for m in ("lora", "dpo")}
    total = {m: max(r["total_mib"] for r in rows if r["mode"] == m) for m in ("lora", "dpo")}
    result = {
        "model": args.model if not args.model.startswith(tempfile.gettempdir()) else f"tiny-{args.size}",
        "device": args.device,
        "pairs": args.pairs,
        "images_per_step": 2 * args.pairs,
        "rank": args.rank,
        "runs": rows,
        "step_mib": peak,
        "total_mib": total,
        "ratio_step": round(peak["dpo"] / peak["lora"], 3),
        "ratio_total": round(total["dpo"] / total["lora"], 3),
        "target": "ratio <= 1.3",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
