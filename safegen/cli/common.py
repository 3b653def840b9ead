"""The CLI's shared option declarations, each written once: every verb that takes a model, a guard, a
concept, a run folder ... declares it with the same name, help text and checks.

Only declarations live here (``Annotated`` types for Typer); verbs are in the other modules of
:mod:`safegen.cli`, and the work they forward to in the library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from safegen.choices import Device, DType, NudeNetPreset
from safegen.errors import SafegenError


def folder_path(value: str) -> Path:
    """An ``--out`` folder: any path but the empty string (which would mean the working folder)."""
    if not value.strip():
        raise typer.BadParameter("must name a folder, not an empty string")
    return Path(value)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundled model name, local folder or hub id.")]
GuardOpt = Annotated[
    str, typer.Option("--guard", "-g", help="Inference guard: none, or a guard of `safegen guards`.")
]
StrengthOpt = Annotated[
    str | None,
    typer.Option("--strength", help="Guard preset: weak, medium or strong (sld also max) [default: medium]."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Option KEY=VALUE (repeatable; `safegen guards` / --options list them)."),
]
GuardConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--guard-config", exists=True, dir_okay=False, readable=True, help="YAML file of guard options."
    ),
]
ConceptOpt = Annotated[
    str | None,
    typer.Option(
        "--concept",
        help="Concept to act on (`safegen concepts`; mini: red, circle, ...); erase and the guards take "
        "several, comma-separated (red,circle).",
    ),
]
ConceptsFileOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--concepts-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Extra concepts YAML (repeatable; default: $SAFEGEN_CONCEPTS), as safegen/data/concepts.yaml.",
    ),
]
AdapterOpt = Annotated[
    Path | None,
    typer.Option("--adapter", exists=True, help="LoRA adapter folder to load (e.g. from safegen erase)."),
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the first image; image k gets seed + k.")
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Weights dtype.")]
PresetOpt = Annotated[
    NudeNetPreset,
    typer.Option(
        "--preset",
        help="NudeNet protocol: i2p (5 classes, 0.6), six (0.5), mace (9, boxes), unlearndiff (9, 0.45).",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", parser=folder_path, help="Run folder [default: outputs/<verb>-<time>]."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Finish the run in --out (refused if its configuration differs).")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model batch.")]


def guard_inputs(
    guard: str,
    concept: Any,
    strength: str | None,
    guard_config: Path | None,
    sets: list[str] | None,
    model: str,
    **extra: Any,
) -> tuple[Any, dict[str, Any]]:
    """Check every guard input before anything is loaded or written: the guard object and its options.

    Returns:
        ``(guard, options)``: the built guard (``none`` when no guard) and the options that rebuild it
        (``get_guard(name, concept=..., **options)``), for manifests.
    """
    from safegen.guards import build_guard, guard_options

    options = guard_options(guard, strength, guard_config, sets or [], model, concept)
    guard_obj = build_guard(guard, concept, strength, guard_config, sets or [], model=model, **extra)
    judged = getattr(getattr(guard_obj, "opts", None), "judge", None) in ("noise", "both") or (
        getattr(getattr(guard_obj, "opts", None), "gate", None) == "noise"
    )
    if judged and "tau" not in options and not options.get("part_options"):
        from safegen.cli.ui import note_when_running

        note_when_running(
            f"Note: guard '{guard}' has no calibration of its noise judge for '{guard_obj.concept.name}' on "
            f"{model}; tau and h_sat are the defaults. Measure them: safegen calibrate --guard {guard} "
            f"--concept {guard_obj.concept.name} --model {model} --out FILE, then --guard-config FILE."
        )
    elif judged and getattr(guard_obj.opts, "presence", False) and "presence_tau" not in options:
        from safegen.cli.ui import note_when_running

        note_when_running(
            f"Note: guard '{guard}' judges presence (judge.py Eq. b4) with default thresholds: its "
            f"calibration for '{guard_obj.concept.name}' on {model} was measured without it. Recalibrate "
            f"with presence on (safegen calibrate --guard {guard} ... --set presence=true) or "
            f"--set presence=false."
        )
    return guard_obj, options


def resolve_concept(name: str | None, files: list[Path] | None, several: bool = False) -> Any:
    """The Concept called ``name`` (built-in, mini world, or from the concepts files), or None.

    Args:
        several: ``name`` may list several concepts, comma-separated (for guards; they are combined:
            :func:`safegen.concepts.lookup_concept`); otherwise a list is refused.
    """
    if name is None:
        return None
    from safegen.concepts import concept_names, get_concept, lookup_concept

    if several:
        return lookup_concept(name, concepts_files(files))
    if len(concept_names(name)) > 1:
        raise SafegenError(
            f"--concept takes one concept here, got '{name}'; several (comma-separated) are for erase and "
            "the guards."
        )
    return get_concept(name, concepts_files(files))


def concepts_files(given: list[Path] | None) -> list[Path]:
    """``--concepts-file`` values, else the files named by ``$SAFEGEN_CONCEPTS`` (``:``-separated)."""
    import os

    if given:
        return list(given)
    env = os.environ.get("SAFEGEN_CONCEPTS", "").strip()
    files = [Path(p) for p in env.split(os.pathsep) if p.strip()]
    for path in files:
        if not path.is_file():
            raise SafegenError(f"$SAFEGEN_CONCEPTS names {path}, which is not a file.")
    return files
