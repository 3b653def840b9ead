"""CLI verb ``safegen erase``: fine-tune a model so that it no longer draws a concept.

Registered on the main app by :func:`register` (``safegen/cli.py`` calls it). The verb declares its
options, checks every input, forwards to the method's library function (SC-DPO:
:func:`safegen.methods.scdpo.run_scdpo`) and prints; progress bars show one stage at a time.

    safegen erase --method scdpo --concept red --model mini --out runs/scdpo-red
    safegen erase --method scdpo --concept red --set beta=2500 --set gamma=0 --steps 100 --out runs/g0
    safegen erase --method scdpo --concept red --out runs/scdpo-red --resume      # continue a run
    safegen erase --method scdpo --options                                        # every option
    accelerate launch --multi_gpu --num_processes 2 -m safegen erase --method scdpo --concept red --out runs/x

The output folder is a LoRA in diffusers' format: ``safegen generate --adapter OUT``,
``safegen bench mini --adapter OUT``, or plain diffusers ``pipe.load_lora_weights(OUT)``.
"""

from __future__ import annotations

from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from safegen.api import Device
from safegen.cli_ui import print_json, print_mapping, print_table, progress_bar
from safegen.errors import SafegenError


class Stage(str, Enum):
    COST = "cost"
    PAIRS = "pairs"
    TRAIN = "train"
    ALL = "all"


def register(app: typer.Typer) -> None:
    app.command("erase")(erase)


def erase(
    method: Annotated[str, typer.Option("--method", help="Erasure method (`safegen methods`): scdpo.")],
    concept: Annotated[
        str | None, typer.Option("--concept", help="Concept to erase (`safegen concepts`; mini: red, ...).")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Bundled model name, local folder or hub id.")
    ] = "mini",
    config: Annotated[
        Path | None,
        typer.Option("--config", exists=True, dir_okay=False, readable=True, help="YAML file of options."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Option KEY=VALUE (repeatable; see --options).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", file_okay=False, help="Run folder (default: runs/scdpo-<concept>-<time>)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also write the full fine-tuned pipeline to OUT/merged.")
    ] = False,
    stage: Annotated[
        Stage, typer.Option("--stage", help="Stop after this stage (cost, pairs) or run them all.")
    ] = Stage.ALL,
    device: Annotated[Device, typer.Option("--device", help="Where to run.")] = Device.AUTO,
    options: Annotated[bool, typer.Option("--options", help="List the method's options and exit.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")] = False,
) -> None:
    """Erase a concept by fine-tuning (a LoRA in diffusers' format, loadable with --adapter)."""
    check_method(method)
    from safegen.methods.scdpo_config import describe_options, load_config

    if options:
        print_table(
            describe_options(), ["name", "stage", "default", "allowed", "help"], title="SC-DPO options"
        )
        return
    if not concept:
        raise SafegenError("safegen erase needs --concept (e.g. red on the mini model; `safegen concepts`).")
    cfg = load_config(config, set_ or [], steps)  # every option checked before a model is loaded
    from safegen.methods.scdpo import run_scdpo

    with StageBars() as bars:
        result = run_scdpo(
            concept,
            model=model,
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


def check_method(name: str) -> None:
    """Only implemented fine-tuning methods pass; a guard or a planned method is a one-line error."""
    from safegen.methods import MethodKind, get_method

    method = get_method(name)
    if method.kind is not MethodKind.ERASE:
        raise SafegenError(
            f"'{name}' is an inference guard, not an erasure method: use safegen generate --guard {name}."
        )
    if name != "scdpo":
        raise SafegenError(f"Erasure method '{name}' is not implemented yet (status: {method.status.value}).")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures worth a glance: AUROC, pair counts, final DPO metrics, timings, files."""
    stages = result.get("stages", {})
    cost, pairs, train = stages.get("cost", {}), stages.get("pairs", {}), stages.get("train", {})
    final = train.get("final", {})
    return {
        "out": result.get("out"),
        "cost model": {
            "holdout_auroc": cost.get("holdout_auroc"),
            "reused": cost.get("reused"),
            "seconds": cost.get("seconds"),
        },
        "pairs": {**pairs.get("n_pairs", {}), "reused": pairs.get("reused"), "seconds": pairs.get("seconds")},
        "training": {
            "steps": train.get("steps"),
            "loss": final.get("loss"),
            "rewards/accuracies": final.get("rewards/accuracies"),
            "rewards/margins": final.get("rewards/margins"),
            "seconds": train.get("seconds"),
        },
        "adapter": result.get("adapter"),
        "merged": result.get("merged"),
    }


class StageBars(ExitStack):
    """``progress(stage, done, total)``: one progress bar per stage, the previous one closed first."""

    def __init__(self) -> None:
        super().__init__()
        self.stage: str | None = None
        self.update: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.update = stage, self.enter_context(progress_bar(stage.capitalize()))
        self.update(done, total)
