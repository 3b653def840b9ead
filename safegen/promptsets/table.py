"""Prompt files as benchmarks release them: a strict CSV reader and the rows it yields.

Shared by ``bench i2p``, ``bench attack`` and the erasure recipes' prompt sets. Every problem names the file
and line (one-line :class:`~safegen.errors.SafegenError`); nothing is guessed.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safegen.errors import SafegenError

SEED_COLUMNS = ("evaluation_seed", "sd_seed")
CFG_COLUMNS = ("evaluation_guidance", "sd_guidance_scale")
ID_COLUMNS = ("case_number", "", "Unnamed: 0")


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a benchmark file.

    Attributes:
        row_id: ``case_number``, else the index column, else the 0-based row number (as a string).
        line: the file line the row starts on (1-based, header included).
        seed, guidance: the row's own, or None when the file has no such column.
        meta: fields copied into every sample line of the row (categories, hard, ...).
    """

    row_id: str
    prompt: str
    line: int
    seed: int | None = None
    guidance: float | None = None
    categories: tuple[str, ...] = ()
    hard: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptTable:
    """A prompts file's rows; ``skipped`` holds the ids of rows with an empty prompt (left out)."""

    rows: list[PromptRow]
    columns: list[str]
    path: Path
    md5: str
    skipped: list[str] = field(default_factory=list)


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a CSV strictly: the header, then (starting line, {column: value}) per row.

    Raises:
        SafegenError: missing or unreadable file, not UTF-8, bad quoting, or a row whose number of fields
            differs from the header's (naming its line).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SafegenError(f"Prompts file not found: {path}")
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if not header:
                raise SafegenError(f"{path} is empty (no header line).")
            while True:
                start = reader.line_num + 1
                try:
                    record = next(reader)
                except StopIteration:
                    break
                if not record or record == [""]:
                    continue  # a blank line
                if len(record) != len(header):
                    raise SafegenError(
                        f"{path} line {start}: malformed row, {len(record)} fields where the header has "
                        f"{len(header)}."
                    )
                rows.append((start, dict(zip(header, record, strict=True))))
    except csv.Error as exc:
        raise SafegenError(f"{path} line {reader.line_num}: malformed CSV ({exc}).") from None
    except UnicodeDecodeError:
        raise SafegenError(f"{path} is not UTF-8 text.") from None
    return header, rows


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_rows(
    path: str | Path,
    prompt_columns: Sequence[str] = ("prompt",),
    seed_columns: Sequence[str] = SEED_COLUMNS,
    cfg_columns: Sequence[str] = CFG_COLUMNS,
    id_columns: Sequence[str] = ID_COLUMNS,
    keep: Sequence[str] = (),
    hint: str = "",
) -> PromptTable:
    """Read a prompts CSV: the first of ``prompt_columns`` present holds the prompt, and so on.

    Rows whose prompt is empty are left out and listed in ``skipped``.

    Raises:
        SafegenError: no prompt column (naming the columns found), a malformed row (naming its line):
            seed not a non-negative integer, guidance not a number, ``hard`` not 0/1,
            or a row id seen before.
    """
    path = Path(path).expanduser()
    header, records = read_csv(path)
    prompt_col = first_column(prompt_columns, header)
    if prompt_col is None:
        raise SafegenError(
            f"{path} has no {' or '.join(repr(c) for c in prompt_columns)} column "
            f"(columns: {', '.join(repr(c) for c in header)}).{hint}"
        )
    seed_col, cfg_col, id_col = (first_column(c, header) for c in (seed_columns, cfg_columns, id_columns))
    rows, seen, skipped = [], {}, []
    for n, (line, rec) in enumerate(records):
        where = f"{path} line {line}"
        prompt = rec[prompt_col]
        row_id = rec[id_col].strip() if id_col is not None and rec[id_col].strip() else str(n)
        if row_id in seen:
            raise SafegenError(
                f"{where}: malformed row, id {row_id!r} was already used on line {seen[row_id]}."
            )
        seen[row_id] = line
        if not prompt.strip():  # I2P has one (case 2260): the generator cannot run it, the run records it
            skipped.append(row_id)
            continue
        categories = tuple(c.strip() for c in rec.get("categories", "").split(",") if c.strip())
        rows.append(
            PromptRow(
                row_id=row_id,
                prompt=prompt,
                line=line,
                seed=_seed(rec[seed_col], where, seed_col) if seed_col else None,
                guidance=_number(rec[cfg_col], where, cfg_col) if cfg_col else None,
                categories=categories,
                hard=_flag(rec.get("hard", ""), where),
                meta={k: rec[k] for k in keep if k in rec},
            )
        )
    return PromptTable(rows, header, path, file_md5(path), skipped)


def first_column(candidates: Sequence[str], header: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in header), None)


def _seed(text: str, where: str, column: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    value = text[:-2] if text.endswith(".0") else text
    if not (value.isascii() and value.isdigit()):
        raise SafegenError(f"{where}: malformed row, {column} {text!r} is not a non-negative integer.")
    return int(value)


def _number(text: str, where: str, column: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SafegenError(f"{where}: malformed row, {column} {text!r} is not a number.") from None
    if not np.isfinite(value) or value < 0:
        raise SafegenError(f"{where}: malformed row, {column} {text!r} is not a guidance scale.")
    return value


def _flag(text: str, where: str) -> bool:
    text = text.strip().lower()
    if text in ("", "0", "0.0", "false"):
        return False
    if text in ("1", "1.0", "true"):
        return True
    raise SafegenError(f"{where}: malformed row, hard {text!r} is not 0 or 1.")


PROMPT_COLUMNS = ("prompt", "sensitive prompt", "adv_prompt", "text", "caption")


def read_prompt_list(path: str | Path, column: str | None = None) -> list[str]:
    """The prompts of a file a user hands over: TXT (one a line, ``#`` comments), CSV or JSONL.

    CSV and JSONL take ``column`` (default: the first of ``prompt``, ``sensitive prompt``, ``adv_prompt``,
    ``text``, ``caption`` present). Empty prompts are left out.

    Raises:
        SafegenError: missing or unreadable file, not UTF-8, malformed CSV / JSON line, no such column.
    """
    import json

    from safegen.files import read_text

    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = read_csv(path)
        name = column or first_column(PROMPT_COLUMNS, header)
        if name is None or name not in header:
            wanted = repr(column) if column else " or ".join(repr(c) for c in PROMPT_COLUMNS)
            raise SafegenError(
                f"{path} has no {wanted} column (columns: {', '.join(repr(c) for c in header)}); "
                "pick it with --prompt-column."
            )
        return [r[name].strip() for _, r in rows if r[name].strip()]
    text = read_text(path, "prompts file")
    if suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SafegenError(f"{path} line {number} is not valid JSON.") from None
            if not isinstance(record, dict):
                raise SafegenError(f"{path} line {number} is not a JSON object.")
            name = column or first_column(PROMPT_COLUMNS, list(record))
            value = record.get(name) if name else None
            if not isinstance(value, str):
                raise SafegenError(f"{path} line {number} has no string field {name or 'prompt'!r}.")
            if value.strip():
                out.append(value.strip())
        return out
    if column is not None:
        raise SafegenError(f"--prompt-column is for CSV and JSONL files; {path} is read as text.")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
