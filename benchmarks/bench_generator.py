"""Parity and speed of safegen's denoising loop against diffusers' own StableDiffusionPipeline.__call__.

    python benchmarks/bench_generator.py                  # bundled mini if present, else a tiny random SD
    python benchmarks/bench_generator.py --model path/to/sd-folder --pairs 7 --json out.json

Both run the same prompts, seeds and settings. Runs alternate in pairs (the order flips every pair, after
one warm-up of each) so load from other processes hits both alike. Reported: the largest pixel
difference over all images in 1/255 units (target <= 1) and the median over pairs of the time ratio
ours / diffusers (target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import save_tiny_sd  # noqa: E402

from safegen.bundled import BUNDLED  # noqa: E402
from safegen.generator import generate  # noqa: E402
from safegen.loader import LoadedModel, load_model  # noqa: E402
from safegen.sampling import GenerationConfig  # noqa: E402

PROMPTS = ["a red circle", "a blue square with stripes", "two green triangles", "a yellow star, dotted"]
MAX_DIFF_TARGET = 1  # in 1/255 units
RATIO_TARGET = 1.05


def run_ours(model: LoadedModel, prompts: list[str], n: int, config: GenerationConfig) -> np.ndarray:
    images = generate(model, prompts, n=n, config=config, output_type="np")
    return np.stack([im.image for im in images])


def run_diffusers(model: LoadedModel, prompts: list[str], n: int, config: GenerationConfig) -> np.ndarray:
    generators = [torch.Generator(model.device).manual_seed(seed) for seed in range(len(prompts) * n)]
    out = model.pipe(
        prompts,
        num_images_per_prompt=n,
        num_inference_steps=config.steps,
        guidance_scale=config.cfg,
        negative_prompt=[config.negative_prompt] * len(prompts),
        eta=config.eta,
        height=config.height,
        width=config.width,
        generator=generators,
        output_type="np",
    ).images
    return (out * 255).round().astype(np.uint8)


def timed(fn, *args) -> tuple[float, np.ndarray]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="bundled name, folder or hub id (default: mini, else a tiny random SD)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=2, help="how many of the built-in prompts")
    parser.add_argument("--n", type=int, default=2, help="images per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--pairs", type=int, default=5, help="timed (ours, diffusers) pairs after warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, which = load_model(args.model, device=args.device), f"{args.model} (given)"
        elif BUNDLED["mini"].available:
            model, which = load_model("mini", device=args.device), "mini (bundled weights)"
        else:
            folder = save_tiny_sd(Path(tmp) / "tiny-sd", size="bench")
            model = load_model(str(folder), device=args.device)
            which = "tiny random SD built in a temp dir (size=bench; bundled mini weights are missing)"
        result = bench(model, which, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["pass"] else 1


def bench(model: LoadedModel, which: str, args: argparse.Namespace) -> dict:
    prompts = PROMPTS[: args.prompts]
    n_images = len(prompts) * args.n
    config = GenerationConfig(steps=args.steps, cfg=args.cfg, batch_size=n_images)
    unet_params = sum(p.numel() for p in model.unet.parameters())
    print(f"model: {which}")
    print(
        f"device {model.device}, dtype {model.dtype}, UNet {unet_params / 1e6:.2f} M params, "
        f"scheduler {type(model.scheduler).__name__}, {torch.get_num_threads()} threads"
    )
    print(f"{len(prompts)} prompts x {args.n} images, {args.steps} steps, cfg {args.cfg}, one batch")
    run_ours(model, prompts, args.n, config)  # warm-up
    run_diffusers(model, prompts, args.n, config)
    ratios, t_ours, t_diff, max_diff = [], [], [], 0
    for k in range(args.pairs):
        runs = [("ours", run_ours), ("diffusers", run_diffusers)]
        times, images = {}, {}
        for name, fn in runs if k % 2 == 0 else runs[::-1]:
            times[name], images[name] = timed(fn, model, prompts, args.n, config)
        diff = int(np.abs(images["ours"].astype(np.int16) - images["diffusers"].astype(np.int16)).max())
        max_diff = max(max_diff, diff)
        ratios.append(times["ours"] / times["diffusers"])
        t_ours.append(times["ours"])
        t_diff.append(times["diffusers"])
        print(
            f"pair {k}: ours {times['ours']:.3f} s, diffusers {times['diffusers']:.3f} s, "
            f"ratio {ratios[-1]:.3f}, max diff {diff}/255"
        )
    ratio = statistics.median(ratios)
    ok_diff, ok_ratio = max_diff <= MAX_DIFF_TARGET, ratio <= RATIO_TARGET
    print(
        f"max abs pixel difference: {max_diff}/255 (target <= {MAX_DIFF_TARGET}/255) "
        f"{'PASS' if ok_diff else 'FAIL'}"
    )
    print(
        f"median time ratio ours/diffusers: {ratio:.3f} (target <= {RATIO_TARGET}) "
        f"{'PASS' if ok_ratio else 'FAIL'}"
    )
    print("PASS" if ok_diff and ok_ratio else "FAIL")
    return {
        "model": which,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "settings": {**config.to_dict(), "prompts": prompts, "n": args.n, "pairs": args.pairs},
        "max_abs_diff_255": max_diff,
        "median_ratio": ratio,
        "ratios": ratios,
        "seconds_ours": t_ours,
        "seconds_diffusers": t_diff,
        "targets": {"max_abs_diff_255": MAX_DIFF_TARGET, "median_ratio": RATIO_TARGET, "direction": "lower"},
        "pass": ok_diff and ok_ratio,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
