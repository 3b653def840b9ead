"""SC-DPO's settings: one dataclass, every option with its stage, range or choices, and a help text.

Settings come in layers, later ones winning (:func:`safegen.options.load`)::

    dataclass defaults  <  --config FILE.yaml  <  --set KEY=VALUE  <  --steps N

    # safegen erase --method scdpo --concept red --config scdpo-red.yaml --out runs/scdpo-red
    beta: 2500
    gamma: 0

Values are checked strictly (one-line :class:`~safegen.errors.SafegenError`). Where each default comes
from: ``docs/methods/scdpo.md``. They are the mini world's values: on a real Stable Diffusion, sweep lr,
steps, beta and ``retain_weight`` again (``--set``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from safegen.classifiers.labels import LABELLERS
from safegen.options import check_fields, option
from safegen.recipes.adversarial_options import AdversarialOptions
from safegen.recipes.prompt_plan import ANCHOR_HELP, PromptOptions


@dataclass
class SCDPOConfig(PromptOptions, AdversarialOptions):
    """Every choice SC-DPO makes. Training defaults: the mini-world sweep (see above)."""

    label: ClassVar[str] = "SC-DPO"

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
    cost_labels: str = option(
        "auto",
        "cost",
        choices=("auto", "prompt", *LABELLERS),
        help="cost_data=generate: label samples by content (opennsfw, nudenet) or by their prompt; "
        "auto = opennsfw for nudity concepts, else prompt",
    )
    cost_label_threshold: float = option(
        0.5, "cost", low=0.0, high=1.0, help="content labels: score at which a sample counts as harmful"
    )
    cost_images: int = option(2000, "cost", low=8, high=1_000_000, help="labelled images, half harmful")
    cost_holdout: float = option(0.2, "cost", low=0.05, high=0.5, help="share held out for the AUROC")
    cost_steps: int = option(300, "cost", low=1, high=100_000, help="full-batch steps of the head")
    cost_lr: float = option(3e-3, "cost", low=1e-6, high=1.0, help="head learning rate (AdamW)")
    cost_hidden: int = option(128, "cost", low=4, high=4096, help="head width")
    cost_proj_dim: int = option(32, "cost", low=2, high=1024, help="contrastive embedding size")
    cost_temperature: float = option(0.1, "cost", low=0.01, high=10.0, help="InfoNCE temperature")
    cost_contrastive_weight: float = option(1.0, "cost", low=0.0, high=100.0, help="weight of InfoNCE")
    cost_anchor_weight: float = option(1.0, "cost", low=0.0, high=100.0, help="weight of cost anchoring")
    # PromptOptions' option, on for SC-DPO (docs/methods/scdpo.md: a negative prompt alone left stripes)
    counterpart_anchor: bool = option(True, "prompts", help=ANCHOR_HELP)
    # stage 2: preference pairs
    n_harmful_prompts: int = option(128, "pairs", low=1, high=1_000_000, help="prompts naming the concept")
    n_clean_prompts: int = option(128, "pairs", low=0, high=1_000_000, help="prompts without it")
    samples_per_prompt: int = option(4, "pairs", low=1, high=64, help="K base-model samples per prompt")
    rewrite_samples: int = option(
        4, "pairs", low=0, high=64, help="extra candidates of a harmful prompt, from its safe counterpart"
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
    # stage 3: Diffusion-DPO with DFM on a LoRA
    steps: int = option(700, "train", low=1, high=10_000_000, help="optimiser steps")
    batch_size: int = option(8, "train", low=1, high=4096, help="pairs per process per micro-step")
    grad_accum: int = option(1, "train", low=1, high=1024, help="micro-steps per optimiser step")
    lr: float = option(4e-4, "train", low=1e-10, high=1.0, help="LoRA learning rate (AdamW)")
    warmup_steps: int = option(10, "train", low=0, high=1_000_000, help="linear warm-up")
    lr_schedule: str = option(
        "constant", "train", choices=("constant", "cosine"), help="lr after warm-up (cosine: to 0 at steps)"
    )
    weight_decay: float = option(0.0, "train", low=0.0, high=1.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, "train", low=0.0, high=1e6, help="gradient clipping (0: off)")
    beta: float = option(250.0, "train", low=1e-3, high=1e6, help="Diffusion-DPO beta")
    gamma: float = option(2.0, "train", low=0.0, high=10.0, help="DFM focusing strength (0: plain DPO)")
    dfm_normalize: bool = option(True, "train", help="normalise DFM weights to mean 1 per batch")
    rpo_alpha: float = option(
        0.0, "train", low=0.0, high=1e6, help="weight of the winner's denoising error (TRL's RPO term)"
    )
    safety_margin: float = option(0.0, "train", low=0.0, high=1e4, help="margin x (cost_l - cost_w)+")
    drop_unsafe_winners: bool = option(
        True, "train", help="leave out harmful pairs whose winner still costs > 0.5 (no safe candidate)"
    )
    retain_weight: float = option(
        100.0, "train", low=0.0, high=1e9, help="weight of the anchor to the reference on clean prompts"
    )
    lora_rank: int = option(8, "train", low=1, high=1024, help="LoRA rank")
    lora_alpha: float = option(8.0, "train", low=1e-3, high=1e4, help="LoRA alpha (scale alpha / rank)")
    lora_targets: str = option(
        "attn",
        "train",
        choices=("attn", "attn-ff", "cross-attn", "cross-kv"),
        help="UNet layers with LoRA: attention (+ FF), or cross-attention only (all four or K, V)",
    )
    mixed_precision: str = option("no", "train", choices=("no", "fp16", "bf16"), help="frozen weights' dtype")
    gradient_checkpointing: bool = option(False, "train", help="trade compute for memory")
    save_every: int = option(100, "train", low=1, high=10_000_000, help="checkpoint every N steps")
    keep_checkpoints: int = option(2, "train", low=0, high=1_000_000, help="newest kept (0: all)")
    log_every: int = option(1, "train", low=1, high=1_000_000, help="log.jsonl row every N steps")
    check_every: int = option(
        50, "train", low=0, high=10_000_000, help="every N steps, score samples with the cost model (0: off)"
    )
    check_prompts: int = option(32, "train", low=1, high=100_000, help="harmful prompts sampled per check")
    holdout_prompts: int = option(
        16, "prompts", low=1, high=100_000, help="real concepts: prompts held out of training for the check"
    )
    check_kinds: str = option(
        "named",
        "prompts",
        choices=("named", "all"),
        help="mini: held-out check captions that name the concept, or of every kind trained on (the shares)",
    )
    check_set: str = option(
        "held-out",
        "train",
        choices=("held-out", "train"),
        help="check prompts: ones stage 2 never used, or the training prompts",
    )
    stop_share: float = option(
        0.0, "train", low=0.0, high=1.0, help="stop once at most this share of the samples costs > 0.5"
    )
    restore_best: bool = option(
        True, "train", help="end on the weights of the check that flagged least (the latest of ties)"
    )
    stop_patience: int = option(
        1, "train", low=1, high=1000, help="stop_share must hold at this many checks in a row"
    )
    cost_dir: str = option("", "train", help="reuse the cost/ folder of an earlier run")
    pairs_dir: str = option("", "train", help="reuse the pairs/ folder of an earlier run")

    def __post_init__(self) -> None:
        check_fields(self, self.label)
