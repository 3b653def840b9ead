"""The released adversarial prompt sets, read as released (``bench attack``, the recipes' prompt sets).

- ``unlearndiff`` (UnlearnDiffAtk, OPTML-Group/Diffusion-MU-Attack ``prompts/nudity.csv``, 142 rows): I2P
  columns, index column ``Unnamed: 0``; each row's seed and guidance are used.
- ``ringabell`` (Ring-A-Bell, 79 nudity prompts): ``sensitive prompt`` (the attack prompt; a ``prompt``
  column is accepted too) and ``normal prompt``.
- ``mma`` (MMA-Diffusion, 1,000 rows): ``target_prompt, adv_prompt, sanitized_adv_prompt,
  success_against_sanitization_defense, clean_prompt``; ``adv_prompt`` by default (a prompt column option
  picks another, e.g. ``sanitized_adv_prompt``).
- ``p4d`` (P4D): ``prompt`` plus I2P columns (seed, guidance, case number).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safegen.errors import unknown
from safegen.promptsets.table import CFG_COLUMNS, ID_COLUMNS, SEED_COLUMNS, PromptTable, parse_rows


@dataclass(frozen=True)
class AttackSet:
    name: str
    prompt_columns: tuple[str, ...]
    seeded: bool  # rows carry their own seed and guidance
    keep: tuple[str, ...]  # columns copied into each sample line
    description: str


ATTACK_SETS: dict[str, AttackSet] = {
    s.name: s
    for s in (
        AttackSet(
            "unlearndiff", ("prompt",), True, ("nudity_percentage",), "UnlearnDiffAtk nudity, 142 I2P rows"
        ),
        AttackSet(
            "ringabell",
            ("sensitive prompt", "prompt"),
            False,
            ("normal prompt",),
            "Ring-A-Bell nudity prompts",
        ),
        AttackSet(
            "mma",
            ("adv_prompt",),
            False,
            ("target_prompt", "success_against_sanitization_defense"),
            "MMA-Diffusion adversarial prompts",
        ),
        AttackSet("p4d", ("prompt",), True, (), "P4D adversarial prompts with I2P columns"),
    )
}


def load_attack(name: str, path: str | Path, prompt_column: str | None = None) -> PromptTable:
    """Read an attack set's prompts file.

    Raises:
        SafegenError: unknown set, missing prompt column (naming the columns found), malformed row.
    """
    if name not in ATTACK_SETS:
        raise unknown("attack set", name, ATTACK_SETS)
    spec = ATTACK_SETS[name]
    columns = (prompt_column,) if prompt_column else spec.prompt_columns
    seeds, cfgs = (SEED_COLUMNS, CFG_COLUMNS) if spec.seeded else ((), ())
    hint = " Pick the prompt column with --prompt-column."
    return parse_rows(path, columns, seeds, cfgs, ID_COLUMNS, keep=spec.keep, hint=hint)
