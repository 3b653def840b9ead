"""Autoregressive text-to-image models: LlamaGen (own implementation) and Janus (through transformers).

    >>> from safegen.ar import load_ar_model
    >>> model = load_ar_model("path/to/llamagen")           # t2i_XL_stage1_256.pt + vq_ds16_t2i.pt (+ T5)
    >>> model = load_ar_model("deepseek-community/Janus-Pro-1B")
    >>> tokens = model.generate_tokens(["a red circle"], seeds=[0])

A LlamaGen folder holds either LlamaGen's official files (``t2i_*.pt`` and ``vq_*.pt``; FLAN-T5-XL from a
``flan-t5-xl/`` or ``t5-ckpt/flan-t5-xl/`` subfolder, else the hub id ``google/flan-t5-xl``) or a
``llamagen.json`` that names the weight files, the GPT and VQ configs, the text encoder and the sampling
defaults (the bundled ``mini-ar`` and :func:`save_llamagen` use it). Official ``.pt`` files are read with
``torch.load(weights_only=True)`` (``argparse.Namespace``, which LlamaGen's trainers store under
``"args"``, is the one class allowed besides tensors and containers); the state dict is taken from
``"model"``, ``"module"`` or ``"state_dict"``, as LlamaGen's sampling scripts do. safegen's own files are
safetensors.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from safegen.ar.interface import ARModel, eval_mode
from safegen.ar.llamagen import GPTConfig, LlamaGenBackbone, LlamaGenGPT, TextConditioner
from safegen.ar.protocols import ImageTokenizer, Prefix
from safegen.ar.sampler import SamplingConfig
from safegen.ar.vq import VQConfig, VQModel
from safegen.errors import SafegenError
from safegen.hub import from_pretrained

__all__ = [
    "ARModel",
    "ImageTokenizer",
    "Prefix",
    "SamplingConfig",
    "detect_ar_folder",
    "eval_mode",
    "load_ar_model",
    "read_state_dict",
    "save_llamagen",
]

SPEC_FILE = "llamagen.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
STATE_KEYS = ("model", "module", "state_dict")
IGNORED = re.compile(r"(^|\.)(freqs_cis|causal_mask|kv_cache\.[kv]_cache|codebook_used)$")
LLAMAGEN_DEFAULTS = {"cfg": 7.5, "temperature": 1.0, "top_k": 1000, "top_p": 1.0}
T5_HUB_ID = "google/flan-t5-xl"
T5_FOLDERS = ("flan-t5-xl", "t5-ckpt/flan-t5-xl")


def detect_ar_folder(path: Path) -> str | None:
    """``"llamagen"``, ``"janus"`` or None for a folder, from its files alone (nothing is loaded)."""
    if (path / SPEC_FILE).is_file() or (_official_file(path, "t2i_") and _official_file(path, "vq_")):
        return "llamagen"
    config = path / "config.json"
    if config.is_file():
        try:
            if json.loads(config.read_text()).get("model_type") == "janus":
                return "janus"
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
    return None


def load_ar_model(
    source: str | Path,
    family: str | None = None,
    name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ARModel:
    """Load a LlamaGen folder or a Janus folder / hub id as an :class:`ARModel` in eval mode.

    Args:
        source: a folder, or a hub id (Janus only).
        family: ``llamagen`` or ``janus``; None detects it from the folder's files (a hub id is Janus).
        name: the model's display name (default: the folder name or the hub id).

    Raises:
        SafegenError: the folder is neither, a file is missing or does not fit, the hub is offline.
    """
    device = torch.device(device)
    path = Path(source).expanduser()
    family = family or (detect_ar_folder(path) if path.is_dir() else "janus")
    if family == "janus":
        from safegen.ar.janus import load_janus

        return load_janus(str(source), name=name or path.name, device=device, dtype=dtype)
    if family != "llamagen":
        raise SafegenError(
            f"{source} is neither a LlamaGen folder ({SPEC_FILE}, or t2i_*.pt + vq_*.pt) nor Janus."
        )
    return load_llamagen(path, name=name or path.name, device=device, dtype=dtype)


# --------------------------------------------------------------------------- LlamaGen folders
def load_llamagen(path: Path, name: str, device: torch.device, dtype: torch.dtype) -> ARModel:
    """Build the GPT, VQ and text encoder a LlamaGen folder describes and load their weights."""
    spec = llamagen_spec(path)
    gpt_config, vq_config = spec["gpt_config"], spec["vq_config"]
    if gpt_config.vocab_size != vq_config.codebook_size:
        raise SafegenError(
            f"{path}: the GPT predicts {gpt_config.vocab_size} image codes but the VQ tokenizer has "
            f"{vq_config.codebook_size} (gpt.vocab_size and vq.codebook_size must match)."
        )
    text = load_text_encoder(spec["text"], path, device, dtype)  # first: a missing T5 fails fast
    if text.hidden_size != gpt_config.caption_dim:
        raise SafegenError(
            f"{path}: the text encoder gives {text.hidden_size}-d features but the GPT's caption MLP takes "
            f"{gpt_config.caption_dim}-d (gpt.caption_dim)."
        )
    gpt = _build(LlamaGenGPT, gpt_config, spec["gpt_file"], "GPT").to(device, dtype).eval()
    vq = _build(VQModel, vq_config, spec["vq_file"], "VQ").to(device, dtype).eval()
    return ARModel(
        name=name,
        source=str(path.resolve()),
        family="llamagen",
        backbone=LlamaGenBackbone(gpt, text),
        vq=vq,
        device=device,
        dtype=dtype,
        defaults={**LLAMAGEN_DEFAULTS, **spec["sampling"]},
    )


def llamagen_spec(path: Path) -> dict[str, Any]:
    """Resolve a folder's ``llamagen.json`` (or LlamaGen's official file names) into configs and files.

    Raises:
        SafegenError: the spec is not valid JSON, not of the documented shape, or its values do not make
            a GPT and a VQ config (one line, naming the file).
    """
    spec_file = path / SPEC_FILE
    try:
        return _spec(path, spec_file)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SafegenError(
            f"{spec_file}: the GPT / VQ settings are not valid ({type(exc).__name__}: {exc})."
        ) from None


def _spec(path: Path, spec_file: Path) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if spec_file.is_file():
        try:
            raw = json.loads(spec_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafegenError(f"{spec_file} is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k, {}), dict) for k in ("gpt", "vq", "text_encoder")
    ):
        raise SafegenError(f"{spec_file} must be an object whose gpt, vq and text_encoder are objects.")
    if not isinstance(raw.get("sampling", {}), dict):
        raise SafegenError(f"{spec_file}: sampling must be an object.")
    gpt, vq = dict(raw.get("gpt", {})), dict(raw.get("vq", {}))
    gpt_file = _weights_file(path, gpt.pop("weights", None), "t2i_", "GPT")
    vq_file = _weights_file(path, vq.pop("weights", None), "vq_", "VQ")
    official = re.match(r"t2i_([A-Za-z0-9]+)_.*?(\d+)$", gpt_file.stem)
    image_size = int(raw.get("image_size") or (official.group(2) if official else 256))
    vq_preset = vq.pop("preset", "VQ-8" if vq_file.stem.startswith("vq_ds8") else "VQ-16")
    vq_config = VQConfig.preset(vq_preset, **vq)
    if image_size % vq_config.downsample:
        raise SafegenError(
            f"{path}: image_size {image_size} is not a multiple of the VQ's {vq_config.downsample}."
        )
    gpt.setdefault("block_size", (image_size // vq_config.downsample) ** 2)
    preset = gpt.pop("preset", None) or (
        f"GPT-{official.group(1)}" if official and "dim" not in gpt else None
    )
    gpt_config = GPTConfig.preset(preset, **gpt) if preset else GPTConfig.from_dict(gpt)
    text = dict(raw.get("text_encoder", {}))
    text.setdefault("kind", "t5")
    text.setdefault("max_length", gpt_config.cls_token_num)
    if "path" not in text:
        local = [path / f for f in T5_FOLDERS if (path / f).is_dir()]
        text["path"] = str(local[0]) if local else T5_HUB_ID
    return {
        "gpt_config": gpt_config,
        "vq_config": vq_config,
        "gpt_file": gpt_file,
        "vq_file": vq_file,
        "text": text,
        "sampling": dict(raw.get("sampling", {})),
    }


def _official_file(path: Path, prefix: str) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.name.startswith(prefix) and f.suffix in WEIGHT_SUFFIXES)


def _weights_file(path: Path, named: str | None, prefix: str, what: str) -> Path:
    if named:
        file = path / named
        if not file.is_file():
            raise SafegenError(f"{path / SPEC_FILE} names {what} weights '{named}', which do not exist.")
        return file
    found = _official_file(path, prefix)
    if len(found) != 1:
        listed = ", ".join(f.name for f in found) or "none"
        raise SafegenError(
            f"{path} needs exactly one {what} weights file {prefix}*.pt (found: {listed}); "
            f"or name it in {SPEC_FILE}."
        )
    return found[0]


def _build(cls: type, config: Any, file: Path, what: str) -> torch.nn.Module:
    """Build ``cls(config)`` on the meta device and assign the checked weights of ``file`` to it."""
    state = read_state_dict(file)
    with torch.device("meta"):
        module = cls(config)
    check_state_dict(module, state, file, what)
    module.load_state_dict(state, strict=True, assign=True)
    return module


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from safetensors or from a ``.pt`` read with ``weights_only=True``.

    Prefixes left by ``torch.compile`` (``_orig_mod.``) and DDP (``module.``) are removed; runtime buffers
    some LlamaGen versions saved (``freqs_cis``, ``causal_mask``, KV caches, ``codebook_used``) are dropped.

    Raises:
        SafegenError: unreadable file, pickled objects, or no state dict inside.
    """
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        from safegen.files import check_safetensors

        check_safetensors(file)
        obj: Any = load_file(str(file))
    else:
        obj = _torch_load(file)
    if isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:6]))
            raise SafegenError(
                f"{file} holds no state dict under {', '.join(STATE_KEYS)} (top-level keys: {keys})."
            )
        obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise SafegenError(f"{file} is not a plain state dict (name -> tensor).")
    out = {}
    for key, value in obj.items():
        key = re.sub(r"^(_orig_mod\.|module\.)+", "", key)
        if not IGNORED.search(key):
            out[key] = value
    return out


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _torch_load(file: Path) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file is in the zip format."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise SafegenError(f"Cannot read checkpoint {file}: not a torch checkpoint.") from None
        raise SafegenError(
            f"{file} is not a plain state dict (it pickles {found.group(1)}); safegen reads .pt files with "
            "torch.load(weights_only=True) and never unpickles objects. Save {'model': state_dict} instead."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SafegenError(f"Cannot read checkpoint {file}: {first}") from None


def check_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], file: Path, what: str) -> None:
    """Name the first few missing and unexpected keys and the first shape mismatch, as one line."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{label} {', '.join(keys[:4])}{more}")
        raise SafegenError(f"{file} does not fit the {what} config: {'; '.join(parts)}.")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise SafegenError(
                f"{file} does not fit the {what} config: {key} has shape {tuple(state[key].shape)} in the "
                f"checkpoint but {tuple(shape)} in the model."
            )


def load_text_encoder(spec: dict, folder: Path, device: torch.device, dtype: torch.dtype) -> TextConditioner:
    """The caption encoder a spec names: ``kind`` t5 (``T5EncoderModel``) or clip (``CLIPTextModel``), from a
    folder (relative to the model folder) or a hub id, with its tokenizer (``tokenizer``, default: same)."""
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    classes = {"t5": T5EncoderModel, "clip": CLIPTextModel}
    if spec["kind"] not in classes:
        raise SafegenError(f"Unknown text encoder kind '{spec['kind']}' (t5 or clip).")
    model_at = _resolve(spec["path"], folder)
    tokenizer_at = _resolve(spec.get("tokenizer", spec["path"]), folder)
    encoder = from_pretrained(classes[spec["kind"]], model_at, dtype=dtype)
    tokenizer = from_pretrained(AutoTokenizer, tokenizer_at)
    if len(tokenizer) <= 2:
        raise SafegenError(f"The tokenizer at {tokenizer_at} is empty (missing vocabulary files).")
    tokenizer.model_max_length = int(spec["max_length"])
    return TextConditioner(tokenizer, encoder.to(device).eval(), int(spec["max_length"]))


def _resolve(where: str, folder: Path) -> str:
    local = folder / where
    return str(local) if local.is_dir() else where


def save_llamagen(
    out_dir: str | Path,
    gpt: LlamaGenGPT,
    vq: VQModel,
    text_encoder: Any,
    tokenizer: Any,
    *,
    image_size: int,
    kind: str = "clip",
    sampling: dict | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a LlamaGen folder in safegen's layout: ``llamagen.json``, ``gpt.safetensors``,
    ``vq.safetensors``, ``text_encoder/`` and ``tokenizer/`` (weights in ``dtype``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for module, file in ((gpt, "gpt.safetensors"), (vq, "vq.safetensors")):
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / file))
    copy.deepcopy(text_encoder).to(dtype).save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    spec = {
        "format": "safegen-llamagen/1",
        "image_size": image_size,
        "gpt": {"weights": "gpt.safetensors", **gpt.config.to_dict()},
        "vq": {"weights": "vq.safetensors", **vq.config.to_dict()},
        "text_encoder": {
            "kind": kind,
            "path": "text_encoder",
            "tokenizer": "tokenizer",
            "max_length": gpt.config.cls_token_num,
        },
        "sampling": sampling or {},
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return out
