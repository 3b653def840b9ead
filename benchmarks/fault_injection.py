"""Faults against every long-running verb: is any run lost, any record wrong, any result changed?

    python benchmarks/fault_injection.py                 # writes benchmarks/results/fault_injection.md
    python benchmarks/fault_injection.py --work /tmp/fi  # keep the run folders

Each scenario runs a command as a user does (``python -m safegen``, tiny random models saved to disk), hurts
it, recovers the way the tool says to (``--resume``), and compares the outcome with an uninterrupted run of
the same command: ``results.json`` without its timings (benchmarks, attack), or the trained LoRA tensors
and the recorded step count (erasure). Scenarios:

- ``sigkill``: SIGKILL once the run has written part of its work (samples, a checkpoint), then
  ``--resume``: for ``bench mini``, ``bench i2p``, ``attack``, ``erase scdpo`` and ``erase vce``;
- ``torn``: as ``sigkill``, and the last line of the run's JSONL cut in half before ``--resume``;
- ``two writers``: two identical runs started together into one new folder (one must run, the other be
  refused with one line, and the run must finish unchanged);
- ``disk full``: writing an image, or a checkpoint, fails with ENOSPC part-way (injected in the run's own
  process by :func:`inject`), then the command the error advises (``--resume``, or the same again).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import ROOT, save_random_llamagen, save_tiny_sd, write_markdown

RESULTS = ROOT / "benchmarks" / "results" / "fault_injection.md"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TIMING_KEYS = ("seconds", "time", "_s")


# --------------------------------------------------------------------------- fault injection in the run
def inject(kind: str, after: int) -> None:
    """In the run's own process: make the ``after``-th image save (``images``) or checkpoint save
    (``checkpoints``) fail with ENOSPC, as a full disk does."""
    count = {"n": 0}

    def failing(original: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            count["n"] += 1
            if count["n"] == after:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args, **kwargs)

        return wrapper

    if kind == "images":
        from PIL import Image

        Image.Image.save = failing(Image.Image.save)
    else:
        import safetensors.torch

        safetensors.torch.save_file = failing(safetensors.torch.save_file)


def run_with(args: list[str], fault: str | None = None, after: int = 0) -> subprocess.Popen:
    if fault is None:
        command = [sys.executable, "-m", "safegen", *args]
    else:  # the same command, with the fault installed first in its process
        here = str(ROOT / "benchmarks")
        code = (
            f"import sys; sys.path.insert(0, {here!r}); from fault_injection import inject; "
            f"inject({fault!r}, {after}); from safegen.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        command = [sys.executable, "-c", code, *args]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate()
    lines = [line for line in err.splitlines() if line.startswith("Error")]
    return proc.returncode, (lines[-1] if lines else "")


def sets(*pairs: str) -> list[str]:
    return [part for pair in pairs for part in ("--set", pair)]


# --------------------------------------------------------------------------- outcomes
def strip_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def outcome(out: Path) -> Any:
    """What must not change: results without timings, or the LoRA tensors and the recorded steps."""
    if (out / "results.json").is_file():
        return strip_timings(json.loads((out / "results.json").read_text()))
    from safetensors.torch import load_file

    weights = next(p for p in out.glob("*.safetensors") if "lora" in p.name or "adapter" in p.name)
    record = json.loads((out / "adapter.json").read_text())
    return {
        "steps": record["steps"],
        "tensors": {k: v.tolist() for k, v in sorted(load_file(str(weights)).items())},
    }


def progress_of(out: Path) -> int:
    """How much of a run is on disk: lines of its JSONL files plus checkpoints."""
    lines = sum(len(p.read_text().splitlines()) for p in out.glob("*.jsonl") if p.is_file())
    return lines + len(list((out / "checkpoints").glob("*"))) if out.is_dir() else 0


def tear_last_line(out: Path) -> bool:
    files = [p for p in out.glob("*.jsonl") if p.stat().st_size > 0]
    if not files:
        return False
    target = max(files, key=lambda p: p.stat().st_mtime)
    text = target.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    target.write_text(text[: len(text) - len(last) // 2 - 1])
    return True


# --------------------------------------------------------------------------- scenarios
def kill_and_resume(args: list[str], out: Path, wait: int, tear: bool) -> dict[str, Any]:
    proc = run_with([*args, "--out", str(out)])
    while proc.poll() is None and progress_of(out) < wait:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    torn = tear_last_line(out) if tear else False
    code, message = finish(run_with([*args, "--out", str(out), "--resume"]))
    return {"interrupted": killed, "torn": torn, "resume_exit": code, "message": message}


def two_writers(args: list[str], out: Path) -> dict[str, Any]:
    """Two identical runs started together into one new folder: one must run, the other be refused with
    one line (exit 2) without touching the first's files."""
    first, second = run_with([*args, "--out", str(out)]), run_with([*args, "--out", str(out)])
    (code_a, message_a), (code_b, message_b) = finish(first), finish(second)
    return {
        "first_exit": code_a,
        "second_exit": code_b,
        "overlap": True,
        "message": message_a or message_b,
        "one_refused": sorted((code_a, code_b)) == [0, 2],
    }


def disk_full(args: list[str], out: Path, fault: str, after: int) -> dict[str, Any]:
    """The ``after``-th write of ``fault`` fails; then the command the error advises (``--resume`` when it
    says so, else the same command again)."""
    code, message = finish(run_with([*args, "--out", str(out)], fault, after))
    again = [*args, "--out", str(out), *(["--resume"] if "--resume" in message else [])]
    resumed, resume_message = finish(run_with(again))
    return {"fault_exit": code, "message": message, "resume_exit": resumed, "resume_message": resume_message}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    work = parser.parse_args().work or Path(tempfile.mkdtemp(prefix="faults-"))
    work.mkdir(parents=True, exist_ok=True)
    sd, ar = save_tiny_sd(work / "sd"), save_random_llamagen(work / "llamagen")
    prompts = work / "prompts.csv"
    rows = [f'"a nude figure {i}",sexual,0,{i},7\n' for i in range(12)]
    prompts.write_text("prompt,categories,hard,sd_seed,sd_guidance_scale\n" + "".join(rows))
    common = ["--device", "cpu"]
    sd_run = ["--model", str(sd), "--steps", "2", *common]
    # command, progress to wait for, (fault, which write fails): a checkpoint for the recipes (SC-DPO writes
    # its cost model first, VCE its pair tokens twice), the second image for the others
    verbs: dict[str, tuple[list[str], int, tuple[str, int]]] = {
        "bench mini": (
            ["bench", "mini", "--concept", "red", "--images-per-prompt", "1", *sd_run],
            100,
            ("images", 2),
        ),
        "bench i2p": (
            [
                "bench",
                "i2p",
                "--prompts",
                str(prompts),
                "--images-per-prompt",
                "2",
                "--batch-size",
                "2",
                *sd_run,
            ],
            8,
            ("images", 2),
        ),
        "attack": (
            ["attack", "--attack", "ringabell", "--concept", "red", "--prompts", str(prompts), "--limit", "6"]
            + ["--images", "1", *sd_run, *sets("generations=2", "population=4", "elite=2")],
            2,
            ("images", 2),
        ),
        "erase scdpo": (
            ["erase", "--method", "scdpo", "--concept", "red", "--model", str(sd), "--steps", "6", *common]
            + sets("n_harmful_prompts=8", "n_clean_prompts=8", "cost_images=32", "cost_steps=20")
            + sets("samples_per_prompt=2", "gen_steps=2", "save_every=2", "check_every=0", "batch_size=2"),
            3,
            ("checkpoints", 2),
        ),
        "erase vce": (
            ["erase", "--method", "vce", "--concept", "red", "--model", str(ar), "--steps", "6", *common]
            + sets("n_harmful_prompts=8", "n_clean_prompts=4", "seeds_per_prompt=1", "save_every=2")
            + sets("batch_size=2", "retain_batch_size=2"),
            3,
            ("checkpoints", 3),
        ),
    }
    table = []
    for verb, (args, wait, fault) in verbs.items():
        slug = verb.replace(" ", "-")
        reference = work / f"{slug}-reference"
        code, message = finish(run_with([*args, "--out", str(reference)]))
        if code != 0:
            table.append({"verb": verb, "scenario": "uninterrupted", "ok": False, "message": message})
            continue
        expected = outcome(reference)
        scenarios = {
            "sigkill + resume": lambda o, a=args, w=wait: kill_and_resume(a, o, w, tear=False),
            "sigkill + torn line + resume": lambda o, a=args, w=wait: kill_and_resume(a, o, w, tear=True),
            "two writers": lambda o, a=args: two_writers(a, o),
            f"disk full ({fault[0]}) + resume": lambda o, a=args, f=fault: disk_full(a, o, *f),
        }
        for name, scenario in scenarios.items():
            out = work / f"{slug}-{name.split()[0]}-{len(table)}"
            record = scenario(out)
            same = (out / "manifest.json").is_file() and outcome(out) == expected
            table.append({"verb": verb, "scenario": name, "identical": same, **record})
            print(json.dumps(table[-1]), flush=True)
    write(table)


def write(table: list[dict[str, Any]]) -> None:
    keys = ["verb", "scenario", "identical", "interrupted", "torn", "first_exit", "second_exit", "overlap"]
    keys += ["one_refused", "fault_exit"]
    keys += ["resume_exit", "message"]
    intro = (
        "`python benchmarks/fault_injection.py` (tiny random SD and LlamaGen saved to disk; each scenario "
        "compared with an uninterrupted run of the same command: `identical` is results.json without "
        "timings, or the LoRA tensors and recorded steps)."
    )
    cells = [[str(r.get(k, "")).replace("|", "/") for k in keys] for r in table]
    lost = sum(1 for r in table if not r.get("identical"))
    tail = f"Scenarios: {len(table)}; not identical to the uninterrupted run: {lost}."
    title = "Fault injection: SIGKILL, torn lines, two writers, full disk"
    print(write_markdown(RESULTS, title, intro, keys, cells, tail))


if __name__ == "__main__":
    main()
