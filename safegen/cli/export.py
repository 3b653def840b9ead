"""CLI verb ``safegen export``: an erasure run's adapter in the formats people load outside safegen.

    safegen export runs/scdpo-red --format kohya --out exports/scdpo-red.safetensors  # A1111, ComfyUI
    safegen export runs/scdpo-red --format single-file --out exports/mini-no-red.safetensors
    safegen export runs/scdpo-red --format diffusers --merge --out exports/mini-no-red    # from_pretrained
    safegen export runs/vce-red --format diffusers --merge --out exports/mini-ar-no-red  # safegen's AR loader

What each format writes: :mod:`safegen.export`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from safegen.cli.common import JsonOpt
from safegen.cli.ui import print_json, print_mapping


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    run: Annotated[str, typer.Argument(help="An erasure run's folder (its LoRA adapter).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="diffusers (the LoRA folder; with --merge a merged model folder), kohya (a LoRA file in "
            "kohya-ss's layout), single-file (a merged checkpoint in Stable Diffusion's original layout).",
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", help="The file (.safetensors) or folder to write; must not exist.")
    ],
    merge: Annotated[
        bool, typer.Option("--merge", help="Merge the LoRA into the base model's weights.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Base model to merge into (default: the one the adapter was trained on)."
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights of a merged export: fp32, fp16 or bf16.")
    ] = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Export an erasure run: a LoRA in diffusers' or kohya's layout, or a merged model."""
    from safegen.export import export_run

    info = export_run(run, fmt, out, merge=merge, model=model, dtype=dtype)
    if as_json:
        print_json(info)
    else:
        print_mapping({k: v for k, v in info.items() if k != "files"}, title="export")
