"""Helpers the benchmark scripts share (tooling, not part of the installed package).

- tiny random models of the real classes (``save_tiny_sd``, ``save_random_llamagen``, ``save_tiny_janus``,
  from ``tests/tiny_models.py``);
- scoring ``bench mini`` results against the erasure targets and writing result tables (``scored``,
  ``table``, ``write_results``);
- peak memory of training steps, each mode in its own fresh process (``parser``, ``run_modes``,
  ``measure``, ``compare``), used by ``bench_dpo_memory.py`` and ``bench_vce_memory.py``: on CPU the peak
  is the kernel's high-water mark of resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``
  just before the steps, with glibc's mmap threshold fixed so freed tensors go back to the system); on
  CUDA ``torch.cuda.max_memory_allocated``. Reported: the peak above the memory held before the first
  step (``step_mib``) and the whole process's peak (``total_mib``).

Scripts import it as ``from helpers import ...`` (their own folder is on ``sys.path`` when run as
``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import save_random_llamagen, save_tiny_janus, save_tiny_sd  # noqa: E402, F401

TARGETS = {"ua": 0.95, "ira_ratio": 0.90, "cra_ratio": 0.95, "synonym_ua": 0.85}


def one_factor_plan(
    centre: dict[str, Any],
    grid: Mapping[str, list[Any]],
    ablations: Mapping[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The variants ``{"name", "changed": {option: value}, "config": {...}}``: the centre first, then one per
    grid value that differs from it (``name`` ``option=value``), then each named ablation."""
    variants = [{"name": "centre", "changed": {}, "config": dict(centre)}]
    for key, values in grid.items():
        for value in values:
            if value != centre[key]:
                changed = {key: value}
                variants.append(
                    {"name": f"{key}={_fmt(value)}", "changed": changed, "config": {**centre, **changed}}
                )
    for name, changed in (ablations or {}).items():
        variants.append({"name": name, "changed": dict(changed), "config": {**centre, **changed}})
    return variants


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def scored(bench: dict[str, Any], targets: Mapping[str, float] = TARGETS) -> dict[str, Any]:
    """UA, IRA/base, CRA/base, synonym UA, whether each target is met and the worst margin to them."""
    e, b = bench["erasure"], bench["erasure"]["base"]
    row = {
        "ua": e["ua"],
        "ira": e["ira"],
        "cra": e["cra"],
        "synonym_ua": e["synonym_ua"],
        "ira_ratio": e["ira"] / b["ira"] if b["ira"] else float("nan"),
        "cra_ratio": e["cra"] / b["cra"] if b["cra"] else float("nan"),
        "base": b,
    }
    row["meets"] = {k: bool(row[k] >= v) for k, v in targets.items()}
    row["worst_margin"] = min(row[k] / v for k, v in targets.items())
    return row


def erasure_row(bench: dict[str, Any]) -> dict[str, Any]:
    """A guard or adapter's bench mini erasure metrics as a table row: UA (named, synonym, implicit), the
    unprompted rate with the base model's, IRA and CRA as ratios to the base model's."""
    e, b = bench["erasure"], bench["erasure"]["base"]
    return {
        **{k: e[k] for k in ("ua", "synonym_ua", "implicit_ua")},
        "unprompted": e["unprompted_rate"],
        "unprompted_base": b["unprompted_rate"],
        "ira_ratio": e["ira"] / b["ira"] if b["ira"] else float("nan"),
        "cra_ratio": e["cra"] / b["cra"] if b["cra"] else float("nan"),
    }


def metric_head(who: str) -> list[str]:
    """The column names of :func:`metric_cells`; ``who`` names the method in the unprompted column."""
    return ["UA", "synonym UA", "implicit UA", f"unprompted (base -> {who})", "IRA / base", "CRA / base"]


def metric_cells(row: dict[str, Any]) -> list[str]:
    """The cells of :func:`erasure_row`'s metrics (``n/a`` where a metric does not apply)."""
    num = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    cells = [num(row[k]) for k in ("ua", "synonym_ua", "implicit_ua")]
    return cells + [f"{row['unprompted_base']:.3f} -> {row['unprompted']:.3f}", num(row["ira_ratio"]),
                    num(row["cra_ratio"])]  # fmt: skip


def variant_cells(
    rows: list[dict[str, Any]], variants: Sequence[str], met: Callable[[dict[str, Any]], bool]
) -> list[list[str]]:
    """The cells of a guard sweep's table, one row per (concept, variant): swept concepts first, then by
    concept and by the order of ``variants``; ``met`` says whether a row meets every target."""
    key = lambda r: (r["split"] != "swept", r["concept"], list(variants).index(r["variant"]))  # noqa: E731
    return [
        [r["split"], r["concept"], r["variant"]] + metric_cells(r) + ["yes" if met(r) else "no"]
        for r in sorted(rows, key=key)
    ]


def gcd_all(values: list[int]) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, v)
    return out


def checkpoint_adapters(run: Path, steps_values: list[int], centre_steps: int) -> dict[str, Path]:
    """The ``steps`` variants as checkpoints of one run: ``{"centre" or "steps=N": checkpoint folder}``."""
    return {
        ("centre" if s == centre_steps else f"steps={s}"): run / "checkpoints" / f"step-{s:07d}"
        for s in steps_values
    }


def read_rows(path: Path) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """The rows of a ``results.jsonl`` so far and the (concept, variant) pairs they cover (to resume)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return rows, {(r["concept"], r["variant"]) for r in rows}


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add a scored row to ``results.jsonl`` and print its line."""
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"{row['concept']} {row['variant']}: UA {row['ua']:.3f} IRA/base {row['ira_ratio']:.3f} "
        f"CRA/base {row['cra_ratio']:.3f} synUA {row['synonym_ua']:.3f}",
        flush=True,
    )


def table(
    rows: list[dict[str, Any]],
    labels: Mapping[str, str] | None = None,
    extra: Mapping[str, Callable[[dict[str, Any]], str]] | None = None,
) -> str:
    """Markdown: one row per (concept, variant), centre first; targets met in bold.

    Args:
        labels: a note per variant name (e.g. ``{"gamma=0": "ablation: no DFM"}``).
        extra: more columns, header -> cell function (e.g. the cost model's AUROC).
    """
    labels, extra = labels or {}, extra or {}
    head = ["concept", "variant", "UA", "IRA / base", "CRA / base", "synonym UA", *extra, "end to end s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["concept"], r["variant"] != "centre", r["variant"])):
        cell = lambda k, r=r: f"**{r[k]:.3f}**" if r["meets"][k] else f"{r[k]:.3f}"  # noqa: E731
        label = r["variant"] + (f" ({labels[r['variant']]})" if r["variant"] in labels else "")
        cells = [r["concept"], label, *(cell(k) for k in ("ua", "ira_ratio", "cra_ratio", "synonym_ua"))]
        cells += [fn(r) for fn in extra.values()] + [f"{sum(r['seconds'].values()):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_variants(rows: list[dict[str, Any]], concepts: list[str]) -> dict[str, str]:
    """Per concept, the variant with the largest worst-case margin to the targets."""
    best = {}
    for concept in concepts:
        mine = [r for r in rows if r["concept"] == concept]
        if mine:
            best[concept] = max(mine, key=lambda r: r["worst_margin"])["variant"]
    return best


def write_results(
    folder: Path, stem: str, title: str, record: dict[str, Any], markdown: str, argv: list[str]
) -> None:
    """``<folder>/<stem>.json`` (the record) and ``<stem>.md`` (title, the command that made it, table)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    command = " ".join(["python", *argv])
    (folder / f"{stem}.md").write_text(f"# {title}\n\n`{command}`\n\n{markdown}")


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


def write_markdown(
    path: Path, title: str, intro: str, head: list[str], rows: list[list[str]], tail: str = ""
) -> str:
    """A result page: a title, a paragraph (the command and what the columns mean), one table; written to
    ``path`` and returned."""
    lines = [f"# {title}", "", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    text = "\n".join(lines) + ("\n\n" + tail if tail else "") + "\n"
    path.write_text(text)
    return text


def result_rows(file: Path) -> list[dict[str, Any]]:
    """The rows a resumable table script has written so far (one JSON object a line)."""
    return (
        [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []
    )


def add_row(file: Path, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Keep ``row``: append it to ``rows`` and as a line to ``file``, and print it."""
    rows.append(row)
    with file.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
