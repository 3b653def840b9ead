"""One-factor-at-a-time sweeps of a fine-tuning method's options, scored with ``bench mini``.

Shared by ``benchmarks/sweep_scdpo.py`` and ``benchmarks/sweep_vce.py``: the plan (a centre, then the centre
with one option changed, then named ablations), the score of a ``bench mini`` result against the issue's
targets, the results files and their markdown table.

Targets (issues #5 and #6): UA >= 0.95, IRA >= 0.90 x base, CRA >= 0.95 x base, synonym UA >= 0.85.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
