"""The ``safegen`` command line.

Each verb is a thin function that declares its options and forwards to an importable function that
returns data (``safegen.api``, ``safegen.concepts``, ``safegen.methods``, ``safegen.loader``,
``safegen.bench.mini``); this module only prints. Backends are imported inside the verbs, so
``safegen --help`` is fast and works before torch is loaded.

    safegen generate "a red striped circle" --n 4 --out outputs/demo
    safegen classify outputs/demo --classifier mini
    safegen concepts --json
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from safegen import api, cli_bench, cli_erase
from safegen.api import ClassifierName, Device, DType, NudeNetPreset
from safegen.cli_ui import print_error, print_json, print_mapping, print_table, progress_bar
from safegen.errors import SafegenError

app = typer.Typer(
    name="safegen",
    help="Make text-to-image models safe: erase concepts, guard generation, measure the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Reproducible benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
cli_bench.register(app, bench_app)  # bench i2p, bench attack, report
cli_erase.register(app)  # erase

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundled model name, local folder or hub id.")]
GuardOpt = Annotated[
    str, typer.Option("--guard", "-g", help="Inference guard: none, or a guard of `safegen methods`.")
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the first image; image k gets seed + k.")
]
ConceptOpt = Annotated[
    str | None,
    typer.Option("--concept", help="Concept the guard acts against (`safegen concepts`; mini: red, ...)."),
]
StrengthOpt = Annotated[
    str | None,
    typer.Option("--strength", help="Guard preset: weak, medium or strong (sld also max) [default: medium]."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Guard option KEY=VALUE (repeatable; `safegen guards` lists them)."),
]
GuardConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--guard-config", exists=True, dir_okay=False, readable=True, help="YAML file of guard options."
    ),
]
ConceptsFileOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--concepts-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Extra concepts YAML (repeatable); same format as safegen/data/concepts.yaml.",
    ),
]


# --------------------------------------------------------------------------- generate
@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.", show_default=False)],
    model: ModelOpt = "mini",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Images per prompt.")] = 1,
    seed: SeedOpt = 0,
    steps: StepsOpt = 20,
    cfg: Annotated[
        float | None,
        typer.Option("--cfg", min=0.0, help="Guidance scale [default: the model's own; SD: 7.5]."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", file_okay=False, help="Output folder [default: outputs/<time>]."),
    ] = None,
    device: Annotated[Device, typer.Option("--device", help="Where to run.")] = Device.AUTO,
    dtype: Annotated[DType, typer.Option("--dtype", help="Weights dtype.")] = DType.AUTO,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per UNet batch.")] = 8,
    guard: GuardOpt = "none",
    concept: ConceptOpt = None,
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    save_masks: Annotated[
        bool, typer.Option("--save-masks", help="SP-Guard: write each step's mask as PNGs in OUT/masks/.")
    ] = False,
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", exists=True, help="LoRA adapter folder to load (e.g. from safegen erase)."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Generate images and save them as PNGs with a generation.jsonl record."""
    guard_obj: Any = guard
    if guard != "none" or concept or strength or set_ or guard_config or save_masks:
        from safegen.guards import build_guard

        if save_masks and guard != "sp":
            raise SafegenError("--save-masks needs --guard sp (the only guard with masks).")
        extra = {"keep_masks": True} if save_masks else {}
        guard_obj = build_guard(
            guard, concept, strength, guard_config, set_ or [], model=model, **extra
        )  # every guard input is checked here, before the model is loaded or anything is written
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
        from safegen.methods.sp_guard import save_masks as write_masks

        result["masks"] = [str(p) for p in write_masks(guard_obj, result["files"])]
    if json:
        print_json(result)
        return
    rows = [{"file": r["path"], "seed": r["seed"], "prompt": r["prompt"]} for r in result["records"]]
    print_table(rows, ["file", "seed", "prompt"])
    typer.echo(f"Wrote {len(result['files'])} images to {result['out']}")
    if save_masks:
        typer.echo(f"Wrote {len(result['masks'])} masks to {Path(result['out']) / 'masks'}")


# --------------------------------------------------------------------------- classify
@app.command()
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


# --------------------------------------------------------------------------- registries
@app.command()
def models(json: JsonOpt = False) -> None:
    """List the bundled models."""
    from safegen.loader import list_models

    rows = list_models()
    if json:
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "available", "description", "path"], title="Models")


@app.command()
def methods(json: JsonOpt = False) -> None:
    """List the safety methods, what they target and how far along they are."""
    from safegen.methods import list_methods

    rows = list_methods()
    if json:
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "family", "baseline", "status", "summary"], title="Methods")


@app.command()
def concepts(concepts_file: ConceptsFileOpt = None, json: JsonOpt = False) -> None:
    """List the concepts that can be erased or guarded against."""
    from safegen.concepts import list_concepts

    rows = list_concepts(concepts_file or [])
    if json:
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "axis", "keywords", "safe_text"], title="Concepts")


@app.command()
def guards(
    name: Annotated[str | None, typer.Argument(help="Only this guard.", show_default=False)] = None,
    json: JsonOpt = False,
) -> None:
    """List the inference guards with their presets and options (for --strength and --set)."""
    from safegen.guards import list_guards

    rows = list_guards([name] if name else None)
    if json:
        print_json(rows)
        return
    for row in rows:
        presets = ", ".join(row["presets"]) or "-"
        print_table(
            row["options"],
            ["name", "type", "default", "allowed", "help"],
            title=f"{row['name']}: {row['summary']} (presets: {presets})",
        )


# --------------------------------------------------------------------------- bench
@bench_app.command("mini")
def bench_mini(
    model: ModelOpt = "mini",
    concept: Annotated[
        str | None, typer.Option("--concept", help="Mini concept to erase (e.g. red).")
    ] = None,
    guard: GuardOpt = "none",
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", exists=True, help="Fine-tuned adapter (e.g. from VCE, SC-DPO)."),
    ] = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", min=1)] = 2,
    steps: StepsOpt = 20,
    seed: SeedOpt = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False, help="Results folder.")] = None,
    json: JsonOpt = False,
) -> None:
    """Benchmark on the mini world: concept erasure, leakage through synonyms and what is kept."""
    from safegen.bench.mini import run_bench_mini
    from safegen.bench.runs import MiniRunWriter

    settings = dict(model=model, concept=concept, guard=guard, adapter=str(adapter) if adapter else None)
    settings.update(images_per_prompt=images_per_prompt, steps=steps, seed=seed)
    if guard != "none" or strength or set_ or guard_config:
        from safegen.guards import build_guard, guard_options

        options = guard_options(guard, strength, guard_config, set_ or [])
        build_guard(guard, concept, model=model, **options)  # checks every guard input before the run
        settings["guard_options"] = options
    writer = MiniRunWriter.create(out, settings) if out else None  # the run folder, as bench i2p writes it
    with progress_bar("Benchmarking") as progress:
        result = run_bench_mini(**settings, progress=progress, on_images=writer)
    if writer:
        writer.finish(result)
    if json:
        print_json(result)
        return
    print_mapping(result, title="bench mini")


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    # transformers warns at import that torchvision is absent (safegen never needs it); keep stderr for
    # what matters. A user's own TRANSFORMERS_VERBOSITY wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        rv = app(args=argv, prog_name="safegen", standalone_mode=False)
    except SafegenError as exc:
        print_error(str(exc))
        return exc.exit_code
    except typer.Abort:
        print_error("Aborted.")
        return 130
    except OSError as exc:  # the file system said no (permissions, disk full): not a bug in safegen
        where = f": {exc.filename}" if exc.filename else ""
        print_error(f"{exc.strerror or exc}{where}")
        return 2
    except typer.TyperException as exc:  # Typer's usage errors: bad option, missing argument, out of range
        if _is_help_request(exc):
            typer.echo(exc.format_message())
            return 0
        print_error(exc.format_message())
        return getattr(exc, "exit_code", 2)
    return rv if isinstance(rv, int) else 0


def _is_help_request(exc: Exception) -> bool:
    """``safegen`` or ``safegen bench`` without arguments asks for help (Typer raises it as an error)."""
    return type(exc).__name__ == "NoArgsIsHelpError"


if __name__ == "__main__":
    raise SystemExit(main())
