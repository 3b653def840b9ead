"""CLI verbs ``safegen generate`` and ``safegen classify``: thin wrappers over :mod:`safegen.api`.

safegen generate "a red striped circle" --n 4 --out outputs/demo
safegen generate "a red circle" --guard sp --concept red --save-masks
safegen generate "a red striped circle" --guard sld --concept red,circle
safegen classify outputs/demo --classifier mini
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from safegen import api
from safegen.choices import ClassifierName, Device, DType, NudeNetPreset
from safegen.cli.common import (
    AdapterOpt,
    BatchOpt,
    ConceptOpt,
    ConceptsFileOpt,
    DeviceOpt,
    DTypeOpt,
    GuardConfigOpt,
    GuardOpt,
    JsonOpt,
    ModelOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    StrengthOpt,
    folder_path,
    guard_inputs,
    resolve_concept,
)
from safegen.cli.ui import print_json, print_table, progress_bar
from safegen.errors import SafegenError


def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.", show_default=False)],
    model: ModelOpt = "mini",
    n: Annotated[int, typer.Option("--n", "-n", min=1, max=100_000, help="Images per prompt.")] = 1,
    seed: SeedOpt = 0,
    steps: StepsOpt = 20,
    cfg: Annotated[
        float | None,
        typer.Option("--cfg", min=0.0, help="Guidance scale [default: the model's own; SD: 7.5]."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", parser=folder_path, help="Output folder [default: outputs/generate-<time>]."
        ),
    ] = None,
    device: DeviceOpt = Device.AUTO,
    dtype: DTypeOpt = DType.AUTO,
    batch_size: BatchOpt = 8,
    guard: GuardOpt = "none",
    concept: ConceptOpt = None,
    concepts_file: ConceptsFileOpt = None,
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    save_masks: Annotated[
        bool, typer.Option("--save-masks", help="SP-Guard: write each step's mask as PNGs in OUT/masks/.")
    ] = False,
    adapter: AdapterOpt = None,
    json: JsonOpt = False,
) -> None:
    """Generate images and save them as PNGs with a generation.jsonl record."""
    guard_obj: Any = guard
    if guard != "none" or concept or strength or set_ or guard_config or save_masks:
        if save_masks and guard != "sp":
            raise SafegenError("--save-masks needs --guard sp (the only guard with masks).")
        extra = {"keep_masks": True} if save_masks else {}
        concept_obj = resolve_concept(concept, concepts_file, several=True)
        guard_obj, _ = guard_inputs(guard, concept_obj, strength, guard_config, set_, model, **extra)
    with progress_bar("Generating") as progress:
        result = api.generate_to_dir(
            prompts,
            model=model,
            n=n,
            seed=seed,
            steps=steps,
            cfg=cfg,
            out=out,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            guard=guard_obj,
            adapter=adapter,
            progress=progress,
        )
    if save_masks:
        from safegen.guards.sp import save_masks as write_masks

        result["masks"] = [str(p) for p in write_masks(guard_obj, result["files"])]
    if json:
        print_json(result)
        return
    rows = [{"file": r["path"], "seed": r["seed"], "prompt": r["prompt"]} for r in result["records"]]
    print_table(rows, ["file", "seed", "prompt"])
    typer.echo(f"Wrote {len(result['files'])} images to {result['out']}")
    if save_masks:
        typer.echo(f"Wrote {len(result['masks'])} masks to {Path(result['out']) / 'masks'}")


def classify(
    paths: Annotated[
        list[Path], typer.Argument(help="Image files or folders of images.", show_default=False)
    ],
    classifier: Annotated[ClassifierName, typer.Option("--classifier", "-c")] = ClassifierName.NUDENET,
    preset: Annotated[NudeNetPreset, typer.Option("--preset", help="NudeNet protocol.")] = NudeNetPreset.I2P,
    json: JsonOpt = False,
) -> None:
    """Classify images: NudeNet (unsafe or not) or the mini-world classifier (objects seen)."""
    files = api.expand_paths(paths)  # every path checked before a model is loaded
    with progress_bar("Classifying") as progress:
        results = api.classify(files, classifier=classifier, preset=preset, progress=progress)
    if json:
        print_json(results)
        return
    rows = [{"file": r["path"], "result": _summary(r)} for r in results]
    print_table(rows, ["file", "result"])
    if classifier is ClassifierName.NUDENET:
        flagged = sum(bool(r.get("unsafe")) for r in results)
        typer.echo(f"{flagged} of {len(results)} images unsafe (NudeNet preset {preset.value})")


def _summary(result: dict[str, Any]) -> str:
    if "objects" in result:
        objects = result["objects"] or []
        return (
            "; ".join(" ".join(str(o.get(k, "?")) for k in ("color", "texture", "object")) for o in objects)
            or "-"
        )
    if "unsafe" in result:
        counts = ", ".join(f"{k} {v}" for k, v in (result.get("counts") or {}).items() if v)
        verdict = "UNSAFE" if result["unsafe"] else "safe"
        return f"{verdict} (score {result.get('score', 0):.2f}{'; ' + counts if counts else ''})"
    return ", ".join(f"{k}={v}" for k, v in result.items() if k not in ("path", "classifier"))


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(classify)
