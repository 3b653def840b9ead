"""``safegen bench i2p`` targets: its own overhead, resume after SIGKILL, and a 2-process run.

    python benchmarks/bench_i2p_overhead.py                          # overhead on 200 I2P rows
    python benchmarks/bench_i2p_overhead.py --resume-check --processes-check --json out.json

Uses the bundled ``mini`` model when it exists, else a tiny random SD of the ``bench`` size (64 px,
nearer the mini model's cost), and says which. Prompts: the first ``--rows`` rows of
``../shared/data/i2p_4703.csv``, one image each, each row's seed and guidance.

- Overhead: wall time of the whole ``run_i2p`` call (prompt loading, model loading, run folder, PNGs,
  samples, EMI bootstrap) minus the time inside generation and classification, as a share of the call.
  Target <= 10 %. Reported with and without the one-off model loading.
- Resume (``--resume-check``, on ``--check-rows`` rows): ``safegen bench i2p`` in a subprocess, SIGKILLed
  once a third of the images are recorded, then the same command with ``--resume``; its results.json
  and samples.jsonl must equal the uninterrupted run's byte for byte.
- Processes (``--processes-check``): ``accelerate launch --multi_gpu --num_processes 2 -m safegen bench
  i2p`` (``--multi_gpu`` makes accelerate start several processes on a CPU-only machine); the merged run
  folder must equal the single-process one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from helpers import save_tiny_sd  # noqa: E402

from safegen.bench.evaluate import Settings  # noqa: E402
from safegen.bench.i2p import run_i2p  # noqa: E402
from safegen.bundled import BUNDLED  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / ".." / "shared" / "data" / "i2p_4703.csv"
TARGET = 0.10


def pick_model(work: Path) -> tuple[str, str]:
    if BUNDLED["mini"].available:
        return "mini", "bundled mini model"
    return str(
        save_tiny_sd(work / "tiny-bench", seed=0, size="bench")
    ), "tiny random SD, bench size (no mini yet)"


def cli_args(model: str, args: argparse.Namespace, out: Path) -> list[str]:
    return [
        "bench", "i2p", "--prompts", str(PROMPTS), "--limit", str(args.check_rows),
        "--images-per-prompt", "1", "--model", model, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def same(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ("results.json", "samples.jsonl"))


def run(model: str, args: argparse.Namespace, rows: int, out: Path) -> None:
    settings = Settings(model=model, steps=args.steps, device="cpu", batch_size=args.batch_size)
    run_i2p(prompts=PROMPTS, limit=rows, images_per_prompt=1, settings=settings, out=out)


def measure_overhead(model: str, args: argparse.Namespace, out: Path) -> dict:
    start = time.perf_counter()
    run(model, args, args.rows, out)
    total = time.perf_counter() - start
    t = json.loads((out / "timing.json").read_text())
    work = t["generate_s"] + t["classify_s"]
    return {
        "wall_s": round(total, 2),
        "generate_s": round(t["generate_s"], 2),
        "classify_s": round(t["classify_s"], 2),
        "write_s": round(t["write_s"], 3),
        "load_s": round(t["load_s"], 2),
        "overhead": round((total - work) / total, 4),
        "overhead_without_model_load": round((total - t["load_s"] - work) / (total - t["load_s"]), 4),
    }


def resume_check(model: str, args: argparse.Namespace, reference: Path, out: Path, env: dict) -> dict:
    command = [sys.executable, "-m", "safegen", *cli_args(model, args, out)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples, lines = out / "samples.jsonl", 0
    while proc.poll() is None:
        lines = samples.read_bytes().count(b"\n") if samples.is_file() else 0
        if lines >= args.check_rows // 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed_at = samples.read_bytes().count(b"\n")
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed: {resumed.stderr[-2000:]}")
    return {"killed_after_images": killed_at, "identical": same(reference, out)}


def processes_check(model: str, args: argparse.Namespace, reference: Path, out: Path, env: dict) -> dict:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    start = time.perf_counter()
    proc = subprocess.run(
        [*launch, "-m", "safegen", *cli_args(model, args, out)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"2-process run failed: {proc.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "processes": manifest["processes"],
        "wall_s": round(time.perf_counter() - start, 1),
        "identical": same(reference, out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--check-rows", type=int, default=40, help="rows of the resume and process checks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--resume-check", action="store_true")
    parser.add_argument("--processes-check", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, which = pick_model(work)
        report = {
            "model": which,
            "rows": args.rows,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
            "overhead": measure_overhead(model, args, work / "reference"),
        }
        report["overhead_target_met"] = report["overhead"]["overhead"] <= TARGET
        if args.resume_check or args.processes_check:
            report["check_rows"] = args.check_rows
            run(model, args, args.check_rows, work / "check-reference")  # uninterrupted, one process
        if args.resume_check:
            report["resume"] = resume_check(model, args, work / "check-reference", work / "killed", env)
        if args.processes_check:
            report["processes"] = processes_check(model, args, work / "check-reference", work / "two", env)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
