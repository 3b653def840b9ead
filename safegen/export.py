"""Erased models in the formats people load outside safegen.

``safegen export RUN --format F [--merge] --out PATH`` turns an erasure run's adapter into:

============  ==========  ====================================================================================
format        merge       writes
============  ==========  ====================================================================================
diffusers     no          the LoRA folder as it is (diffusers' ``load_lora_weights`` / a PEFT folder)
diffusers     yes         the base model with the LoRA merged into its weights: a diffusers folder
                          (``StableDiffusionPipeline.from_pretrained``), a LlamaGen folder or a Janus folder
                          (``safegen``'s AR loader)
kohya         no          one ``.safetensors`` LoRA in kohya-ss's key layout (``lora_unet_*``, ``lora_down``,
                          ``lora_up``, ``alpha``), what AUTOMATIC1111 and ComfyUI load as a LoRA
single-file   (always)    one merged ``.safetensors`` checkpoint in Stable Diffusion's original layout
                          (:mod:`safegen.ldm_layout`): AUTOMATIC1111, ComfyUI, diffusers' ``from_single_file``
============  ==========  ====================================================================================

The base model is the one the adapter was trained on (its ``adapter.json``), or ``model``. Nothing is left
behind on failure: the export is written beside ``out`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from safegen.errors import SafegenError
from safegen.files import staged

FORMATS = ("diffusers", "kohya", "single-file")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path,
    merge: bool = False,
    model: str | None = None,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """Write ``run``'s adapter as ``fmt`` to ``out``; return what was written (format, files, base model).

    Raises:
        SafegenError: not an adapter folder, a format the model kind has no use for, ``out`` exists, no
            base model to merge into, weights that do not fit the base model.
    """
    from safegen.adapters import adapter_kind, check_adapter

    if fmt not in FORMATS:
        raise SafegenError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise SafegenError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    record = check_adapter(run)
    folder = Path(run).expanduser()
    kind = adapter_kind(folder)
    target = Path(out).expanduser()
    if target.exists():
        raise SafegenError(f"{target} already exists; export writes a new file or folder.")
    if fmt in ("kohya", "single-file") and kind != "sd":
        raise SafegenError(
            f"--format {fmt} is for Stable Diffusion LoRAs; {folder} is an autoregressive model's adapter "
            "(use --format diffusers, with --merge for a merged model folder)."
        )
    if fmt == "kohya" and merge:
        raise SafegenError("--format kohya writes a LoRA; a merged checkpoint is --format single-file.")
    if fmt in ("kohya", "single-file") and target.suffix != ".safetensors":
        raise SafegenError(f"--format {fmt} writes one file: give --out a name ending in .safetensors.")
    merge = merge or fmt == "single-file"
    base = model or trained_on(record.get("base_model", {}))
    if merge and not base:
        raise SafegenError(f"{folder}/adapter.json names no base model; pass --model to merge into one.")
    info = {"format": fmt, "merged": merge, "run": str(folder), "out": str(target), "dtype": dtype}
    with staged(target) as tmp:
        if not merge:
            info["files"] = _write_lora(folder, fmt, tmp, record)
        else:
            info["base_model"] = base
            info["files"] = _write_merged(folder, fmt, tmp, base, DTYPES[dtype], record)
    return info


def trained_on(base: dict[str, Any]) -> str | None:
    """The base model an adapter record names: its source (a folder or hub id), or, for a bundled model
    whose folder is not where it was (another installation), the bundled name."""
    from safegen.bundled import BUNDLED

    source, name = base.get("source"), base.get("name")
    if name in BUNDLED and not (source and Path(source).exists()):
        return name
    return source or name


# --------------------------------------------------------------------------- LoRA files
def _write_lora(folder: Path, fmt: str, tmp: Path, record: dict) -> list[str]:
    from safetensors.torch import save_file

    from safegen.adapters import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, RECORD_FILE, WEIGHTS_FILE

    if fmt == "diffusers":
        tmp.mkdir()
        files = (WEIGHTS_FILE, PEFT_WEIGHTS_FILE, PEFT_CONFIG_FILE, RECORD_FILE)
        names = [n for n in files if (folder / n).is_file()]
        for name in names:
            shutil.copy2(folder / name, tmp / name)
        return names
    state = kohya_state(folder / WEIGHTS_FILE)
    save_file(state, str(tmp), metadata={"ss_network_module": "networks.lora", "safegen": json.dumps(record)})
    return [tmp.name]


def kohya_state(file: Path) -> dict[str, torch.Tensor]:
    """kohya-ss keys: ``lora_unet_<path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
    from safegen.adapters import lora_layers

    out = {}
    for name, layer in lora_layers(file).items():
        part, module = name.split(".", 1)
        key = ("lora_unet_" if part == "unet" else "lora_te_") + module.replace(".", "_")
        out[f"{key}.lora_down.weight"] = layer["down"].float().contiguous()
        out[f"{key}.lora_up.weight"] = layer["up"].float().contiguous()
        out[f"{key}.alpha"] = torch.tensor(layer["alpha"])
    return out


# --------------------------------------------------------------------------- merged models
def _write_merged(
    folder: Path, fmt: str, tmp: Path, base: str, dtype: torch.dtype, record: dict
) -> list[str]:
    from safegen.adapters import attach_adapter
    from safegen.loader import load_model

    loaded = load_model(base, device="cpu", dtype="fp32")
    attach_adapter(loaded, folder)
    if loaded.kind == "ar":
        return _write_merged_ar(loaded, tmp, dtype)
    pipe = loaded.pipe
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay
    if fmt == "single-file":
        from safetensors.torch import save_file

        from safegen.ldm_layout import pipeline_to_ldm

        save_file(pipeline_to_ldm(pipe, dtype), str(tmp), metadata={"safegen": json.dumps(record)})
        return [tmp.name]
    from safegen.hub import text_encoder_loads_in_float32

    pipe.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
    if dtype != torch.float32:
        text_encoder_loads_in_float32(tmp / "text_encoder" / "config.json")
    (tmp / "export.json").write_text(json.dumps({"adapter": record, "merged": True}, indent=2) + "\n")
    return folder_files(tmp)


def _write_merged_ar(model: Any, tmp: Path, dtype: torch.dtype) -> list[str]:
    """Merge the PEFT LoRA into LlamaGen's GPT or the Janus model; write a folder the AR loader reads."""
    merged = model.peft.merge_and_unload()
    model.peft = None
    if model.family == "llamagen":
        from safegen.ar import llamagen_spec, save_llamagen

        spec, text = llamagen_spec(Path(model.source)), model.backbone.text
        save_llamagen(
            tmp, merged, model.vq, text.encoder, text.tokenizer, image_size=model.image_size,
            kind=spec["text"]["kind"], sampling=spec["sampling"], dtype=dtype,
        )  # fmt: skip
    else:
        merged.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
        model.backbone.tokenizer.save_pretrained(str(tmp))
    return folder_files(tmp)


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder``, relative, sorted (what an export wrote)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
