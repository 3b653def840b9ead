"""CLI verb ``safegen calibrate``: measure a guard's harmfulness judge on a model, write its thresholds.

    safegen calibrate --guard sp --concept red --model mini --out sp-red-mini.yaml
    safegen generate "a tomato-coloured star" --guard sp --concept red --guard-config sp-red-mini.yaml
    safegen calibrate --guard sp --concept nudity --model path/to/sd --prompts unsafe.txt \
        --clean-prompts coco.txt --judge both --out sp-nudity-sd15.yaml

What is measured and how thresholds are chosen: :mod:`safegen.calibrate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safegen.choices import Device
from safegen.cli.common import (
    ConceptOpt,
    ConceptsFileOpt,
    DeviceOpt,
    GuardConfigOpt,
    JsonOpt,
    ModelOpt,
    SetOpt,
    resolve_concept,
)
from safegen.cli.ui import print_json, print_mapping, progress_bar
from safegen.errors import SafegenError


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)


def calibrate(
    guard: Annotated[str, typer.Option("--guard", "-g", help="The guard whose judge to calibrate (sp).")],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="Guard config YAML to write.")],
    concept: ConceptOpt = None,
    concepts_file: ConceptsFileOpt = None,
    model: ModelOpt = "mini",
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="Prompts with the concept [default: its examples].")
    ] = None,
    clean_prompts: Annotated[
        Path | None,
        typer.Option("--clean-prompts", help="Prompts without it [default: bundled captions]."),
    ] = None,
    judge: Annotated[
        str, typer.Option("--judge", help="noise (the paper's) or both (noise and words).")
    ] = "noise",
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=64, help="Images per prompt.")] = 4,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Denoising steps [default: the generator's].")
    ] = None,
    target_fpr: Annotated[
        float,
        typer.Option("--target-fpr", help="Share of clean prompts the guard may act on (tau's quantile)."),
    ] = 0.05,
    sat_quantile: Annotated[
        float,
        typer.Option("--sat-quantile", help="Quantile of the concept prompts' h at full strength (h_sat)."),
    ] = 0.10,
    ramp_floor: Annotated[
        str,
        typer.Option(
            "--ramp-floor",
            help="Least ramp width above tau: to-median (a tenth of the way to the concept prompts' median) "
            "or clean-spread (a tenth of the clean range).",
        ),
    ] = "clean-spread",
    world_captions: Annotated[
        bool,
        typer.Option(
            "--world-captions/--examples-only",
            help="Mini concepts without --prompts: add world captions showing the concept to its examples.",
        ),
    ] = False,
    guard_config: GuardConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = Device.AUTO,
    json: JsonOpt = False,
) -> None:
    """Measure a guard's harmfulness judge on the model (AUROC) and write calibrated thresholds."""
    from safegen.calibrate import calibrate_guard, write_guard_config
    from safegen.guards import guard_options
    from safegen.promptsets.table import read_prompt_list

    concept_obj = resolve_concept(concept, concepts_file)
    if concept_obj is None:
        raise SafegenError("calibrate needs --concept.")
    if out.exists():
        raise SafegenError(f"{out} already exists; choose another --out.")
    options = guard_options(guard, None, guard_config, set_ or []) if guard != "none" else {}
    harmful = read_prompt_list(prompts) if prompts is not None else None
    clean = read_prompt_list(clean_prompts) if clean_prompts is not None else None
    with progress_bar("Calibrating") as progress:
        result = calibrate_guard(
            guard, concept_obj, model, prompts=harmful, clean_prompts=clean, judge=judge, seeds=seeds,
            steps=steps, target_fpr=target_fpr, sat_quantile=sat_quantile, ramp_floor=ramp_floor,
            world_captions=world_captions, device=device.value,
            options=options, progress=progress,
        )  # fmt: skip
    result["config"] = str(write_guard_config(result, out))
    if json:
        print_json(result)
    else:
        print_mapping(result, title="calibrate")
