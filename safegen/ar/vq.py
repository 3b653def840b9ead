"""LlamaGen's VQ image tokenizer (a VQGAN autoencoder with an l2-normalised codebook), written for safegen.

Reference: Sun et al. 2024, "Autoregressive Model Beats Diffusion" (arXiv 2406.06525), section 2.2; the
quantizer follows ViT-VQGAN (Yu et al. 2022): codes and encoder outputs are l2-normalised, so the nearest
code is the one of highest cosine similarity. Module names follow LlamaGen's ``tokenizer_image/vq_model.py``
so ``vq_ds16_t2i.pt`` loads unchanged; the code is safegen's own.

    image (B, 3, H, W) in [-1, 1] -> encoder -> quant_conv -> (B, e, H/f, W/f) -> nearest codes (B, N)
    tokens -> codebook rows (l2-normalised) -> post_quant_conv -> decoder -> image

with downsampling f = 2^(len(ch_mult) - 1) (16 for ``VQ-16``) and N = (H/f) * (W/f), row-major.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from safegen.errors import SafegenError, unknown

PRESETS = {"VQ-16": (1, 1, 2, 2, 4), "VQ-8": (1, 2, 2, 4)}


@dataclass
class VQConfig:
    """Shape of the tokenizer; defaults are LlamaGen's ``VQ-16`` (16,384 codes of dimension 8)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    commit_loss_beta: float = 0.25
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    ch: int = 128
    num_res_blocks: int = 2
    norm_groups: int = 32
    dropout_p: float = 0.0

    def __post_init__(self) -> None:
        self.encoder_ch_mult = tuple(self.encoder_ch_mult)
        self.decoder_ch_mult = tuple(self.decoder_ch_mult)
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise SafegenError("VQ encoder and decoder must have as many levels (ch_mult lengths differ).")
        for mult in self.encoder_ch_mult + self.decoder_ch_mult:
            if (self.ch * mult) % self.norm_groups:
                raise SafegenError(
                    f"VQ channels {self.ch * mult} are not a multiple of {self.norm_groups} groups."
                )

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def preset(cls, name: str, **overrides) -> VQConfig:
        if name not in PRESETS:
            raise unknown("VQ size", name, PRESETS)
        mult = PRESETS[name]
        return cls.from_dict({"encoder_ch_mult": mult, "decoder_ch_mult": mult, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> VQConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        out = asdict(self)
        out["encoder_ch_mult"], out["decoder_ch_mult"] = (
            list(self.encoder_ch_mult),
            list(self.decoder_ch_mult),
        )
        return out


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """x + conv(swish(norm(conv(swish(norm(x)))))), with a 1x1 shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel on the right and bottom."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks (``res``), attention after each at the lowest resolution (``attn``),
    then an optional ``downsample`` / ``upsample``."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attend: bool, resample: nn.Module | None, cfg):
        super().__init__()
        widths = [c_in] + [c_out] * n_blocks
        self.res = nn.ModuleList(
            ResnetBlock(widths[i], c_out, cfg.norm_groups, cfg.dropout_p) for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(c_out, cfg.norm_groups) for _ in range(n_blocks if attend else 0))
        if isinstance(resample, Downsample):
            self.downsample = resample
        elif isinstance(resample, Upsample):
            self.upsample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _middle(channels: int, cfg: VQConfig) -> nn.ModuleList:
    g, p = cfg.norm_groups, cfg.dropout_p
    return nn.ModuleList(
        [ResnetBlock(channels, channels, g, p), AttnBlock(channels, g), ResnetBlock(channels, channels, g, p)]
    )


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult, last = cfg.encoder_ch_mult, len(cfg.encoder_ch_mult) - 1
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        widths = [cfg.ch] + [cfg.ch * m for m in mult]
        self.conv_blocks = nn.ModuleList(
            Level(
                widths[i],
                widths[i + 1],
                cfg.num_res_blocks,
                i == last,
                Downsample(widths[i + 1]) if i < last else None,
                cfg,
            )
            for i in range(len(mult))
        )
        self.mid = _middle(widths[-1], cfg)
        self.norm_out = _norm(widths[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for module in [*self.conv_blocks, *self.mid]:
            h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult, last = cfg.decoder_ch_mult, len(cfg.decoder_ch_mult) - 1
        top = cfg.ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = _middle(top, cfg)
        levels, c_in = [], top
        for i in reversed(range(len(mult))):  # lowest resolution first
            c_out = cfg.ch * mult[i]
            resample = Upsample(c_out) if i > 0 else None
            levels.append(Level(c_in, c_out, cfg.num_res_blocks + 1, i == last, resample, cfg))
            c_in = c_out
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = _norm(c_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for module in [*self.mid, *self.conv_blocks]:
            h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook row for each position; l2-normalised codes and inputs when ``codebook_l2_norm``."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.l2_norm, self.beta = cfg.codebook_l2_norm, cfg.commit_loss_beta
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        if self.l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))

    def codebook(self) -> torch.Tensor:
        """(K, e) code vectors, l2-normalised when the tokenizer is."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, e, h, w) -> quantised z (straight-through), tokens (B, h*w), codebook + commitment loss.

        Loss (van den Oord et al. 2017, eq. 3): ||sg[z] - e||^2 + beta ||z - sg[e]||^2, on normalised vectors.
        """
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)  # (B*h*w, e)
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        codes = self.codebook()
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()  # (B*h*w, K)
        idx = dist.argmin(dim=1)
        quant = codes[idx]
        loss = F.mse_loss(quant, flat.detach()) + self.beta * F.mse_loss(flat, quant.detach())
        quant = flat + (quant - flat).detach()
        return quant.view(b, h, w, e).permute(0, 3, 1, 2), idx.view(b, h * w), loss


class VQModel(nn.Module):
    """The image tokenizer: ``encode_tokens`` / ``decode_tokens`` for generation, ``forward`` for training."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def encode_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, (H/f) * (W/f)) token ids, row-major."""
        z = self.quant_conv(self.encoder(pixels.to(self.quant_conv.weight.dtype)))
        return self.quantize(z)[1]

    def decode_tokens(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N) token ids -> (B, 3, H, W) images in about [-1, 1]; ``grid`` (h, w) defaults to square."""
        if grid is None:
            side = math.isqrt(tokens.shape[1])
            grid = (side, side)
        z = self.quantize.codebook()[tokens]  # (B, N, e)
        z = z.view(tokens.shape[0], *grid, -1).permute(0, 3, 1, 2)  # (B, e, h, w)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction (B, 3, H, W), tokens (B, N), quantiser loss)."""
        quant, tokens, loss = self.quantize(self.quant_conv(self.encoder(pixels)))
        return self.decoder(self.post_quant_conv(quant)), tokens, loss
