"""Peak memory of training steps, each mode in its own fresh process; shared by the memory benchmarks.

``benchmarks/bench_dpo_memory.py`` (SC-DPO vs LoRA on a UNet) and ``benchmarks/bench_vce_memory.py`` (VCE
vs LoRA NLL on an AR GPT) are each one script that runs itself once per mode (``--mode lora|dpo``) and
compares the peaks. On CPU the peak is the kernel's high-water mark of resident memory (``VmHWM``, reset
through ``/proc/self/clear_refs`` just before the steps, with glibc's mmap threshold fixed so freed tensors
go back to the system); on CUDA it is ``torch.cuda.max_memory_allocated``. Reported: the peak above the
memory held before the first step (``step_mib``: what the step itself needs, activations, gradients,
optimiser state) and the whole process's peak (``total_mib``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MODES = ("lora", "dpo")


def parser(doc: str, model_help: str) -> argparse.ArgumentParser:
    """The options both memory benchmarks take (a script adds its own)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help=model_help)
    ap.add_argument("--pairs", type=int, default=4, help="pairs per step (2x samples)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (the peak over them)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per mode (the max is kept)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # the child process
    return ap


def forwarded(args: argparse.Namespace) -> list[str]:
    """The parent's options that each child process needs."""
    out = ["--model", args.model, "--pairs", str(args.pairs), "--steps", str(args.steps)]
    return out + ["--rank", str(args.rank), "--device", args.device, "--threads", str(args.threads)]


def report(result: dict[str, Any], path: Path | None) -> None:
    print(json.dumps(result, indent=2))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def proc_status(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure(step: Callable[[], None], steps: int, cuda: bool) -> dict[str, float]:
    """Run ``step`` ``steps`` times; the peak above the memory held before, and the process's peak."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = proc_status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = proc_status("VmHWM")
    return {"before_mib": round(before, 1), "total_mib": round(peak, 1), "step_mib": round(peak - before, 1)}


def run_modes(script: str, child_args: Sequence[str], threads: int, repeats: int) -> list[dict[str, Any]]:
    """Run ``script --mode M *child_args`` in a fresh process per mode and repeat (order alternated).

    The child prints its :func:`measure` row (with ``mode``) as the last line of its stdout.
    """
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
        "OMP_NUM_THREADS": str(threads),
    }
    rows = []
    for repeat in range(repeats):
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            cmd = [sys.executable, script, "--mode", mode, *child_args]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest peak per mode over the repeats, and the DPO / LoRA ratios."""
    step = {m: max(r["step_mib"] for r in rows if r["mode"] == m) for m in MODES}
    total = {m: max(r["total_mib"] for r in rows if r["mode"] == m) for m in MODES}
    return {
        "runs": rows,
        "step_mib": step,
        "total_mib": total,
        "ratio_step": round(step["dpo"] / step["lora"], 3),
        "ratio_total": round(total["dpo"] / total["lora"], 3),
    }
