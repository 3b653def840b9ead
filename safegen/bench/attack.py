"""``safegen bench attack``: adversarial prompt sets against a (made-safe) model, scored by NudeNet.

Each set ships its prompts in its own format; the loaders below read them as released:

- ``unlearndiff`` (UnlearnDiffAtk, OPTML-Group/Diffusion-MU-Attack ``prompts/nudity.csv``, 142 rows): I2P
  columns, index column ``Unnamed: 0``; each row's seed and guidance are used.
- ``ringabell`` (Ring-A-Bell, 79 nudity prompts): ``sensitive prompt`` (the attack prompt; a ``prompt``
  column is accepted too) and ``normal prompt``.
- ``mma`` (MMA-Diffusion, 1,000 rows): ``target_prompt, adv_prompt, sanitized_adv_prompt,
  success_against_sanitization_defense, clean_prompt``; ``adv_prompt`` by default (``--prompt-column``
  picks another, e.g. ``sanitized_adv_prompt``).
- ``p4d`` (P4D): ``prompt`` plus I2P columns (seed, guidance, case number).

Sets without seeds use ``--seed`` (default 0; image k gets seed + k) and ``--cfg`` (default: the model's
own guidance scale, 7.5 for Stable Diffusion). These
files hold the attacks' released prompts: safegen does not run the attacks' optimisation against your
model (UnlearnDiffAtk optimises per target model), so for ``unlearndiff`` the figure is the rate on its
starting prompts.

Metric: attack success rate (ASR) = share of prompts with at least one image the NudeNet preset flags
(images and boxes are reported too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safegen.bench.i2p import nudity_verdict
from safegen.errors import SafegenError
from safegen.promptsets.attacks import ATTACK_SETS, load_attack

# What a released set's ASR is, in the field's terms: UnlearnDiffAtk releases the prompts it starts from
# (their ASR is its pre-attack ASR; the post-attack ASR needs the attack run against the model at hand,
# ``safegen attack --attack unlearndiff``); the others release prompts already optimised against some
# model, so their ASR on another model is a transfer (black-box) post-attack ASR.
_TRANSFER = "post-attack, transferred (prompts the attack's authors optimised against another model)"
ASR_KIND = {
    "unlearndiff": "pre-attack (its starting prompts; post-attack: safegen attack --attack unlearndiff)",
    "ringabell": _TRANSFER,
    "mma": _TRANSFER,
    "p4d": _TRANSFER,
}


def attack_results(samples: Sequence[dict], preset: Any) -> dict[str, Any]:
    """ASR (prompts with any flagged image), image-level rate, and boxes per preset class."""
    classes, threshold = tuple(preset.classes), float(preset.threshold)
    per_prompt: dict[str, bool] = {}
    counts = {c: 0 for c in classes}
    flagged = 0
    for s in samples:
        verdict = nudity_verdict(s["detections"], classes, threshold)
        flagged += verdict["unsafe"]
        per_prompt[s["row_id"]] = per_prompt.get(s["row_id"], False) or verdict["unsafe"]
        for c, n in verdict["counts"].items():
            counts[c] += n
    n_prompts, n_images = len(per_prompt), len(samples)
    return {
        "benchmark": "attack",
        "preset": {
            "name": preset.name,
            "classes": list(classes),
            "threshold": threshold,
            "unit": preset.unit,
        },
        "directions": {"asr": "lower is better", "image_rate": "lower is better"},
        "overall": {
            "n_prompts": n_prompts,
            "n_images": n_images,
            "asr": sum(per_prompt.values()) / n_prompts if n_prompts else float("nan"),
            "image_rate": flagged / n_images if n_images else float("nan"),
            "counts": counts,
            "n_boxes": sum(counts.values()),
        },
    }


def run_attack(
    *,
    attack_set: str,
    prompts: str | Path,
    prompt_column: str | None = None,
    limit: int | None = None,
    images_per_prompt: int = 1,
    preset: str = "i2p",
    settings: Any = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """Run (or finish) an attack set into the run folder ``out``; see :func:`safegen.bench.i2p.run_i2p`."""
    from safegen.bench.evaluate import Settings, make_items, run_benchmark
    from safegen.classifiers.nudenet import get_preset

    settings = settings or Settings()
    table = load_attack(attack_set, prompts, prompt_column)
    if limit is not None and limit < 1:
        raise SafegenError(f"--limit must be at least 1, got {limit}.")
    rows = table.rows[:limit] if limit is not None else table.rows
    preset_obj = get_preset(preset)
    items = make_items(rows, images_per_prompt, settings)
    config = {
        "benchmark": f"attack/{attack_set}",
        "prompts": {
            "md5": table.md5,
            "column": prompt_column
            or next(c for c in ATTACK_SETS[attack_set].prompt_columns if c in table.columns),
            "limit": limit,
            "n_rows": len(rows),
            "skipped_empty": table.skipped,
        },
        "images_per_prompt": images_per_prompt,
        "preset": preset_obj.to_config(),
        **settings.config(),
    }

    def summarize(samples: list[dict]) -> dict[str, Any]:
        return {"set": attack_set, "asr_kind": ASR_KIND[attack_set], **attack_results(samples, preset_obj)}

    return run_benchmark(
        "attack",
        config,
        items,
        settings,
        preset_obj,
        None,
        out=out,
        resume=resume,
        progress=progress,
        summarize=summarize,
        extra={"attack_set": attack_set, "prompts": {"path": str(table.path.resolve()), "md5": table.md5}},
    )
