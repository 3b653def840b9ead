"""Every headline command with ``--concept nudity`` and real prompts, on tiny random models of the real
classes saved to disk (an SD-1.x diffusers folder, an official-layout LlamaGen folder, a Janus folder).

    python benchmarks/real_data_paths.py                       # writes benchmarks/results/real_data_paths.md
    python benchmarks/real_data_paths.py --work /tmp/rdp       # keep the run folders

Prompts: a 64-prompt subset of I2P's ``sexual`` category (``../shared/data/i2p_4703.csv``, the first 64
rows, its own columns) as ``--prompts``; clean prompts: 64 I2P prompts outside ``sexual`` whose
``nudity_percentage`` is 0, as a text file. Each command runs as a user runs it (``python -m safegen``,
one process each). For each run the script prints: prompts read / used / held out / dropped, the safe
counterparts (keyword rewrites, negative conditions), pairs built, harmful-clean pairs that are identical
(same text and no negative condition: must be 0), and whether the output loads outside safegen's
training code (plain diffusers ``load_lora_weights`` for SC-DPO; safegen's AR loader with the adapter for
VCE) and generates.

The models are random: what is measured is the data path, not erasure. Content labels (open_nsfw) find
no harmful image among a random model's samples, so SC-DPO's default cost labels are refused there with a
one-line error (shown), and the runs that follow use ``cost_labels=prompt``, said in their manifest.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from helpers import ROOT, save_random_llamagen, save_tiny_janus, save_tiny_sd, write_markdown
from tiny_models import save_tiny_clip

I2P = ROOT.parent / "shared" / "data" / "i2p_4703.csv"
RESULTS = ROOT / "benchmarks" / "results" / "real_data_paths.md"

SCDPO = [
    "n_harmful_prompts=48",
    "n_clean_prompts=48",
    "cost_images=32",
    "cost_steps=20",
    "samples_per_prompt=2",
    "rewrite_samples=2",
    "gen_steps=2",
    "gen_batch_size=16",
    "require_safer_winner=false",
    "batch_size=2",
    "check_every=1",
    "check_prompts=4",
    "lora_rank=2",
]
VCE = [
    "n_harmful_prompts=64",
    "n_clean_prompts=32",
    "seeds_per_prompt=1",
    "batch_size=2",
    "retain_batch_size=2",
]


def write_prompts(work: Path) -> tuple[Path, Path]:
    """The 64-prompt sexual subset (I2P's own columns) and 64 clean prompts (a text file)."""
    with I2P.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames
    sexual = [r for r in rows if "sexual" in r["categories"]][:64]
    clean = [
        r["prompt"].replace("\n", " ").strip()
        for r in rows
        if "sexual" not in r["categories"] and float(r["nudity_percentage"] or 0) == 0
    ][:64]
    subset, clean_file = work / "i2p_sexual_64.csv", work / "clean_64.txt"
    with subset.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(sexual)
    clean_file.write_text("\n".join(clean) + "\n", encoding="utf-8")
    return subset, clean_file


def safegen(*args: str) -> tuple[int, str, float]:
    """Run one command as a user does; return its exit code, its last stderr line and seconds."""
    start = time.time()
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "safegen", *args], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, (lines[-1] if lines else ""), round(time.time() - start, 1)


def sets(options: list[str]) -> list[str]:
    return [part for o in options for part in ("--set", o)]


def scdpo_identical(out: Path) -> int:
    """SC-DPO: clean prompts equal to a harmful one, plus counterpart candidates that are the harmful prompt
    unchanged (same text, no negative prompt), among the pairs built."""
    rows = [json.loads(line) for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines() if line]
    unchanged = sum(
        1
        for r in rows
        for side in ("winner", "loser")
        if r[f"{side}_counterpart"] and r[f"{side}_prompt"] == r["prompt"] and not r[f"{side}_negative"]
    )
    clean = {r["prompt"] for r in rows if not r["harmful"]}
    return unchanged + len(clean & {r["prompt"] for r in rows if r["harmful"]})


def loads_in_diffusers(model: Path, out: Path) -> str:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(out)
    image = pipe("a photo", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    return f"yes ({image.size[0]} px image)"


def loads_in_ar_loader(model: Path, out: Path) -> str:
    from safegen.adapters import attach_adapter
    from safegen.generator import generate
    from safegen.loader import load_model

    loaded = load_model(str(model), device="cpu")
    attach_adapter(loaded, str(out))
    image = generate(loaded, ["a photo"], n=1)[0].image
    return f"yes ({image.size[0]} px image)"


def row(name: str, code: int, last: str, seconds: float, out: Path | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"run": name, "exit": code, "seconds": seconds, **extra}
    if code != 0:
        record["message"] = last
        return record
    if out is not None and (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        plan = manifest.get("prompts", {})
        pairs = manifest.get("stages", {}).get("pairs", {})
        record |= {
            "read": plan.get("read"),
            "used": plan.get("used"),
            "held_out": plan.get("held_out"),
            "dropped": plan.get("dropped"),
            "counterparts": plan.get("counterparts"),
            "clean": plan.get("clean", {}).get("used"),
            "pairs": pairs.get("n_pairs"),
            "labels": manifest.get("stages", {}).get("cost", {}).get("labels", "-"),
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for models and runs (default: temp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="real-data-paths-"))
    work.mkdir(parents=True, exist_ok=True)
    subset, clean = write_prompts(work)
    sd, clip = save_tiny_sd(work / "sd"), save_tiny_clip(work / "clip")
    llamagen, janus = save_random_llamagen(work / "llamagen"), save_tiny_janus(work / "janus")
    prompts = ["--prompts", str(subset), "--prompt-set", "i2p", "--prompt-category", "sexual"]
    prompts += ["--clean-prompts", str(clean), "--concept", "nudity", "--device", "cpu"]
    rows: list[dict[str, Any]] = []

    base = ["erase", "--method", "scdpo", "--model", str(sd), *prompts, "--steps", "2"]
    scdpo = [*base, *sets([*SCDPO, f"encoder={clip}"])]
    out = work / "scdpo-opennsfw"
    rows.append(row("erase scdpo, cost_labels=auto (open_nsfw)", *safegen(*scdpo, "--out", str(out)), out))
    rows[-1]["left_behind"] = out.exists()
    for name, extra in (("fp32", []), ("bf16", ["--set", "mixed_precision=bf16"])):
        out = work / f"scdpo-{name}"
        code, last, sec = safegen(*scdpo, "--set", "cost_labels=prompt", *extra, "--out", str(out))
        rows.append(row(f"erase scdpo {name}, cost_labels=prompt", code, last, sec, out))
        if code == 0:
            rows[-1] |= {"identical": scdpo_identical(out), "loads": loads_in_diffusers(sd, out)}
    for model_name, model in (("llamagen", llamagen), ("janus", janus)):
        for name, extra in (("fp32", []), ("bf16", ["--set", "mixed_precision=bf16"])):
            out = work / f"vce-{model_name}-{name}"
            vce = ["erase", "--method", "vce", "--model", str(model), *prompts, "--steps", "2", *sets(VCE)]
            code, last, sec = safegen(*vce, *extra, "--out", str(out))
            rows.append(row(f"erase vce {model_name} {name}", code, last, sec, out))
            if code == 0:
                pairs = json.loads((out / "pairs" / "manifest.json").read_text())
                rows[-1] |= {
                    "identical": pairs["unchanged_safe_side"],
                    "same_tokens": pairs["identical_pairs"],
                    "loads": loads_in_ar_loader(model, out),
                }
    first = [r["prompt"] for r in csv.DictReader(subset.open(encoding="utf-8"))][0]
    for guard in ("sp", "dlr"):
        out = work / f"generate-{guard}"
        code, last, sec = safegen(
            "generate", first, "--model", str(sd), "--guard", guard, "--concept", "nudity", "--out", str(out)
        )
        rows.append(
            row(f"generate --guard {guard}", code, last, sec, None) | {"images": len(list(out.glob("*.png")))}
        )
    i2p = [
        "bench",
        "i2p",
        "--prompts",
        str(subset),
        "--category",
        "sexual",
        "--limit",
        "4",
        "--model",
        str(sd),
    ]
    i2p += ["--images-per-prompt", "1", "--steps", "2", "--device", "cpu"]
    code, last, sec = safegen(*i2p, "--guard", "sp", "--concept", "nudity", "--out", str(work / "i2p-sp"))
    rows.append(row("bench i2p --guard sp", code, last, sec, None))
    adapter = work / "scdpo-fp32"
    code, last, sec = safegen(*i2p, "--adapter", str(adapter), "--out", str(work / "i2p-adapter"))
    rows.append(row("bench i2p --adapter (SC-DPO run)", code, last, sec, None))
    write(rows, work)


def write(rows: list[dict[str, Any]], work: Path) -> None:
    keys = [
        "run",
        "exit",
        "read",
        "used",
        "held_out",
        "dropped",
        "counterparts",
        "clean",
        "pairs",
        "identical",
    ]
    keys += ["same_tokens", "labels", "loads", "left_behind", "images", "seconds", "message"]
    keys = [k for k in keys if any(k in r for r in rows)]
    intro = (
        "`python benchmarks/real_data_paths.py` (tiny random SD-1.x, LlamaGen and Janus folders; 64 I2P "
        "`sexual` prompts; 64 clean I2P prompts). `identical`: harmful-clean pairs whose safe side is the "
        "harmful prompt unchanged (must be 0); `same_tokens`: VCE pairs whose two token sequences are equal."
    )
    cell = lambda v: json.dumps(v) if isinstance(v, dict) else str(v)  # noqa: E731
    cells = [[cell(r.get(k, "")) for k in keys] for r in rows]
    title = "Real data paths: `--concept nudity` with I2P prompts on tiny random models"
    print(write_markdown(RESULTS, title, intro, keys, cells))
    print(f"runs in {work}")


if __name__ == "__main__":
    main()
