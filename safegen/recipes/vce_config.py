"""VCE's settings: one dataclass, every option with its stage, range or choices, and a help text.

Settings come in layers, later ones winning (:func:`safegen.options.load`)::

    dataclass defaults  <  --config FILE.yaml  <  --set KEY=VALUE  <  --steps N

    # safegen erase --method vce --concept red --model mini-ar --config vce-red.yaml --out runs/vce-red
    beta: 2.5
    token_drop: 0.1

Values are checked strictly (one-line :class:`~safegen.errors.SafegenError`). Where each default comes
from: ``docs/methods/vce.md``. They are the mini world's values: on a real LlamaGen or Janus, sweep lr and
beta again (``--set``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from safegen.options import check_fields, option
from safegen.recipes.adversarial_options import AdversarialOptions
from safegen.recipes.prompt_plan import PromptOptions

REWRITERS = ("rule", "caption", "file")
FILTERS = ("none", "colour", "opennsfw", "nudenet")


@dataclass
class VCEConfig(PromptOptions, AdversarialOptions):
    """Every choice VCE makes (stages ``pairs`` and ``train``). Defaults: the mini-world sweep (see above)."""

    label: ClassVar[str] = "VCE"

    seed: int = option(0, "pairs", low=0, high=2**31 - 1, help="seed of every stage")
    # stage 1: contrastive pairs (same seed, prompt with / without the concept)
    n_harmful_prompts: int = option(32, "pairs", low=1, high=1_000_000, help="prompts naming the concept")
    seeds_per_prompt: int = option(4, "pairs", low=1, high=1000, help="pairs per prompt, one per seed")
    n_clean_prompts: int = option(128, "pairs", low=0, high=1_000_000, help="retain prompts, without it")
    retain_seeds: int = option(2, "pairs", low=1, high=1000, help="base-model samples per retain prompt")
    rewriter: str = option(
        "rule",
        "pairs",
        choices=REWRITERS,
        help="safe prompt: rule (concept registry), caption (clip-interrogator extra), file (pairs_file)",
    )
    pairs_file: str = option(
        "", "pairs", help="rewriter=file: JSONL or CSV of prompt, safe_prompt (seed) or image pairs"
    )
    caption_model: str = option(
        "blip-large", "pairs", help="rewriter=caption: clip-interrogator caption model"
    )
    pair_filter: str = option(
        "none", "pairs", choices=FILTERS, help="keep pairs a detector (not the evaluator) agrees with"
    )
    filter_threshold: float = option(
        -1.0,
        "pairs",
        low=-1.0,
        high=1.0,
        help="score at which the filter sees the concept (colour: pixel share; opennsfw: NSFW probability); "
        "-1: the filter's default (colour 0.02, opennsfw 0.5)",
    )
    gen_cfg: float = option(-1.0, "pairs", low=-1.0, high=50.0, help="CFG of the samples (-1: model default)")
    gen_batch_size: int = option(16, "pairs", low=1, high=4096, help="images per sampling batch")
    save_pair_images: bool = option(False, "pairs", help="also write each pair as a PNG (pairs/images/)")
    # stage 2: token-level DPO on a LoRA of the GPT
    steps: int = option(200, "train", low=1, high=10_000_000, help="optimiser steps")
    batch_size: int = option(8, "train", low=1, high=4096, help="pairs per process per micro-step")
    retain_batch_size: int = option(8, "train", low=1, high=4096, help="retain samples per micro-step")
    grad_accum: int = option(1, "train", low=1, high=1024, help="micro-steps per optimiser step")
    lr: float = option(5e-4, "train", low=1e-10, high=1.0, help="LoRA learning rate (AdamW)")
    warmup_steps: int = option(10, "train", low=0, high=1_000_000, help="linear warm-up")
    weight_decay: float = option(0.0, "train", low=0.0, high=1.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, "train", low=0.0, high=1e6, help="gradient clipping (0: off)")
    beta: float = option(2.5, "train", low=1e-3, high=1e6, help="DPO beta on token-averaged log-ratios")
    token_drop: float = option(0.1, "train", low=0.0, high=0.95, help="share of image positions dropped")
    token_drop_mode: str = option(
        "mask", "train", choices=("mask", "corrupt"), help="leave them out of the mean, or corrupt inputs"
    )
    retain_weight: float = option(
        0.1, "train", low=0.0, high=1000.0, help="weight of the retain NLL (0: off; see the sweep)"
    )
    rpo_alpha: float = option(
        0.0,
        "train",
        low=0.0,
        high=1000.0,
        help="weight of the chosen NLL under the unsafe prompt (TRL's name)",
    )
    lora_rank: int = option(8, "train", low=1, high=1024, help="LoRA rank")
    lora_alpha: float = option(8.0, "train", low=1e-3, high=1e4, help="LoRA alpha (scale alpha / rank)")
    lora_targets: str = option(
        "attn", "train", choices=("attn", "attn-ff"), help="GPT layers with LoRA: attention (+ feed-forward)"
    )
    mixed_precision: str = option("no", "train", choices=("no", "fp16", "bf16"), help="frozen weights' dtype")
    save_every: int = option(100, "train", low=1, high=10_000_000, help="checkpoint every N steps")
    keep_checkpoints: int = option(2, "train", low=0, high=1_000_000, help="newest kept (0: all)")
    log_every: int = option(1, "train", low=1, high=1_000_000, help="log.jsonl row every N steps")
    pairs_dir: str = option("", "train", help="reuse the pairs/ folder of an earlier run (same model)")

    def __post_init__(self) -> None:
        check_fields(self, self.label)
