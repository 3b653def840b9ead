"""Load a text-to-image model: the bundled mini model, a local diffusers folder or a Hugging Face id.

    >>> from safegen.loader import load_model
    >>> model = load_model("mini")                    # bundled, safegen/assets/mini-sd/
    >>> model = load_model("path/to/sd-folder")       # any SD 1.x/2.x diffusers layout
    >>> model = load_model("org/name", device="cuda")  # the hub (or its local cache when offline)

Every model is loaded with diffusers' ``StableDiffusionPipeline.from_pretrained`` (safetensors only, no
safety checker: safegen has its own classifiers). The pipeline is kept only as a container of components;
:mod:`safegen.generator` runs its own denoising loop over them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from safegen.bundled import BUNDLED, BundledModel
from safegen.errors import SafegenError, unknown
from safegen.files import check_safetensors
from safegen.hub import hub_offline, quiet_progress_bars

if TYPE_CHECKING:
    from safegen.ar import ARModel

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class LoadedModel:
    """A loaded diffusion model: its components, where they came from and where they run.

    ``pipe`` is the diffusers ``StableDiffusionPipeline`` used only as a container of components.
    """

    name: str
    kind: str
    source: str
    pipe: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def text_encoder(self) -> Any:
        return self.pipe.text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, then MPS, else CPU; an unavailable device is an error."""
    if device not in DEVICES:
        raise unknown("device", device, DEVICES)
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if device == "cuda" and not cuda:
        raise SafegenError(
            "Device 'cuda' was asked for but torch sees no CUDA GPU. Use --device cpu or auto."
        )
    if device == "mps" and not mps:
        raise SafegenError("Device 'mps' was asked for but MPS is not available. Use --device cpu or auto.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 on CPU/MPS; otherwise one of fp32, fp16, bf16."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, ["auto", *DTYPES])
    return DTYPES[dtype]


def load_model(
    model: str = "mini", device: str = "auto", dtype: str = "auto", offload: bool = False
) -> LoadedModel | ARModel:
    """Load a text-to-image model by bundled name, local folder or Hugging Face id.

    Diffusion models come back as a :class:`LoadedModel` (``kind == "sd"``); autoregressive ones (``mini-ar``,
    a LlamaGen checkpoint folder, a Janus folder or hub id) as a :class:`safegen.ar.ARModel`
    (``kind == "ar"``), detected from the folder's files (see :func:`model_folder_kind`).

    Args:
        model: ``mini`` or ``mini-ar`` (bundled), a local folder, or a hub id ``org/name``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        dtype: ``auto`` (fp16 on CUDA, fp32 elsewhere), ``fp32``, ``fp16`` or ``bf16``.
        offload: move each component to the GPU only while it runs (CUDA only).

    Returns:
        The loaded model, on its device, in eval mode.

    Raises:
        SafegenError: unknown name, missing or corrupt folder, bundled weights missing, hub id offline,
            unavailable device, offload off CUDA.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if offload and torch_device.type != "cuda":
        raise SafegenError(f"--offload needs a CUDA device (got '{torch_device.type}').")

    if model in BUNDLED:
        bundled = BUNDLED[model]
        if not bundled.available:
            raise _missing_weights(bundled)
        if bundled.kind == "ar":
            return _load_ar(bundled.path, "llamagen", model, torch_device, torch_dtype, offload)
        name, source, pipe = model, str(bundled.path), _load_folder(bundled.path, torch_dtype)
    elif _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise SafegenError(f"Model folder not found: {path}")
        kind = model_folder_kind(path)
        if kind != "sd":
            return _load_ar(path, kind, path.name, torch_device, torch_dtype, offload)
        name, source, pipe = path.name, str(path.resolve()), _load_folder(path, torch_dtype)
    elif HUB_ID.fullmatch(model):
        if _hub_is_janus(model):
            return _load_ar(model, "janus", model, torch_device, torch_dtype, offload)
        name, source, pipe = model, model, _load_hub(model, torch_dtype)
    else:
        raise unknown("model", model, BUNDLED)

    _check_pipeline(pipe, source)
    if offload:
        pipe.enable_model_cpu_offload(device=torch_device)
    else:
        pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(name=name, kind="sd", source=source, pipe=pipe, device=torch_device, dtype=torch_dtype)


def _missing_weights(bundled: BundledModel) -> SafegenError:
    if bundled.kind == "ar":
        return SafegenError(
            f"The bundled weights of '{bundled.name}' are not trained yet ({bundled.path} has no "
            f"{bundled.marker}); train them with `python -m safegen.mini.train_ar`, or pass a LlamaGen or "
            "Janus model."
        )
    return SafegenError(
        f"The bundled weights of '{bundled.name}' are missing ({bundled.path} has no {bundled.marker}); "
        "reinstall safegen or pass a local model folder."
    )


def model_kind(model: str) -> str | None:
    """``sd`` or ``ar`` for ``--model``, from its name or its folder's files, without loading anything.

    None for a hub id whose kind cannot be told offline (a Janus id is ``ar``).

    Raises:
        SafegenError: a folder that does not exist, or that no loader knows.
    """
    if model in BUNDLED:
        return BUNDLED[model].kind
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise SafegenError(f"Model folder not found: {path}")
        return "sd" if model_folder_kind(path) == "sd" else "ar"
    return "ar" if "janus" in model.lower() else None


def model_folder_kind(path: Path) -> str:
    """``sd`` (diffusers folder), ``llamagen`` or ``janus``, from the folder's files; else a clear error."""
    from safegen.ar import detect_ar_folder

    if (path / "model_index.json").is_file():
        return "sd"
    kind = detect_ar_folder(path)
    if kind is None:
        raise SafegenError(
            f"{path} is not a model folder safegen knows: no model_index.json (diffusers Stable Diffusion), "
            "no llamagen.json or t2i_*.pt + vq_*.pt (LlamaGen), no config.json of model_type 'janus'."
        )
    return kind


def _hub_is_janus(repo_id: str) -> bool:
    """A Janus hub id: its cached config.json says model_type 'janus', or (not cached) its name says Janus."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        try:
            return json.loads(Path(cached).read_text()).get("model_type") == "janus"
        except (OSError, ValueError, AttributeError):
            return False
    return "janus" in repo_id.lower()


def _load_ar(
    source: str | Path, family: str, name: str, device: torch.device, dtype: torch.dtype, offload: bool
) -> ARModel:
    """An autoregressive model through :func:`safegen.ar.load_ar_model`."""
    from safegen.ar import load_ar_model

    if offload:
        raise SafegenError("--offload is for diffusion models; autoregressive models load whole.")
    return load_ar_model(source, family=family, name=name, device=device, dtype=dtype)


def _looks_like_path(model: str) -> bool:
    """A local folder: it exists, or it is written like a path (``./x``, ``/x``, ``~/x``, ``x/y/z``)."""
    if Path(model).expanduser().exists():
        return True
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _load_folder(path: Path, torch_dtype: torch.dtype) -> Any:
    """Check a diffusers folder file by file, then load it (safetensors only)."""
    variant = _check_folder(path)
    return _from_pretrained(str(path), torch_dtype, variant=variant, local_files_only=True, where=str(path))


def _load_hub(repo_id: str, torch_dtype: torch.dtype) -> Any:
    """Load from the local HF cache if it is there, else from the hub; fail at once when offline."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return _from_pretrained(
            repo_id, torch_dtype, local_files_only=True, where=repo_id, passthrough=OSError
        )
    except (LocalEntryNotFoundError, OSError):
        pass  # not in the cache
    if hub_offline():
        raise SafegenError(
            f"'{repo_id}' is not in the local Hugging Face cache and the hub is offline; download it on a "
            "machine with network access, or pass a local model folder."
        )
    return _from_pretrained(repo_id, torch_dtype, where=repo_id)


def _from_pretrained(
    source: str,
    torch_dtype: torch.dtype,
    *,
    where: str,
    variant: str | None = None,
    local_files_only: bool = False,
    passthrough: type[Exception] | None = None,
) -> Any:
    """``StableDiffusionPipeline.from_pretrained`` with safegen's fixed options; errors become one line."""
    from diffusers import StableDiffusionPipeline

    try:
        with quiet_progress_bars():
            return StableDiffusionPipeline.from_pretrained(
                source,
                dtype=torch_dtype,
                variant=variant,
                use_safetensors=True,
                safety_checker=None,
                requires_safety_checker=False,
                local_files_only=local_files_only,
            )
    except Exception as e:
        if passthrough is not None and isinstance(e, passthrough):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SafegenError(f"Could not load the model {where}: {first}") from e


def _check_folder(path: Path) -> str | None:
    """Name the first thing wrong with a diffusers SD folder; return its variant (``fp16``) or None."""
    index = path / "model_index.json"
    if not index.is_file():
        raise SafegenError(f"{path} is not a diffusers model folder (no model_index.json).")
    try:
        json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafegenError(f"{index} is not valid JSON: {e}") from e
    for component in SD_COMPONENTS:
        if not (path / component).is_dir():
            raise SafegenError(f"Model folder {path} has no '{component}/' component.")
    variants = set()
    for component in WEIGHTED_COMPONENTS:
        folder = path / component
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            pickles = [f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise SafegenError(
                    f"{folder} has only pickle weights ({pickles[0]}); safegen loads safetensors only."
                )
            raise SafegenError(f"{folder} has no weights (*.safetensors).")
        for file in weights:
            check_safetensors(file)
        plain = [f for f in weights if f.name.count(".") == 1]
        variants.add(None if plain else weights[0].name.split(".")[-2])
    if len(variants) > 1:
        raise SafegenError(f"{path} mixes weight variants {sorted(map(str, variants))}; keep one.")
    return variants.pop()


def _check_pipeline(pipe: Any, source: str) -> None:
    """Catch components that loaded 'successfully' but cannot work (empty tokenizer, distilled UNet)."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    if tokenizer is None or len(tokenizer) <= 2:
        raise SafegenError(
            f"The tokenizer of {source} is empty (missing vocab.json/merges.txt or tokenizer.json)."
        )
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise SafegenError(
            f"The tokenizer of {source} has {len(tokenizer)} tokens but its text encoder only "
            f"{text_encoder.config.vocab_size}."
        )
    max_positions = text_encoder.config.max_position_embeddings
    if not 0 < tokenizer.model_max_length <= max_positions:
        raise SafegenError(
            f"The tokenizer of {source} has model_max_length={tokenizer.model_max_length}; it must be at "
            f"most the text encoder's {max_positions} positions (set it in tokenizer_config.json)."
        )
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        raise SafegenError(
            f"{source} has a guidance-distilled UNet (time_cond_proj_dim), which is not supported."
        )
