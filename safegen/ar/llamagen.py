"""LlamaGen's text-to-image GPT, written for safegen from the architecture of Sun et al. 2024.

Reference: "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (arXiv 2406.06525),
code at github.com/FoundationVision/LlamaGen (MIT). Module and parameter names follow that code, so its
checkpoints (``t2i_XL_stage1_256.pt``) load unchanged; the code itself is safegen's own.

The sequence is ``T`` caption positions followed by image tokens::

    [c_0 .. c_{T-1}] [x_0 .. x_{N-2}]  ->  logits for x_0 .. x_{N-1}  (the logit at c_{T-1} predicts x_0)

- caption positions: T5 features (B, T, caption_dim), left-padded, through a 2-layer GELU MLP
  (``cls_embedding.cap_proj``); the fixed ``cls_embedding.uncond_embedding`` (T, caption_dim) replaces the
  caption for classifier-free guidance and for caption dropout in training;
- Llama blocks: pre-RMSNorm, attention with one fused ``wqkv`` projection, SwiGLU feed-forward
  ``w2(silu(w1 x) * w3 x)`` with hidden size ``2/3 * 4 * dim`` rounded up to ``multiple_of``;
- 2D rotary embedding: half of each head's rotary pairs turn with the token's row, half with its column.
  Caption positions get a zero table, as in LlamaGen, which zeroes their queries and keys (their
  attention is uniform over the caption positions they may see, and image queries give them logit 0);
- attention mask: causal, padded caption positions hidden as keys, every position sees itself.

    >>> gpt = LlamaGenGPT(GPTConfig.preset("GPT-XL", block_size=256))   # 775 M parameters
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from safegen.ar.protocols import Prefix
from safegen.errors import SafegenError, unknown

# (n_layer, n_head, dim) of LlamaGen's GPT sizes; only GPT-XL has released text-to-image weights.
PRESETS = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}
UNCOND_ROWS = 120  # rows of LlamaGen's stored unconditional caption, whatever the caption length


@dataclass
class GPTConfig:
    """The text-to-image GPT's shape; defaults are LlamaGen's T2I settings (GPT-XL sizes via :meth:`preset`).

    ``block_size`` is the number of image tokens (a square grid: 256 = 16 x 16 at 256 px) and
    ``cls_token_num`` the number of caption positions (120 T5 tokens).
    """

    dim: int = 1280
    n_layer: int = 36
    n_head: int = 20
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1  # caption dropout in training (applied by the trainer, not forward)
    vocab_size: int = 16384
    cls_token_num: int = 120
    block_size: int = 256
    extra: dict = field(default_factory=dict)  # unknown keys read from a config file, kept for the record

    def __post_init__(self) -> None:
        if self.dim % self.n_head:
            raise SafegenError(f"GPT dim {self.dim} is not a multiple of n_head {self.n_head}.")
        if self.head_dim % 4:
            raise SafegenError(
                f"GPT head size {self.head_dim} must be a multiple of 4 (2D rotary embedding)."
            )
        if self.n_head % self.kv_heads:
            raise SafegenError(f"GPT n_head {self.n_head} is not a multiple of n_kv_head {self.kv_heads}.")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise SafegenError(f"GPT block_size {self.block_size} is not a square number of image tokens.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU width: 2/3 of 4 * dim, times the optional multiplier, rounded up to ``multiple_of``."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """LlamaGen's named size (``GPT-XL``, ...) with T2I defaults and any field overridden."""
        if name not in PRESETS:
            raise unknown("GPT size", name, PRESETS)
        n_layer, n_head, dim = PRESETS[name]
        return cls.from_dict({"n_layer": n_layer, "n_head": n_head, "dim": dim, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(**{k: v for k, v in values.items() if k in known}, extra=extra)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        return out

    def without_dropout(self) -> GPTConfig:
        return replace(self, token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)


# --------------------------------------------------------------------------- rotary embedding and mask
def rope_table_2d(config: GPTConfig) -> torch.Tensor:
    """(T + N, head_dim // 2, 2) cos/sin table: zeros for the T caption positions, then the image grid.

    For head size d, frequency j of n = d/4 is ``base^(-4j/d)``; at grid cell (row r, column c) the first d/4
    rotary pairs turn by ``r * freq`` and the next d/4 by ``c * freq`` (cells in row-major order).
    """
    quarter = config.head_dim // 4
    freqs = config.rope_base ** (-torch.arange(quarter, dtype=torch.float64) * 2 / (config.head_dim // 2))
    steps = torch.arange(config.grid, dtype=torch.float64)
    angle = torch.outer(steps, freqs)  # (grid, d/4)
    rows = angle[:, None, :].expand(-1, config.grid, -1)  # (grid, grid, d/4)
    cols = angle[None, :, :].expand(config.grid, -1, -1)
    grid = torch.cat([rows, cols], dim=-1).flatten(0, 1)  # (N, d/2)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).float()  # (N, d/2, 2)
    return torch.cat([torch.zeros(config.cls_token_num, config.head_dim // 2, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, L, H, d) by the angles of table (L, d/2, 2) (cos, sin)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, H, d/2, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]  # (1, L, 1, d/2)
    first = pairs[..., 0] * cos - pairs[..., 1] * sin
    second = pairs[..., 1] * cos + pairs[..., 0] * sin
    return torch.stack([first, second], dim=-1).flatten(-2).type_as(x)


def attention_mask(key_valid: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """(B, 1, Lq, Lk) bool: key k is visible to the query at position q when k <= q and k is valid; every
    position sees itself (LlamaGen adds the identity so fully padded caption rows have a key).

    Args:
        key_valid: (B, Lk) bool, False for padded caption positions.
        query_pos: (Lq,) absolute positions of the queries.
    """
    key_pos = torch.arange(key_valid.shape[1], device=key_valid.device)
    causal = key_pos[None, :] <= query_pos[:, None]  # (Lq, Lk)
    itself = key_pos[None, :] == query_pos[:, None]
    return ((causal[None] & key_valid[:, None, :]) | itself[None])[:, None]


# --------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of every layer for a batch, preallocated to ``max_len`` positions.

    ``key_valid`` (B, max_len) marks padded caption positions; ``length`` is the number of filled positions.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device, dtype) -> None:
        shape = (batch, config.kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.key_valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, L, d) at the current position; return all keys and values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


# --------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) attention with a fused qkv projection and 2D RoPE."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        kv_dim = config.kv_heads * config.head_dim
        self.wqkv = nn.Linear(config.dim, config.dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor, cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        c = self.config
        batch, length, _ = x.shape
        kv_dim = c.kv_heads * c.head_dim
        q, k, v = self.wqkv(x).split([c.dim, kv_dim, kv_dim], dim=-1)
        q = apply_rope(q.view(batch, length, c.n_head, c.head_dim), rope).transpose(1, 2)  # (B, H, L, d)
        k = apply_rope(k.view(batch, length, c.kv_heads, c.head_dim), rope).transpose(1, 2)  # (B, Hkv, L, d)
        v = v.view(batch, length, c.kv_heads, c.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, Hkv, Lk, d)
        if c.kv_heads != c.n_head:
            k = k.repeat_interleave(c.n_head // c.kv_heads, dim=1)
            v = v.repeat_interleave(c.n_head // c.kv_heads, dim=1)
        dropout = c.attn_dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, L, d)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(batch, length, c.dim)))


class TransformerBlock(nn.Module):
    """Pre-norm Llama block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


class CaptionMLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))), both without bias."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """Caption features -> the GPT's first T positions; holds the fixed unconditional caption.

    LlamaGen always stores 120 unconditional rows (its T5 length) and uses the first T; so does this class
    (``max(120, T)`` rows), so checkpoints of any caption length keep LlamaGen's layout.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.cap_proj = CaptionMLP(config.caption_dim, config.dim)
        rows = max(UNCOND_ROWS, config.cls_token_num)
        null = torch.randn(rows, config.caption_dim) / config.caption_dim**0.5
        self.register_buffer("uncond_embedding", null)  # (rows, caption_dim), saved in checkpoints

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(caption)


class LlamaGenGPT(nn.Module):
    """The text-to-image GPT (module names as LlamaGen's ``Transformer``, so its state dicts load as-is)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_embedding = CaptionEmbedder(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # (T + N, d/2, 2) float32, built on first use: out of the state dict, out of .to(dtype) (fp16 angles
        # are too coarse) and not a meta tensor when the model is built on the meta device for loading
        self.rope: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LlamaGen's init: N(0, 0.02) for linear and embedding weights, a zero output layer."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.output.weight)

    def forward(
        self,
        caption: torch.Tensor | None,
        caption_mask: torch.Tensor | None,
        tokens: torch.Tensor | None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for image tokens.

        Without ``cache``, or with an empty one: runs the caption (B, T, caption_dim) with its mask (B, T)
        and ``tokens`` (B, n) (n may be 0 or ``tokens`` None) and returns (B, n + 1, V): the logits at the
        last caption position and after each token, i.e. for image tokens 0..n. With a filled ``cache``:
        runs only ``tokens`` (B, k) after the cached positions and returns (B, k, V).
        ``last_only`` keeps only the last position: (B, 1, V).
        """
        prefill = cache is None or cache.length == 0
        parts = []
        if prefill:
            if caption is None or caption_mask is None:
                raise ValueError("the first call needs the caption and its mask")
            if caption.shape[1] != self.config.cls_token_num:
                raise ValueError(
                    f"caption has {caption.shape[1]} positions, the GPT {self.config.cls_token_num}"
                )
            parts.append(self.cls_embedding(caption.to(self.output.weight.dtype)))  # (B, T, D)
        if tokens is not None and tokens.shape[1]:
            parts.append(self.tok_embeddings(tokens))  # (B, n, D)
        h = self.tok_dropout(torch.cat(parts, dim=1))  # (B, L, D)
        start = 0 if prefill else cache.length
        positions = torch.arange(start, start + h.shape[1], device=h.device)
        total = self.config.cls_token_num + self.config.block_size
        if positions[-1] >= total:
            raise ValueError(f"sequence of {int(positions[-1]) + 1} positions exceeds the GPT's {total}")
        if prefill:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            valid[:, : caption_mask.shape[1]] = caption_mask
            if cache is not None:
                cache.key_valid[:, : valid.shape[1]] = valid
        mask = attention_mask(cache.key_valid[:, : start + h.shape[1]] if cache else valid, positions)
        if self.rope is None or self.rope.device != h.device:
            self.rope = rope_table_2d(self.config).to(h.device)
        rope = self.rope[positions]
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, mask, cache, i)
        if cache is not None:
            cache.length = start + h.shape[1]
        if prefill:
            h = h[:, self.config.cls_token_num - 1 :]  # last caption position onwards: (B, n + 1, D)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()  # (B, n + 1 | k | 1, V)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch`` rows, long enough for the caption and all image tokens."""
        length = max_len or self.config.cls_token_num + self.config.block_size
        weight = self.output.weight
        return KVCache(self.config, batch, length, weight.device, weight.dtype)


# --------------------------------------------------------------------------- text conditioning + backbone
def left_pad(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid positions to the end, as LlamaGen does with its T5 features.

    Args:
        features: (B, T, C) right-padded encoder outputs.
        mask: (B, T) bool, True on the first ``v`` (valid) positions of each row.

    Returns:
        (B, T, C) features with the valid positions last and padding zeroed, and the (B, T) mask.
    """
    length = features.shape[1]
    counts = mask.sum(dim=1, keepdim=True)  # (B, 1)
    pos = torch.arange(length, device=features.device)[None]  # (1, T)
    index = (pos + counts) % length  # row b, slot i <- position (i + v_b) mod T
    moved = features.gather(1, index[..., None].expand(-1, -1, features.shape[2]))
    new_mask = pos >= length - counts  # (B, T)
    return moved * new_mask[..., None].to(moved.dtype), new_mask


class TextConditioner:
    """Prompts -> left-padded caption features (B, T, C) and their mask (B, T).

    ``encoder`` is a transformers text encoder returning ``last_hidden_state`` (``T5EncoderModel`` for
    LlamaGen's FLAN-T5-XL, a small ``CLIPTextModel`` for mini-ar), ``tokenizer`` its tokenizer; prompts are
    lower-cased and whitespace-collapsed (a reduced form of LlamaGen's caption cleaning), padded or
    truncated to ``max_length`` = T.
    """

    def __init__(self, tokenizer, encoder: nn.Module, max_length: int) -> None:
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder, max_length
        self.tokenizer.padding_side = "right"  # left_pad expects right padding

    @property
    def hidden_size(self) -> int:
        config = self.encoder.config
        return getattr(config, "d_model", None) or config.hidden_size

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [" ".join(p.lower().split()) for p in prompts]
        enc = self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        device = next(self.encoder.parameters()).device
        ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
        features = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        return left_pad(features, mask.bool())


class LlamaGenBackbone:
    """:class:`safegen.ar.interface.ARBackbone` over a :class:`LlamaGenGPT` and its text conditioner."""

    def __init__(self, gpt: LlamaGenGPT, text: TextConditioner | None) -> None:
        self.gpt, self.text = gpt, text
        self.codebook_size = gpt.config.vocab_size
        self.n_tokens = gpt.config.block_size
        self.prefix_len = gpt.config.cls_token_num

    def encode_prompts(self, prompts: list[str]) -> Prefix:
        if self.text is None:
            raise SafegenError("This LlamaGen model has no text encoder; pass caption features instead.")
        features, mask = self.text(prompts)
        return Prefix(features.to(self.gpt.output.weight.dtype), mask)

    def prompt_vocabulary(self) -> tuple[Any, nn.Module]:
        """The prompt tokenizer and the input embedding table the prompt's tokens are looked up in."""
        return self.text.tokenizer, self.text.encoder.get_input_embeddings()

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """What the text encoder makes of the prompts: caption features (B, T, C), before the caption MLP."""
        return self.text(prompts)[0]

    def null_prefix(self, cond: Prefix) -> Prefix:
        """The fixed unconditional caption for every row, under the caption's own padding mask (LlamaGen
        masks the unconditional rows with the conditional rows' mask)."""
        null = self.gpt.cls_embedding.uncond_embedding[: self.prefix_len].to(cond.embeds.dtype)  # (T, C)
        return Prefix(null.expand(len(cond), -1, -1), cond.mask)

    def logits(self, prefix: Prefix, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return self.gpt(prefix.embeds, prefix.mask, tokens, last_only=last_only)

    def new_cache(self, batch: int) -> KVCache:
        return self.gpt.new_cache(batch)

    def prefill(self, prefix: Prefix, cache: KVCache) -> torch.Tensor:
        return self.gpt(prefix.embeds, prefix.mask, None, cache, last_only=True)[:, -1]  # (B, V)

    def extend(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.gpt(None, None, tokens, cache)  # (B, k, V)

    def modules(self) -> list[nn.Module]:
        return [self.gpt] + ([self.text.encoder] if self.text is not None else [])
