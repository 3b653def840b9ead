"""Prompt sets a user names for training or evaluation: plain files, I2P and the released attack sets.

Leaf modules (no model, no benchmark code): :mod:`~safegen.promptsets.table` (the strict CSV reader and
prompt lists), :mod:`~safegen.promptsets.i2p`, :mod:`~safegen.promptsets.attacks`. Read by ``bench`` and
by the erasure recipes' ``--prompts`` / ``--clean-prompts``.

A plain file (TXT, CSV, JSONL), an I2P CSV filtered by category, or a released attack set; every
reader returns the prompts and where they came from (path, md5, filters) for a run's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safegen.choices import PROMPT_SETS
from safegen.errors import SafegenError, unknown
from safegen.promptsets.attacks import load_attack
from safegen.promptsets.i2p import load_i2p, resolve_prompts, select
from safegen.promptsets.table import file_md5, read_prompt_list


def read_prompt_source(
    path: str | Path | None, prompt_set: str = "file", column: str | None = None, categories: str = ""
) -> tuple[list[str], dict[str, Any]]:
    """Prompts from a file a user names, read as its kind of file, and where they came from.

    ``prompt_set``: ``file`` (TXT, CSV or JSONL: :func:`read_prompt_list`), ``i2p`` (an I2P CSV, rows in
    any of the comma-separated ``categories`` and in none of those written with a leading ``-``, e.g.
    ``sexual`` or ``-sexual``; without a path the cached copy or the hub) or a released
    attack set (``unlearndiff``, ``ringabell``, ``mma``, ``p4d``: its own columns).

    Raises:
        SafegenError: an unknown set, a missing file, a malformed one, an unknown category or column.
    """
    if prompt_set not in PROMPT_SETS:
        raise unknown("prompt set", prompt_set, PROMPT_SETS)
    wanted = [c.strip() for c in categories.split(",") if c.strip()]
    if wanted and prompt_set != "i2p":
        raise SafegenError("prompt_category filters I2P prompts; add --prompt-set i2p.")
    if prompt_set == "i2p":
        found, _ = resolve_prompts(path)
        table = load_i2p(found)
        without = {c[1:].strip() for c in wanted if c.startswith("-")}
        select(table.rows, without)  # an unknown category to leave out is an error too
        rows = select(table.rows, [c for c in wanted if not c.startswith("-")])
        rows = [r for r in rows if not without & set(r.categories)]
        return [r.prompt for r in rows], {
            "set": "i2p",
            "path": str(found),
            "categories": wanted,
            "md5": table.md5,
        }
    if path is None:
        raise SafegenError(f"--prompt-set {prompt_set} needs --prompts FILE.")
    if prompt_set == "file":
        prompts = read_prompt_list(path, column)
        return prompts, {"set": "file", "path": str(path), "column": column, "md5": file_md5(Path(path))}
    table = load_attack(prompt_set, path, column)
    return [r.prompt for r in table.rows], {"set": prompt_set, "path": str(path), "md5": table.md5}
