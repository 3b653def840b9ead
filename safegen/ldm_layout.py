"""Stable Diffusion's original (LDM / CompVis) key layout, from a diffusers folder's modules.

One ``.safetensors`` file holding the UNet (``model.diffusion_model.*``), the VAE (``first_stage_model.*``)
and the text encoder (``cond_stage_model.transformer.*``) under the names the original repository used:
what AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file`` read. The renaming follows the block
structure in each module's config, so any SD-1.x-shaped UNet converts (the bundled mini model included),
not only the 512-pixel one:

- UNet: ``conv_in`` is ``input_blocks.0.0``; down block ``i``'s layer ``j`` is ``input_blocks.k`` with
  ``k = 1 + i (L + 1) + j`` (resnet at ``.0``, attention at ``.1``), its downsampler the block's last slot
  ``input_blocks.(1 + i (L + 1) + L).0.op``; the mid block is ``middle_block.0/1/2``; up block ``i``'s layer
  ``j`` is ``output_blocks.(i (L + 1) + j)`` (L + 1 layers each), its upsampler after the resnet and
  attention of its last layer; inside a resnet ``norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut`` are
  ``in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection``. Attention blocks keep
  their names.
- VAE: ``down_blocks.i`` is ``down.i`` (``resnets`` -> ``block``), ``up_blocks.i`` is ``up.(n-1-i)`` (the
  original counts from the lowest resolution), the mid block's resnets and attention are ``block_1 block_2
  attn_1``, whose ``to_q/k/v/out.0`` and ``group_norm`` are the 1x1 convolutions ``q k v proj_out`` and
  ``norm``.

The text encoder is written in SD-1.x's layout (a transformers CLIP text model); SD-2.x checkpoints keep
an OpenCLIP layout that this module does not write, so they are refused.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from safegen.errors import SafegenError

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    head, _, leaf = key.rpartition(".")  # leaf: weight / bias
    for old, new in table.items():
        if head == old:
            return f"{new}.{leaf}"
    return key


def unet_key_map(config: Any) -> dict[str, str]:
    """diffusers UNet module prefix -> original prefix, from the UNet's config."""
    if (
        config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn"
        or config.get("class_embed_type")
        or config.get("addition_embed_type")
    ):
        raise SafegenError("Single-file export writes SD-1.x/2.x-shaped UNets; this UNet has other blocks.")
    layers, n = int(config["layers_per_block"]), len(config["down_block_types"])
    table = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    for i in range(n):
        for j in range(layers):
            k = 1 + i * (layers + 1) + j
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
        table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{1 + i * (layers + 1) + layers}.0.op"
        has_attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(layers + 1):
            k = i * (layers + 1) + j
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
        last = i * (layers + 1) + layers
        table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if has_attention else 1}.conv"
    return table


def vae_key_map(config: Any) -> dict[str, str]:
    """diffusers VAE module prefix -> original prefix, from the VAE's config."""
    layers, n = int(config["layers_per_block"]), len(config["block_out_channels"])
    table = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for side in ("encoder", "decoder"):
        table[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        table[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        table[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
    for i in range(n):
        for j in range(layers):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(layers + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return table


def _apply(state: dict[str, torch.Tensor], table: dict[str, str], inner: dict[str, str]) -> dict[str, Any]:
    """Rename every key by its longest matching module prefix in ``table``, then its leaf by ``inner``."""
    prefixes = sorted(table, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        new = key
        for prefix in prefixes:
            if key.startswith(prefix + "."):
                new = table[prefix] + "." + _rename(key[len(prefix) + 1 :], inner)
                break
        out[new] = value
    return out


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    return {UNET + k: v for k, v in _apply(state, unet_key_map(config), RESNET).items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    renamed = _apply(state, vae_key_map(config), {"conv_shortcut": "nin_shortcut", **VAE_ATTENTION})
    out = {}
    for key, value in renamed.items():
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", key) and value.ndim == 2:
            value = value[:, :, None, None]  # a linear layer is the original's 1x1 convolution
        out[VAE + key] = value
    return out


def text_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    if getattr(config, "hidden_act", "quick_gelu") != "quick_gelu":
        raise SafegenError(
            "Single-file export writes SD-1.x checkpoints (a CLIP ViT-L text encoder layout); this model's "
            "text encoder is SD-2.x's OpenCLIP one, which it does not write. Export the diffusers folder "
            "(--format diffusers --merge) instead."
        )
    # SD-1.x files name the CLIP text model's weights ``text_model.*``; newer transformers drop the prefix
    named = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()}
    return {TEXT + k: v for k, v in named.items() if not k.endswith("position_ids")}


def pipeline_to_ldm(pipe: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The whole checkpoint of a (merged) ``StableDiffusionPipeline`` in the original layout."""
    parts = [
        unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        text_to_ldm(pipe.text_encoder.state_dict(), pipe.text_encoder.config),
    ]
    return {k: v.detach().to("cpu", dtype).contiguous() for part in parts for k, v in part.items()}
