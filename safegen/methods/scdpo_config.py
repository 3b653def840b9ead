"""SC-DPO's settings: one dataclass, every option with its stage, range or choices, and a help text.

Settings come in layers, later ones winning::

    dataclass defaults  <  --config FILE.yaml  <  --set KEY=VALUE  <  --steps N

A config file is a YAML mapping of option names to values (read with ``yaml.safe_load``)::

    # safegen erase --method scdpo --concept red --config scdpo-red.yaml --out runs/scdpo-red
    beta: 2500
    gamma: 0

Values are checked strictly: an unknown key, a wrong type or a value out of range is a one-line
:class:`~safegen.errors.SafegenError`, never silently corrected. The defaults are **provisional** until
``benchmarks/sweep_scdpo.py`` has run on the mini world.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safegen.errors import SafegenError, unknown

NOISY_KEYS = {"steps", "save_every", "keep_checkpoints", "log_every"}  # may change on --resume


def option(default: Any, stage: str, *, low=None, high=None, choices=None, help: str = "") -> Any:  # noqa: A002
    """A config field with its stage (``cost``, ``pairs``, ``train``), valid range or choices, and help."""
    meta = {"stage": stage, "low": low, "high": high, "choices": choices, "help": help}
    return field(default=default, metadata=meta)


@dataclass
class SCDPOConfig:
    """Every choice SC-DPO makes. Defaults are provisional (to be set by ``benchmarks/sweep_scdpo.py``)."""

    seed: int = option(0, "cost", low=0, high=2**31 - 1, help="seed of every stage")
    # stage 1: the safety cost model
    encoder: str = option(
        "auto", "cost", help="auto | mini | FILE.safetensors (mini encoder) | CLIP id or folder"
    )
    cost_data: str = option(
        "auto",
        "cost",
        choices=("auto", "render", "generate", "folder"),
        help="labelled images: auto = render on the mini world, generate elsewhere",
    )
    cost_folder: str = option("", "cost", help="with cost_data=folder: a folder holding safe/ and harmful/")
    cost_images: int = option(2000, "cost", low=8, high=1_000_000, help="labelled images, half harmful")
    cost_holdout: float = option(0.2, "cost", low=0.05, high=0.5, help="share held out for the AUROC")
    cost_steps: int = option(300, "cost", low=1, high=100_000, help="full-batch steps of the head")
    cost_lr: float = option(3e-3, "cost", low=1e-6, high=1.0, help="head learning rate (AdamW)")
    cost_hidden: int = option(128, "cost", low=4, high=4096, help="head width")
    cost_proj_dim: int = option(32, "cost", low=2, high=1024, help="contrastive embedding size")
    cost_temperature: float = option(0.1, "cost", low=0.01, high=10.0, help="InfoNCE temperature")
    cost_contrastive_weight: float = option(1.0, "cost", low=0.0, high=100.0, help="weight of InfoNCE")
    cost_anchor_weight: float = option(1.0, "cost", low=0.0, high=100.0, help="weight of cost anchoring")
    # stage 2: preference pairs
    n_harmful_prompts: int = option(64, "pairs", low=1, high=1_000_000, help="prompts naming the concept")
    n_clean_prompts: int = option(64, "pairs", low=0, high=1_000_000, help="prompts without it")
    samples_per_prompt: int = option(4, "pairs", low=1, high=64, help="K base-model samples per prompt")
    rewrite_samples: int = option(
        4, "pairs", low=0, high=64, help="extra candidates of a harmful prompt, sampled from its safe rewrite"
    )
    cost_lambda: float = option(
        1.0, "pairs", low=0.0, high=1000.0, help="lambda in s = reward - lambda x cost"
    )
    reward_text: str = option(
        "prompt", "pairs", choices=("prompt", "rewrite"), help="text the reward compares an image with"
    )
    pair_mode: str = option("extremes", "pairs", choices=("extremes", "all"), help="best vs worst, or all")
    min_gap: float = option(0.0, "pairs", low=0.0, high=100.0, help="smallest score gap of a pair")
    max_pairs_per_prompt: int = option(4, "pairs", low=1, high=1000, help="cap with pair_mode=all")
    require_safer_winner: bool = option(True, "pairs", help="harmful prompts: winner must cost less")
    gen_steps: int = option(20, "pairs", low=1, high=1000, help="denoising steps of the samples")
    gen_cfg: float = option(7.5, "pairs", low=0.0, high=50.0, help="guidance scale of the samples")
    gen_batch_size: int = option(16, "pairs", low=1, high=4096, help="images per UNet batch")
    prompts_file: str = option("", "pairs", help="real concepts: more harmful prompts, one a line")
    clean_prompts_file: str = option("", "pairs", help="real concepts: clean prompts [default: rewrites]")
    # stage 3: Diffusion-DPO with DFM on a LoRA
    steps: int = option(300, "train", low=1, high=10_000_000, help="optimiser steps")
    batch_size: int = option(8, "train", low=1, high=4096, help="pairs per process per micro-step")
    grad_accum: int = option(1, "train", low=1, high=1024, help="micro-steps per optimiser step")
    lr: float = option(1e-4, "train", low=1e-10, high=1.0, help="LoRA learning rate (AdamW)")
    warmup_steps: int = option(10, "train", low=0, high=1_000_000, help="linear warm-up")
    weight_decay: float = option(0.0, "train", low=0.0, high=1.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, "train", low=0.0, high=1e6, help="gradient clipping (0: off)")
    beta: float = option(2500.0, "train", low=1e-3, high=1e6, help="Diffusion-DPO beta")
    gamma: float = option(2.0, "train", low=0.0, high=10.0, help="DFM focusing strength (0: plain DPO)")
    dfm_normalize: bool = option(True, "train", help="normalise DFM weights to mean 1 per batch")
    safety_margin: float = option(0.0, "train", low=0.0, high=1e4, help="margin x (cost_l - cost_w)+")
    lora_rank: int = option(8, "train", low=1, high=1024, help="LoRA rank")
    lora_alpha: float = option(8.0, "train", low=1e-3, high=1e4, help="LoRA alpha (scale alpha / rank)")
    lora_targets: str = option("attn", "train", choices=("attn", "attn-ff"), help="UNet layers with LoRA")
    mixed_precision: str = option("no", "train", choices=("no", "fp16", "bf16"), help="frozen weights' dtype")
    gradient_checkpointing: bool = option(False, "train", help="trade compute for memory")
    save_every: int = option(100, "train", low=1, high=10_000_000, help="checkpoint every N steps")
    keep_checkpoints: int = option(2, "train", low=0, high=1_000_000, help="newest kept (0: all)")
    log_every: int = option(1, "train", low=1, high=1_000_000, help="log.jsonl row every N steps")
    cost_dir: str = option("", "train", help="reuse the cost/ folder of an earlier run")
    pairs_dir: str = option("", "train", help="reuse the pairs/ folder of an earlier run")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f, getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, *stages: str) -> str:
        """A short hash of the options of the given stages (what a stage's output depends on)."""
        keys = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["stage"] in stages
        }
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def check_value(f: dataclasses.Field, value: Any) -> Any:
    """Check one option's type and range (ints are accepted for floats); raise a one-line SafegenError."""
    kind, meta, where = type(f.default), f.metadata, f"SC-DPO option {f.name}"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SafegenError(f"{where} must be of type {kind.__name__}, got {value!r}.")
    if kind is float and not math.isfinite(value):
        raise SafegenError(f"{where} must be a finite number, got {value!r}.")
    if meta["choices"] and value not in meta["choices"]:
        raise SafegenError(f"{where} must be one of {', '.join(meta['choices'])}, got {value!r}.")
    low, high = meta["low"], meta["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise SafegenError(f"{where} must be in {low}..{high}, got {value!r}.")
    return value


def load_config(
    config_file: str | Path | None = None, sets: Iterable[str] = (), steps: int | None = None
) -> SCDPOConfig:
    """Defaults < YAML file (a mapping of option names) < ``--set KEY=VALUE`` < ``--steps``.

    Raises:
        SafegenError: unreadable or invalid YAML, unknown option, wrong type, out of range.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = yaml.safe_load(Path(config_file).read_text())
        except OSError as exc:
            raise SafegenError(f"Cannot read config {config_file}: {exc.strerror or exc}") from None
        except yaml.YAMLError:
            raise SafegenError(f"{config_file}: not valid YAML.") from None
        if raw is not None and not isinstance(raw, dict):
            raise SafegenError(f"{config_file}: an SC-DPO config is a mapping of option names to values.")
        values.update(raw or {})
    names = {f.name: f for f in dataclasses.fields(SCDPOConfig)}
    for item in sets:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise SafegenError(f"--set takes KEY=VALUE, got {item!r}.")
        values[key] = parse_text(names[key], text) if key in names else text
    if steps is not None:
        values["steps"] = steps
    for key in values:
        if key not in names:
            raise unknown("SC-DPO option", str(key), names)
    return SCDPOConfig(**values)


def parse_text(f: dataclasses.Field, text: str) -> Any:
    """A ``--set`` value as the option's type (left as text when it does not parse; checked later)."""
    kind = type(f.default)
    if kind is bool and text.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
        return text.lower() in {"true", "yes", "on", "1"}
    try:
        return int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        return text


def describe_options() -> list[dict[str, Any]]:
    """One row per option (name, stage, default, allowed, help) for documentation and ``--help``."""
    rows = []
    for f in dataclasses.fields(SCDPOConfig):
        m = f.metadata
        allowed = (
            ", ".join(m["choices"])
            if m["choices"]
            else ("" if m["low"] is None else f"{m['low']}..{m['high']}")
        )
        rows.append(
            {"name": f.name, "stage": m["stage"], "default": f.default, "allowed": allowed, "help": m["help"]}
        )
    return rows
