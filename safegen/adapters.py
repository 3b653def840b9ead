"""LoRA adapters: save them from a trained model, load and unload them on a loaded model.

Two formats, one per model kind, chosen by the files in the folder:

- diffusion models (``kind == "sd"``): ``pytorch_lora_weights.safetensors``, exactly what diffusers'
  ``StableDiffusionPipeline.load_lora_weights(folder)`` reads, LoRA alpha included in its metadata
  (written by SC-DPO);
- autoregressive models (``kind == "ar"``): a PEFT folder, ``adapter_model.safetensors`` +
  ``adapter_config.json``, exactly what ``peft.PeftModel.from_pretrained(gpt, folder)`` reads, on the
  LlamaGen GPT or the ``JanusForConditionalGeneration`` (written by VCE).

Both hold ``adapter.json`` too, safegen's record of the adapter (method, concept, base model, settings).
``safegen generate --adapter`` and ``safegen bench mini --adapter`` load either through
:func:`attach_adapter`, which dispatches on the model's kind.

    >>> from safegen.adapters import use_adapter
    >>> with use_adapter(model, "runs/scdpo-red"):
    ...     images = generate(model, ["a red circle"])
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
RECORD_FILE = "adapter.json"
ADAPTER_NAME = "safegen"
KIND_WORDS = {"sd": "a diffusion model", "ar": "an autoregressive model"}


def adapter_kind(folder: Path) -> str | None:
    """``sd`` (diffusers LoRA), ``ar`` (PEFT LoRA) or None, from the folder's files."""
    if (folder / WEIGHTS_FILE).is_file():
        return "sd"
    if (folder / PEFT_WEIGHTS_FILE).is_file() and (folder / PEFT_CONFIG_FILE).is_file():
        return "ar"
    return None


def check_adapter(path: str | Path) -> dict[str, Any]:
    """Check an adapter folder before a model is loaded; return its ``adapter.json`` record ({} if none).

    Raises:
        SafegenError: not a folder, no weights file, a corrupt weights file or record.
    """
    from safegen.files import check_safetensors

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SafegenError(f"Adapter folder not found: {folder}")
    kind = adapter_kind(folder)
    if kind is None:
        raise SafegenError(
            f"{folder} is not a LoRA adapter folder (no {WEIGHTS_FILE}, nor {PEFT_WEIGHTS_FILE} with "
            f"{PEFT_CONFIG_FILE})."
        )
    check_safetensors(folder / (WEIGHTS_FILE if kind == "sd" else PEFT_WEIGHTS_FILE))
    if kind == "ar":
        check_peft_config(folder / PEFT_CONFIG_FILE)
    record_file = folder / RECORD_FILE
    if not record_file.is_file():
        return {}
    try:
        record = json.loads(record_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafegenError(f"{record_file} is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise SafegenError(f"{record_file} must hold a JSON object.")
    return record


def check_peft_config(path: Path) -> None:
    """A PEFT LoRA's ``adapter_config.json``: an object with a LoRA's rank, alpha and target modules."""
    from safegen.files import read_json

    raw = read_json(path, "adapter config")
    if not isinstance(raw, dict):
        raise SafegenError(f"{path} must hold a JSON object (a PEFT LoRA's settings).")
    if raw.get("peft_type", "LORA") != "LORA":
        raise SafegenError(f"{path} is a {raw.get('peft_type')!r} adapter; safegen loads LoRA adapters.")
    rank, alpha, targets = raw.get("r"), raw.get("lora_alpha"), raw.get("target_modules")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SafegenError(f"{path}: 'r' must be a positive integer, got {str(rank)[:40]!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise SafegenError(f"{path}: 'lora_alpha' must be a number, got {str(alpha)[:40]!r}.")
    if not (
        isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise SafegenError(f"{path}: 'target_modules' must be a string or a list of strings.")


def attach_adapter(model: Any, path: str | Path, scale: float = 1.0) -> dict[str, Any]:
    """Load the LoRA of ``path`` into ``model`` (a diffusion ``LoadedModel`` or an ``ARModel``), active.

    Returns:
        The adapter's record (``adapter.json``), or {}.

    Raises:
        SafegenError: a bad folder, an adapter for the other kind of model, or weights that do not fit
            the model (another base model).
    """
    record = check_adapter(path)
    folder = Path(path).expanduser()
    kind = adapter_kind(folder)
    if kind != model.kind:
        raise SafegenError(
            f"{folder} is a LoRA for {KIND_WORDS[kind]}, but {model.source} is {KIND_WORDS[model.kind]}."
        )
    try:
        with quiet_libraries():
            if model.kind == "ar":
                _attach_peft(model, folder, scale)
            else:
                _check_layers_exist(model.unet, folder / WEIGHTS_FILE)
                model.pipe.load_lora_weights(str(folder), adapter_name=ADAPTER_NAME)
                if ADAPTER_NAME not in model.pipe.get_list_adapters().get("unet", []):
                    raise SafegenError("none of its LoRA weights matches a layer of the UNet")
                model.pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
    except Exception as exc:  # the file is read here: whatever the libraries raise for it, one line
        detach_adapter(model)
        base = record.get("base_model", {}).get("source")
        hint = f" It was trained on {base}." if base else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SafegenError(f"Cannot load adapter {folder} into {model.source}: {first}{hint}") from None
    return record


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers', transformers' and peft's own messages and warnings (safegen reports one line)."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR + 10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def detach_adapter(model: Any) -> None:
    """Remove every LoRA from ``model`` (the base weights are unchanged)."""
    if model.kind == "ar":
        if model.peft is not None:
            model.peft.unload()  # puts the original layers back into the same module
            model.peft = None
        return
    model.pipe.unload_lora_weights()


@contextmanager
def use_adapter(model: Any, path: str | Path | None, scale: float = 1.0) -> Iterator[dict[str, Any]]:
    """:func:`attach_adapter` for a block (nothing when ``path`` is None); removed in ``finally``."""
    if path is None:
        yield {}
        return
    record = attach_adapter(model, path, scale)
    try:
        yield record
    finally:
        detach_adapter(model)


# --------------------------------------------------------------------------- autoregressive models (PEFT)
def ar_lora_module(model: Any) -> Any:
    """The module of an AR model that carries its LoRA: LlamaGen's GPT, or the whole Janus model."""
    return model.backbone.gpt if model.family == "llamagen" else model.backbone.model


def add_peft_lora(model: Any, config: Any, adapter_name: str = "default") -> Any:
    """``peft.get_peft_model`` on :func:`ar_lora_module` (layers changed in place); the base is recorded.

    Returns:
        The ``peft.PeftModel``; the AR model keeps calling its own module, which now carries the LoRA.
    """
    import warnings

    from peft import get_peft_model

    config.base_model_name_or_path = None  # else peft warns that it renames it to the module's (none)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations that peft still calls
        peft_model = get_peft_model(ar_lora_module(model), config, adapter_name=adapter_name)
    peft_model.peft_config[adapter_name].base_model_name_or_path = model.source  # in adapter_config.json
    return peft_model


def _attach_peft(model: Any, folder: Path, scale: float) -> None:
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    detach_adapter(model)
    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = True  # adapter weights frozen
    model.peft = add_peft_lora(model, config, ADAPTER_NAME)
    load_peft_state(model.peft, folder)
    model.peft.to(model.device)
    if scale != 1.0:
        for layer in model.peft.modules():
            if isinstance(layer, LoraLayer):
                layer.set_scale(ADAPTER_NAME, scale)


def save_peft_adapter(peft_model: Any, folder: str | Path, record: Mapping[str, Any] | None = None) -> Path:
    """Write a ``peft.PeftModel``'s active LoRA as a PEFT folder (+ ``adapter.json``); return the folder."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = peft_model.active_adapter
    state = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    save_file(state, str(folder / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    peft_model.peft_config[name].save_pretrained(str(folder))  # adapter_config.json
    _write_record(folder, record)
    return folder


def load_peft_state(peft_model: Any, folder: str | Path) -> None:
    """Load a PEFT folder's weights into the ``peft.PeftModel``'s active adapter (to resume or attach).

    Raises:
        SafegenError: the weights do not match the adapter (another rank or target modules).
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / PEFT_WEIGHTS_FILE))
    result = set_peft_model_state_dict(peft_model, state, adapter_name=peft_model.active_adapter)
    _check_loaded(result, folder)


# --------------------------------------------------------------------------- diffusion models (diffusers)
def _check_layers_exist(unet: Any, file: Path) -> None:
    """Every UNet layer a diffusers LoRA file names must exist (else diffusers fails obscurely)."""
    modules = {name for name, _ in unet.named_modules()}
    names = [n.split(".", 1)[1] for n in lora_layers(file) if n.startswith("unet.")]
    missing = [n for n in names if n not in modules]
    if missing:
        raise SafegenError(
            f"{len(missing)} of its {len(names)} UNet LoRA layers are not layers of this UNet "
            f"(e.g. {missing[0]!r})"
        )


def lora_layers(file: Path) -> dict[str, dict[str, Any]]:
    """A diffusers LoRA file as ``{component.module path: {down, up, alpha}}`` (either key style).

    Alpha comes from the file's PEFT metadata (``lora_alpha``, ``alpha_pattern``); without it, alpha is
    the rank (scale 1), as diffusers reads such files.
    """
    import re

    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    pattern = re.compile(r"^(unet|text_encoder)\.(.+)\.(lora\.down|lora\.up|lora_A|lora_B)\.weight$")
    layers: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        match = pattern.match(key)
        if not match:
            raise SafegenError(f"{file}: unexpected LoRA key {key!r} (not a diffusers LoRA file).")
        part, module, which = match.groups()
        slot = "down" if which in ("lora.down", "lora_A") else "up"
        layers.setdefault(f"{part}.{module}", {})[slot] = value
    for name, layer in layers.items():
        part, module = name.split(".", 1)
        rank = layer["down"].shape[0]
        alpha = meta.get(f"{part}.alpha_pattern", {}).get(module, meta.get(f"{part}.lora_alpha", rank))
        layer["alpha"] = float(alpha)
        if "up" not in layer:
            raise SafegenError(f"{file}: {name} has a down projection but no up projection.")
    return layers


def save_adapter(unet: Any, folder: str | Path, record: Mapping[str, Any] | None = None) -> Path:
    """Write the UNet's active LoRA (peft, added with ``unet.add_adapter``) as a diffusers adapter folder.

    Args:
        unet: a diffusers UNet with a peft adapter (unwrapped from DDP).
        folder: created if needed; gets ``pytorch_lora_weights.safetensors`` and ``adapter.json``.
        record: what to write in ``adapter.json`` (method, concept, base model, settings).

    Returns:
        The folder.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(unet)
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    config = unet.peft_config[unet.active_adapters()[0]].to_dict()  # rank, alpha, targets: kept on load
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=convert_state_dict_to_diffusers(state),
        safe_serialization=True,
        unet_lora_adapter_metadata=config,
    )
    _write_record(folder, record)
    return folder


def _write_record(folder: Path, record: Mapping[str, Any] | None) -> None:
    if record is not None:
        (folder / RECORD_FILE).write_text(json.dumps(dict(record), indent=2, default=str) + "\n")


def _check_loaded(result: Any, folder: str | Path) -> None:
    """Every LoRA weight of the model found in the file, and nothing else (``set_peft_model_state_dict``)."""
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if getattr(result, "unexpected_keys", None) or missing:
        raise SafegenError(f"The adapter in {folder} does not match the model's LoRA layers.")


def load_adapter_state(unet: Any, folder: str | Path) -> None:
    """Load an adapter folder's weights into the UNet's existing peft adapter (to resume training).

    Raises:
        SafegenError: the weights do not match the adapter (another rank or target modules).
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    raw = load_file(str(Path(folder) / WEIGHTS_FILE))
    state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in raw.items()})
    _check_loaded(set_peft_model_state_dict(unet, state), folder)


# --------------------------------------------------------------------------- training checkpoints
def _is_peft(module: Any) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


def save_checkpoint(
    folder: Path, unet: Any, optimizer: Any, step: int, record: Mapping[str, Any], keep: int
) -> Path:
    """Write ``<folder>/step-<N>/``: the adapter so far, the optimiser state and the step, then prune.

    ``unet``: a diffusers model with a peft adapter (diffusers format) or a ``peft.PeftModel`` (PEFT format).

    The checkpoint is written to a hidden folder and renamed when complete, so a crash never leaves a
    half-written one; only the newest ``keep`` are kept (0: all). Each is itself a loadable adapter.
    """
    from safetensors import SafetensorError

    final, tmp = folder / f"step-{step:07d}", folder / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (save_peft_adapter if _is_peft(unet) else save_adapter)(unet, tmp, record)
        save_optimizer_state(optimizer.state_dict(), tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step}) + "\n")
    except (OSError, SafetensorError) as exc:  # a full disk: safetensors raises its own error
        shutil.rmtree(tmp, ignore_errors=True)
        raise SafegenError(
            f"Cannot write the checkpoint of step {step} in {folder} ({exc}); earlier checkpoints are "
            "intact: free some space and run the same command with --resume."
        ) from None
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(folder.glob("step-*"))[:-keep] if keep else []:
        shutil.rmtree(old)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``step-<N>`` checkpoint in ``folder``, or None."""
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load_checkpoint(checkpoint: Path, unet: Any, optimizer: Any) -> int:
    """Restore the adapter and the optimiser state of a checkpoint; return its step."""
    (load_peft_state if _is_peft(unet) else load_adapter_state)(unet, checkpoint)
    optimizer.load_state_dict(load_optimizer_state(checkpoint / "optimizer.safetensors"))
    return int(json.loads((checkpoint / "state.json").read_text())["step"])


def save_optimizer_state(state: Mapping[str, Any], path: Path) -> None:
    """An optimiser ``state_dict`` as safetensors: tensors as ``<param>.<key>``, the rest as JSON metadata."""
    import torch
    from safetensors.torch import save_file

    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    meta = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=meta)


def load_optimizer_state(path: Path) -> dict[str, Any]:
    """The inverse of :func:`save_optimizer_state` (no pickle)."""
    from safetensors import safe_open

    state: dict[int, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        for name in f.keys():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = f.get_tensor(name)
    for name, value in json.loads(meta["scalars"]).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


def merge_adapter(model_source: str, folder: str | Path, out: str | Path) -> Path:
    """Fuse an adapter into its base model and save the result as a full diffusers pipeline folder.

    Args:
        model_source: what ``load_model`` accepts (bundled name, folder, hub id) for the base model.
        folder: the adapter folder.
        out: the pipeline folder to write (loadable with ``load_model`` / ``from_pretrained``).
    """
    from safegen.loader import load_model

    model = load_model(model_source, device="cpu", dtype="fp32")
    attach_adapter(model, folder)
    model.pipe.fuse_lora(adapter_names=[ADAPTER_NAME], lora_scale=1.0)
    model.pipe.unload_lora_weights()
    model.pipe.save_pretrained(str(out), safe_serialization=True)
    return Path(out)
