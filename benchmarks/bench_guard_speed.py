"""Speed of the guards against plain CFG: paired time ratios on the same prompts and seeds.

    python benchmarks/bench_guard_speed.py                 # bundled mini if present, else a tiny random SD
    python benchmarks/bench_guard_speed.py --model path/to/sd --concept nudity --pairs 7 --json out.json
    python benchmarks/bench_guard_speed.py --steps 4 --pairs 1                    # a quick check

Rows (each timed against our plain CFG on the same prompts and seeds, one batch):

- ``sp benign``: SP-Guard on prompts without the concept (the concept prompts rewritten with its safe text);
  target <= 1.05x (the extra branch is dropped once the prompts are judged benign).
- ``sp concept``: SP-Guard on prompts with the concept (the concept's examples); target <= 1.5x.
- ``dlr``: dual latent reconstruction on the concept prompts; target <= 1.6x (``dlr benign``: judged benign).
- ``sld`` (ours, medium) and ``sld diffusers``: diffusers' own ``StableDiffusionPipelineSafe`` (medium), with
  the largest pixel difference between the two; ``neg``: the negative-prompt baseline.

``--judge-direction unsafe`` times sp and dlr judging with the paper's statistic instead of their default
(one branch fewer on the judged steps). ``--force-judgement`` (on by default) times each judged guard's
two paths, whatever its judge would say about these prompts: every prompt judged benign (tau,
presence_tau and text_tau 0.99) and every prompt judged harmful (tau -1); ``dlr benign`` is dual-latent
reconstruction's gate finding nothing. Runs alternate in pairs, the order flipping every pair after one
warm-up of each; the median ratio over pairs is reported.
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
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import save_tiny_sd  # noqa: E402

from safegen.bundled import BUNDLED  # noqa: E402
from safegen.concepts import get_concept, rewrite  # noqa: E402
from safegen.generator import generate  # noqa: E402
from safegen.guards import guard_for_model  # noqa: E402
from safegen.loader import LoadedModel, load_model  # noqa: E402
from safegen.sampling import GenerationConfig  # noqa: E402

TARGETS = {"sp benign": 1.05, "sp concept": 1.5, "dlr": 1.6}


def ours(model: LoadedModel, prompts: list[str], config: GenerationConfig, guard=None) -> Callable:
    def fn() -> tuple[np.ndarray, list[dict]]:
        images = generate(model, prompts, config=config, guard=guard, output_type="np")
        return np.stack([im.image for im in images]), [im.info for im in images]

    return fn


def diffusers_sld(model: LoadedModel, prompts: list[str], config: GenerationConfig, text: str) -> Callable:
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig, StableDiffusionPipelineSafe

    parts = {k: getattr(model.pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipelineSafe(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.safety_concept = text

    def fn() -> tuple[np.ndarray, list[dict]]:
        generators = [torch.Generator(model.device).manual_seed(s) for s in range(len(prompts))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = pipe(
                prompts,
                num_inference_steps=config.steps,
                guidance_scale=config.cfg,
                generator=generators,
                output_type="np",
                **SafetyConfig.MEDIUM,
            ).images
        return (out * 255).round().astype(np.uint8), [{} for _ in prompts]

    return fn


def timed(fn: Callable) -> tuple[float, tuple]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def paired(plain: Callable, guarded: Callable, pairs: int) -> dict:
    """Median of t_guarded / t_plain over ``pairs`` alternating pairs, after one warm-up of each."""
    plain()
    _, (images, infos) = timed(guarded)
    ratios, seconds = [], []
    for k in range(pairs):
        runs = [("plain", plain), ("guarded", guarded)]
        times = {}
        for name, fn in runs if k % 2 == 0 else runs[::-1]:
            times[name], _ = timed(fn)
        ratios.append(times["guarded"] / times["plain"])
        seconds.append((times["plain"], times["guarded"]))
    return {
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "seconds": seconds,
        "images": images,
        "infos": infos,
    }


def bench(model: LoadedModel, which: str, args: argparse.Namespace, random_model: bool) -> dict:
    concept = get_concept(args.concept)
    concept_prompts = list(concept.examples[: args.prompts]) or [concept.unsafe_text]
    benign_prompts = [rewrite(p, concept, include_synonyms=True) for p in concept_prompts]
    config = GenerationConfig(steps=args.steps, cfg=args.cfg, batch_size=len(concept_prompts))
    force = args.force_judgement if args.force_judgement is not None else True
    benign = {"tau": 0.99, "h_sat": 1.0, "text_tau": 0.99, "text_h_sat": 1.0} if force else {}
    benign |= {"presence_tau": 0.99, "presence_h_sat": 1.0} if force else {}
    harmful = {"tau": -1.0, "h_sat": -0.99, "text_tau": 0.0, "text_h_sat": 0.01} if force else {}
    judged = ("tau", "h_sat", "presence_tau", "presence_h_sat")  # dlr's gate has the noise judge only
    if args.judge_direction:  # the judged statistic of sp and dlr (default: the guards')
        benign, harmful = ({**o, "judge_direction": args.judge_direction} for o in (benign, harmful))
        judged += ("judge_direction",)

    def guard(name: str, **options) -> object:
        return guard_for_model(
            name, concept, options, None if random_model else args.model or "mini"
        )  # the bundled calibration, if any

    rows = {
        "sp benign": (benign_prompts, guard("sp", **benign)),
        "sp concept": (concept_prompts, guard("sp", **harmful)),
        "dlr benign": (benign_prompts, guard("dlr", **{k: benign[k] for k in judged if k in benign})),
        "dlr": (concept_prompts, guard("dlr", **{k: harmful[k] for k in judged if k in harmful})),
        "sld": (concept_prompts, guard("sld")),
        "sld diffusers": (concept_prompts, None),
        "neg": (concept_prompts, guard("neg")),
    }
    print(f"model: {which}")
    print(
        f"device {model.device}, {torch.get_num_threads()} threads, {len(concept_prompts)} prompts, "
        f"{args.steps} steps, cfg {args.cfg}, concept {concept.name}, forced SP judgement: {force}"
    )
    results: dict[str, dict] = {}
    for name, (prompts, guard_obj) in rows.items():
        if args.only and name not in args.only:
            continue
        if guard_obj is None:
            fn = diffusers_sld(model, prompts, config, concept.unsafe_text)
        else:
            fn = ours(model, prompts, config, guard_obj)
        result = paired(ours(model, prompts, config), fn, args.pairs)
        results[name] = result
        extra = ""
        if name.startswith("sp"):
            benign = sum(bool(i.get("judged_benign")) for i in result["infos"])
            extra = f", judged benign {benign}/{len(result['infos'])}"
        target = TARGETS.get(name)
        verdict = (
            ""
            if target is None
            else f" (target <= {target}: {'PASS' if result['ratio'] <= target else 'FAIL'})"
        )
        print(f"{name:14s} ratio {result['ratio']:.3f}{verdict}{extra}")
    if "sld" in results and "sld diffusers" in results:
        diff = np.abs(results["sld"]["images"].astype(int) - results["sld diffusers"]["images"].astype(int))
        print(f"sld ours vs diffusers: max pixel difference {int(diff.max())}/255 (target <= 1)")
        results["sld diffusers"]["max_diff_vs_ours_255"] = int(diff.max())
    rows_out = {}
    for name, r in results.items():
        rows_out[name] = {k: v for k, v in r.items() if k not in ("images", "infos")}
        if name.startswith("sp"):
            rows_out[name]["judged_benign"] = [bool(i.get("judged_benign")) for i in r["infos"]]
    settings = {**config.to_dict(), "prompts": len(concept_prompts), "pairs": args.pairs}
    return {
        "model": which,
        "device": str(model.device),
        "settings": {**settings, "concept": concept.name},
        "forced_sp_judgement": force,
        "rows": rows_out,
        "targets": {**TARGETS, "direction": "lower"},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="bundled name, folder or hub id (default: mini, else a tiny random SD)"
    )
    parser.add_argument("--concept", default=None, help="concept (default: red on mini/tiny, else nudity)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=3, help="how many of the concept's example prompts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--pairs", type=int, default=5, help="timed (plain, guard) pairs after warm-up")
    parser.add_argument("--only", nargs="*", help="only these rows (e.g. 'sp benign' dlr)")
    parser.add_argument(
        "--force-judgement",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time each guard's two paths: every prompt judged benign / harmful (default: on)",
    )
    parser.add_argument("--judge-direction", help="sp and dlr judge this statistic (default: theirs)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        random_model = False
        if args.model:
            model, which = load_model(args.model, device=args.device), f"{args.model} (given)"
        elif BUNDLED["mini"].available:
            model, which = load_model("mini", device=args.device), "mini (bundled weights)"
        else:
            folder = save_tiny_sd(Path(tmp) / "tiny-sd", size="bench")
            model, random_model = load_model(str(folder), device=args.device), True
            which = "tiny random SD built in a temp dir (size=bench; bundled mini weights are missing)"
        if args.concept is None:
            args.concept = "red" if random_model or args.model in (None, "mini") else "nudity"
        result = bench(model, which, args, random_model)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
