"""CLI verb ``safegen erase``: fine-tune a model so that it no longer draws a concept.

Registered on the main app by :func:`register` (``safegen/cli.py`` calls it). The verb declares its
options, checks every input, forwards to the method's library function (SC-DPO:
:func:`safegen.recipes.scdpo.run_scdpo`, diffusion models; VCE: :func:`safegen.recipes.vce.run_vce`,
autoregressive models) and prints; progress bars show one stage at a time.

    safegen erase --method scdpo --concept red --model mini --out runs/scdpo-red
    safegen erase --method scdpo --concept red --set beta=2500 --set gamma=0 --steps 100 --out runs/g0
    safegen erase --method vce --concept red --model mini-ar --out runs/vce-red
    safegen erase --method vce --concept red --out runs/vce-red --resume          # continue a run
    safegen erase --method vce --options                                          # every option
    safegen erase --method scdpo --concept nudity --model CompVis/stable-diffusion-v1-4 \
        --prompts i2p_4703.csv --prompt-set i2p --prompt-category sexual --clean-prompts coco.txt
    accelerate launch --multi_gpu --num_processes 2 -m safegen erase --method vce --concept red --out runs/x

The output folder is a LoRA: in diffusers' format for SC-DPO (plain diffusers reads it with
``pipe.load_lora_weights(OUT)``), in PEFT's format for VCE (``peft.PeftModel.from_pretrained(gpt, OUT)``);
either loads with ``safegen generate --adapter OUT`` and ``safegen bench mini --adapter OUT``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from safegen.choices import Device, PromptSet
from safegen.cli.common import (
    ConceptOpt,
    ConceptsFileOpt,
    DeviceOpt,
    JsonOpt,
    SetOpt,
    folder_path,
    resolve_concept,
)
from safegen.cli.ui import StageBars, print_json, print_mapping, print_table
from safegen.errors import SafegenError


class Stage(str, Enum):
    COST = "cost"
    PAIRS = "pairs"
    TRAIN = "train"
    ALL = "all"


def register(app: typer.Typer) -> None:
    app.command("erase")(erase)


def erase(
    method: Annotated[
        str, typer.Option("--method", help="Erasure method (`safegen methods`): scdpo (diffusion), vce (AR).")
    ],
    concept: ConceptOpt = None,
    concepts_file: ConceptsFileOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Bundled model name, local folder or hub id (default: mini; vce: mini-ar)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", exists=True, dir_okay=False, readable=True, help="YAML file of options."),
    ] = None,
    set_: SetOpt = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="Prompts showing the concept (real concepts): TXT, CSV, JSONL or a set."
        ),
    ] = None,
    prompt_set: Annotated[
        PromptSet | None, typer.Option("--prompt-set", help="How to read --prompts (default: file).")
    ] = None,
    prompt_column: Annotated[
        str | None, typer.Option("--prompt-column", help="CSV / JSONL column of --prompts.")
    ] = None,
    prompt_category: Annotated[
        str | None,
        typer.Option("--prompt-category", help="--prompt-set i2p: categories, -name to leave one out."),
    ] = None,
    clean_prompts: Annotated[
        Path | None,
        typer.Option("--clean-prompts", help="Prompts without the concept (default: keyword rewrites)."),
    ] = None,
    clean_prompt_column: Annotated[
        str | None, typer.Option("--clean-prompt-column", help="CSV / JSONL column of --clean-prompts.")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", parser=folder_path, help="Run folder (default: runs/<method>-<concept>-<time>)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="SC-DPO: also write the fine-tuned pipeline to OUT/merged.")
    ] = False,
    stage: Annotated[
        Stage, typer.Option("--stage", help="Stop after this stage (scdpo: cost, pairs; vce: pairs) or all.")
    ] = Stage.ALL,
    device: DeviceOpt = Device.AUTO,
    options: Annotated[bool, typer.Option("--options", help="List the method's options and exit.")] = False,
    json: JsonOpt = False,
) -> None:
    """Erase a concept by fine-tuning (a LoRA adapter, loadable with --adapter)."""
    from safegen.methods import MethodKind, get_method
    from safegen.options import describe, load

    entry = get_method(method)
    if entry.kind is not MethodKind.ERASE:
        raise SafegenError(
            f"'{method}' is an inference guard, not an erasure method: use safegen generate --guard {method}."
        )
    options_class = entry.config_class()
    if options:
        rows = describe(options_class)
        print_table(
            rows, ["name", "stage", "default", "allowed", "help"], title=f"{options_class.label} options"
        )
        return
    if not concept:
        raise SafegenError("safegen erase needs --concept (e.g. red on the mini model; `safegen concepts`).")
    if stage.value not in entry.stages:
        raise SafegenError(f"--stage {stage.value} is not a stage of {method} ({', '.join(entry.stages)}).")
    if merge and method != "scdpo":
        raise SafegenError(f"--merge is not available for {method}: load the adapter with --adapter instead.")
    target = resolve_concept(concept, concepts_file, several=True)
    # every option checked before a model is loaded
    flags = {
        "steps": steps,
        "prompts": str(prompts) if prompts else None,
        "prompt_set": prompt_set.value if prompt_set else None,
        "prompt_column": prompt_column,
        "prompt_category": prompt_category,
        "clean_prompts": str(clean_prompts) if clean_prompts else None,
        "clean_prompt_column": clean_prompt_column,
    }
    cfg = load(options_class, options_class.label, config, set_ or [], flags)
    run = entry.load()
    with StageBars() as bars:
        result = run(
            target,
            model=model or entry.default_model,
            config=cfg,
            out=out,
            resume=resume,
            merge=merge,
            stage=stage.value,
            device=device.value,
            progress=bars,
        )
    if result.get("main") is False:
        return
    if json:
        print_json(result)
        return
    print_mapping(summary(result), title=f"safegen erase --method {method} --concept {concept}")
    if result.get("adapter"):
        typer.echo(f"LoRA adapter in {result['adapter']}: safegen generate --adapter {result['adapter']} ...")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures worth a glance: AUROC (SC-DPO), pair counts, final DPO metrics, timings, files."""
    stages = result.get("stages", {})
    pairs, train = stages.get("pairs", {}), stages.get("train", {})
    final = train.get("final", {})
    counts = pairs.get("n_pairs", {})
    if not isinstance(counts, dict):  # VCE: a count of pairs and one of retain samples
        counts = {"pairs": counts, "retain": pairs.get("n_retain")}
    out: dict[str, Any] = {"out": result.get("out")}
    plan = result.get("prompts", {})
    if plan:
        keys = ("read", "used", "held_out", "unused", "dropped", "counterparts")
        out["prompts"] = {k: plan.get(k) for k in keys} | {"clean": plan.get("clean", {}).get("used")}
    if "cost" in stages:
        cost = stages["cost"]
        out["cost model"] = {k: cost.get(k) for k in ("holdout_auroc", "reused", "seconds")}
    out["pairs"] = {**counts, "reused": pairs.get("reused"), "seconds": pairs.get("seconds")}
    out["training"] = {
        "steps": train.get("steps"),
        "loss": final.get("loss"),
        "rewards/accuracies": final.get("rewards/accuracies"),
        "rewards/margins": final.get("rewards/margins"),
        "seconds": train.get("seconds"),
    }
    out["adapter"] = result.get("adapter")
    if "cost" in stages:  # SC-DPO can also write the merged pipeline
        out["merged"] = result.get("merged")
    return out
