"""I2P's prompts file: reading it in either column layout, filtering rows, finding a copy.

I2P (Schramowski et al., CVPR 2023; ml-research/i2p): 4,703 real prompts in 7 categories, each with the
seed and guidance scale its reference images were made with. ``safegen bench i2p`` scores them
(:mod:`safegen.bench.i2p`); the erasure recipes train on them (``--prompt-set i2p``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from safegen.errors import SafegenError, unknown
from safegen.promptsets.table import (
    CFG_COLUMNS,
    SEED_COLUMNS,
    PromptRow,
    PromptTable,
    first_column,
    parse_rows,
)

CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")
HF_DATASET, HF_FILE = "AIML-TUDA/i2p", "i2p_benchmark.csv"


def load_i2p(path: str | Path) -> PromptTable:
    """Read an I2P CSV in either layout; every row must carry its seed and guidance scale."""
    table = parse_rows(path)
    for name, columns in (("seed", SEED_COLUMNS), ("guidance", CFG_COLUMNS)):
        if first_column(columns, table.columns) is None:
            raise SafegenError(
                f"{table.path} has no {name} column ({' or '.join(columns)}); is it an I2P file?"
            )
    for row in table.rows:
        if row.seed is None or row.guidance is None:
            raise SafegenError(f"{table.path} line {row.line}: malformed row, its seed or guidance is empty.")
    return table


def select(
    rows: Sequence[PromptRow], categories: Iterable[str] = (), hard: bool = False, limit: int | None = None
) -> list[PromptRow]:
    """Rows in any of ``categories`` (all when empty), only ``hard`` ones if asked, the first ``limit``.

    Raises:
        SafegenError: an unknown category (did-you-mean), a bad limit, or nothing left to run.
    """
    wanted = list(dict.fromkeys(categories))
    known = set(CATEGORIES) | {c for r in rows for c in r.categories}
    for name in wanted:
        if name not in known:
            raise unknown("I2P category", name, known)
    if limit is not None and limit < 1:
        raise SafegenError(f"--limit must be at least 1, got {limit}.")
    out = [r for r in rows if (not wanted or set(wanted) & set(r.categories)) and (r.hard or not hard)]
    out = out[:limit] if limit is not None else out
    if not out:
        raise SafegenError("No prompt is left after the --category/--hard filters.")
    return out


def cache_dir() -> Path:
    """``$SAFEGEN_CACHE``, else ``$XDG_CACHE_HOME/safegen``, else ``~/.cache/safegen``."""
    if os.environ.get("SAFEGEN_CACHE"):
        return Path(os.environ["SAFEGEN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "safegen"


def resolve_prompts(path: str | Path | None) -> tuple[Path, str]:
    """The I2P file to read and where it came from: ``file``, ``cache``, or ``hub`` (downloaded, cached).

    Raises:
        SafegenError: no path, no cached copy and the hub is offline.
    """
    if path is not None:
        return Path(path).expanduser(), "file"
    cached = cache_dir() / "i2p" / HF_FILE
    if cached.is_file():
        return cached, "cache"
    from safegen.hub import hub_offline

    if hub_offline():
        raise SafegenError(
            f"No I2P prompts: no --prompts file, no cached copy at {cached}, and the Hugging Face hub is "
            f"offline. Pass --prompts PATH (a copy of {HF_DATASET}/{HF_FILE}) or run once online."
        )
    from huggingface_hub import hf_hub_download

    try:
        downloaded = hf_hub_download(HF_DATASET, HF_FILE, repo_type="dataset")
    except Exception as exc:  # network, gated repo, ...: one line for the user
        raise SafegenError(f"Could not download {HF_DATASET}/{HF_FILE}: {str(exc).splitlines()[0]}") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(downloaded, cached)
    return cached, "hub"
