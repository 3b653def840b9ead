"""Tiny random models of the real classes, saved to disk and loaded back through safegen's own loaders.

Test and benchmark tooling (not part of the installed package): ``tests/conftest.py`` builds them once per
session; scripts in ``benchmarks/`` import them through ``benchmarks/helpers.py``.

- :func:`save_tiny_sd`: a diffusers Stable Diffusion folder (byte-level CLIP tokenizer, 2-layer CLIP text
  encoder, small UNet and VAE);
- :func:`save_random_llamagen`: a LlamaGen folder in safegen's layout with the shapes of a
  ``safegen.mini.train_ar`` preset;
- :func:`save_tiny_janus`: a ``JanusForConditionalGeneration`` with a word-level tokenizer.

No download: every tokenizer is written from a fixed vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from safegen.ar import save_llamagen
from safegen.ar.janus import BOI
from safegen.ar.llamagen import GPTConfig, LlamaGenGPT
from safegen.ar.vq import VQConfig, VQModel
from safegen.errors import unknown
from safegen.hub import quiet_progress_bars


def byte_level_vocab() -> dict[str, int]:
    """A CLIP-style byte-level vocabulary without merges: every byte char, its ``</w>`` form, and BOS/EOS."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def save_tiny_sd(out_dir: str | Path, *, seed: int = 0, size: str = "test", max_length: int = 32) -> Path:
    """Build a random Stable Diffusion pipeline from configs and save it as a diffusers folder.

    No download: the tokenizer is a byte-level CLIP tokenizer written from :func:`byte_level_vocab`.

    Args:
        out_dir: folder to write (created).
        seed: torch seed for the random weights.
        size: ``test`` (8/16-channel UNet, 32 px images, milliseconds per step) or ``bench`` (32/64-channel
            UNet with 2 layers per block, 64 px images, nearer the bundled mini model's cost).
        max_length: the tokenizer's and text encoder's sequence length.

    Returns:
        The folder, loadable with :func:`load_model`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if size not in ("test", "bench"):
        raise unknown("tiny model size", size, ["test", "bench"])
    out = Path(out_dir)
    vocab = byte_level_vocab()
    with tempfile.TemporaryDirectory() as tok_dir:
        (Path(tok_dir) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tok_dir) / "merges.txt").write_text("#version: 0.2\n")
        (Path(tok_dir) / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
        # CLIPTokenizer(vocab_file=...) ignores the file in transformers 5: load the folder instead.
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    # (UNet channels, layers per block, VAE channels): the VAE downsamples 4x, so latents are 8 or 16 px.
    channels, layers, vae_channels = (
        ((8, 16), 1, (8, 8, 16)) if size == "test" else ((32, 64), 2, (16, 32, 32))
    )
    latent_size = 8 if size == "test" else 16

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=4 * latent_size,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with quiet_progress_bars():
        pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def save_random_llamagen(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised LlamaGen folder with the shapes of a ``safegen.mini.train_ar`` preset.

    ``tiny``: 64 px, 16 tokens of a 16-code VQ, a 1-layer GPT (tests); ``mini``: the bundled mini-ar's
    shapes (benchmarks). The CLIP text encoder uses the mini-world tokenizer; weights are fp32. The GPT's
    output layer is drawn at random (LlamaGen zeroes it, which would make every logit 0).
    """
    from safegen.mini.train_ar import PRESETS, SIZE, build_text

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, encoder = build_text(preset, Path(tmp))
    gpt = LlamaGenGPT(GPTConfig.from_dict(PRESETS[preset]["gpt"]))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    vq = VQModel(VQConfig.from_dict(PRESETS[preset]["vq"]))
    return save_llamagen(out_dir, gpt, vq, encoder, tokenizer, image_size=SIZE, dtype=torch.float32)


def _tiny_tokenizer() -> Any:
    """A word-level fast tokenizer (BOS added) with Janus's special tokens, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a an the red blue green circle square star striped dotted solid of on in with".split()
    specials = ["<pad>", "<bos>", "<eos>", "<unk>", BOI, "<end_of_image>", "<image_placeholder>"]
    vocab = {t: i for i, t in enumerate(specials + ["<|User|>:", "<|Assistant|>:"] + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _tiny_config(vocab: dict[str, int], grid: int) -> Any:
    """A 2-layer 32-d Llama, a 1-layer SigLIP-style vision tower and a 64-code VQ that downsamples 2x."""
    from transformers import JanusConfig, LlamaConfig

    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "image_size": 4 * grid,  # with patch 4: grid x grid patches = image tokens
        "patch_size": 4,
        "projection_dim": 32,
        "num_image_tokens": grid * grid,
    }
    vq = {
        "embed_dim": 8,
        "num_embeddings": 64,
        "base_channels": 32,
        "channel_multiplier": [1, 1],
        "num_res_blocks": 1,
        "latent_channels": 32,
        "projection_dim": 32,
        "image_token_embed_dim": 32,
    }
    return JanusConfig(
        text_config=text, vision_config=vision, vq_config=vq, image_token_id=vocab["<image_placeholder>"]
    )


def save_tiny_janus(out_dir: str | Path, *, seed: int = 0, grid: int = 4) -> Path:
    """Save a random ``JanusForConditionalGeneration`` (2-layer Llama, 32-d) with a word-level tokenizer.

    ``grid`` x ``grid`` image tokens of a 64-code VQ that downsamples 2x: images of 2 * grid pixels.
    No download: the tokenizer is built with the ``tokenizers`` library from a fixed word list.
    """
    from transformers import GenerationConfig, JanusForConditionalGeneration

    tokenizer = _tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(_tiny_config(vocab, grid)).eval()
    parts = (model.model.language_model, model.model.generation_head, model.model.generation_aligner)
    with torch.no_grad():  # wider than the default N(0, 0.02) init, so greedy decoding is not one token
        for param in (p for module in parts for p in module.parameters()):
            param.normal_(0.0, 0.3)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, generation_kwargs={"boi_token_id": vocab[BOI]}
    )
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def save_tiny_clip(folder: Path) -> Path:
    """A random 2-layer CLIP with the byte-level tokenizer of the tiny SD (stands in for ViT-L/14)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = byte_level_vocab()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32}))
    special = {
        k: vocab[v]
        for k, v in [
            ("bos_token_id", "<|startoftext|>"),
            ("eos_token_id", "<|endoftext|>"),
            ("pad_token_id", "<|endoftext|>"),
        ]
    }
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    text = dict(vocab_size=len(vocab), max_position_embeddings=32, **layers, **special)
    config = CLIPConfig(
        text_config=text, vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=16
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(folder).save_pretrained(folder)
    return folder
