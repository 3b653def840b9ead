"""CLI verb ``safegen attack``: run an adversarial attack against a model, erased or guarded.

    safegen attack --attack unlearndiff --concept red --model mini --out runs/atk-red
    safegen attack --attack inversion --concept red --model mini --guard sp --out runs/atk-red-sp
    safegen attack --attack ringabell --concept circle --model mini-ar --adapter runs/vce-circle
    safegen attack --attack unlearndiff --concept nudity --model path/to/sd \\
        --prompts ../shared/data/unlearndiffatk_nudity_142.csv --set iterations=20
    safegen attack --attack unlearndiff --options          # every option of the attack

``--set KEY=VALUE`` sets an option of the attack, or of the guard when the attack has no such option.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from safegen.choices import Device, NudeNetPreset
from safegen.cli.common import (
    AdapterOpt,
    ConceptOpt,
    ConceptsFileOpt,
    DeviceOpt,
    GuardConfigOpt,
    GuardOpt,
    JsonOpt,
    ModelOpt,
    OutOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    StrengthOpt,
    guard_inputs,
    resolve_concept,
)
from safegen.cli.ui import StageBars, print_json, print_mapping, print_table
from safegen.errors import SafegenError


class Targets(str, Enum):
    AUTO = "auto"
    RENDER = "render"
    BASE = "base"


def attack(
    name: Annotated[
        str, typer.Option("--attack", help="unlearndiff, inversion or ringabell (`safegen methods`).")
    ],
    concept: ConceptOpt = None,
    concepts_file: ConceptsFileOpt = None,
    model: ModelOpt = "mini",
    adapter: AdapterOpt = None,
    guard: GuardOpt = "none",
    strength: StrengthOpt = None,
    guard_config: GuardConfigOpt = None,
    set_: SetOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", exists=True, dir_okay=False, readable=True, help="YAML file of attack options."
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="Prompts to attack: TXT, CSV or JSONL [default: mini concepts' own]."),
    ] = None,
    prompt_column: Annotated[str | None, typer.Option("--prompt-column", help="CSV / JSONL column.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N prompts.")] = None,
    targets: Annotated[
        Targets, typer.Option("--targets", help="Target images: mini renders, or the unmodified model's.")
    ] = Targets.AUTO,
    target_images: Annotated[int, typer.Option("--target-images", min=1, max=64)] = 4,
    images: Annotated[int, typer.Option("--images", min=1, max=64, help="Images per success check.")] = 1,
    steps: StepsOpt = 20,
    cfg: Annotated[
        float | None, typer.Option("--cfg", min=0.0, help="Guidance scale [default: model's].")
    ] = None,
    seed: SeedOpt = 0,
    judge_preset: Annotated[
        NudeNetPreset, typer.Option("--judge-preset", help="NudeNet protocol judging nudity.")
    ] = NudeNetPreset.UNLEARNDIFF,
    device: DeviceOpt = Device.AUTO,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    options: Annotated[bool, typer.Option("--options", help="List the attack's options and exit.")] = False,
    json: JsonOpt = False,
) -> None:
    """Attack a (made-safe) model: pre- and post-attack success rates, in a run folder."""
    from safegen.attacks import run_attack
    from safegen.methods import MethodKind, get_method
    from safegen.options import describe, field_types, load

    entry = get_method(name, MethodKind.ATTACK)
    cls = entry.config_class()
    if options:
        print_table(describe(cls), ["name", "default", "allowed", "help"], title=f"{cls.label} options")
        return
    if not concept:
        raise SafegenError("safegen attack needs --concept (e.g. red on the mini model; `safegen concepts`).")
    if resume and out is None:
        raise SafegenError("--resume needs --out: the run folder to finish.")
    attack_sets, guard_sets = _route(set_ or [], set(field_types(cls)), guard)
    opts = load(cls, cls.label, config, attack_sets)  # every input checked before a model is loaded
    target = resolve_concept(concept, concepts_file)
    guard_options: dict[str, Any] = {}
    if guard != "none" or strength or guard_config or guard_sets:
        _, guard_options = guard_inputs(guard, target, strength, guard_config, guard_sets, model)
    listed = None
    if prompts is not None:
        from safegen.promptsets.table import read_prompt_list

        listed = read_prompt_list(prompts, prompt_column)
    with StageBars() as bars:
        result = run_attack(
            name, target, model=model, adapter=str(adapter) if adapter else None, guard=guard,
            guard_options=guard_options, options=opts, prompts=listed, limit=limit, targets=targets.value,
            target_images=target_images, images=images, steps=steps, cfg=cfg, seed=seed,
            judge_preset=judge_preset.value, device=device.value, out=out, resume=resume, progress=bars,
        )  # fmt: skip
    if json:
        print_json(result)
        return
    print_mapping(result, title=f"safegen attack --attack {name} --concept {concept}")


def _route(items: list[str], attack_keys: set[str], guard: str) -> tuple[list[str], list[str]]:
    """``--set`` items: the attack's own keys go to the attack, the others to the guard."""
    mine = [i for i in items if i.partition("=")[0].strip() in attack_keys]
    rest = [i for i in items if i not in mine]
    if rest and guard == "none":
        return items, []  # the attack reports the unknown key
    return mine, rest


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)
