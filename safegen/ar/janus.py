"""Janus and Janus-Pro (DeepSeek) through transformers' ``JanusForConditionalGeneration``.

Reference: Wu et al. 2024, "Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and
Generation" (arXiv 2410.13848); Chen et al. 2025, "Janus-Pro" (arXiv 2501.17811). Image generation reads a
chat-formatted prompt ending in the begin-of-image token, then predicts VQ codes with the
``generation_head`` on the language model's hidden states; each sampled code is fed back through
``generation_embeddings`` + ``generation_aligner``. We run that loop ourselves (KV cache, per-image seeds,
the shared sampler) and keep transformers' conventions:

- prompt: ``"<|User|>: {prompt}\\n\\n<|Assistant|>:"`` + ``<begin_of_image>`` (our reading of Janus's
  single-turn generation template), left-padded;
- unconditional rows for CFG: every prompt token but BOS and begin-of-image replaced by the pad token, under
  the conditional rows' attention mask (as ``JanusForConditionalGeneration.generate``);
- positions count only unpadded tokens, so padding does not change a prompt's tokens.

    >>> model = load_ar_model("deepseek-community/Janus-Pro-1B")   # or a local folder

Checkpoints must be in transformers' format (``deepseek-community/Janus-Pro-1B``, ``-7B``,
``Janus-1.3B``); DeepSeek's original repositories (``deepseek-ai/...``) need remote code, which safegen
never runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from safegen.ar.interface import ARModel
from safegen.ar.protocols import Prefix
from safegen.errors import SafegenError

PROMPT = "<|User|>: {prompt}\n\n<|Assistant|>:"
BOI = "<begin_of_image>"
FEATURE_LENGTH = 64  # prompt positions compared by text-only attacks
JANUS_DEFAULTS = {"cfg": 5.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


@dataclass
class JanusCache:
    """The language model's KV cache, the attention mask so far (B, L) and each row's next position (B,)."""

    kv: Any
    mask: torch.Tensor | None = None
    next_pos: torch.Tensor | None = None


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> position ids counting only real tokens (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class JanusBackbone:
    """:class:`safegen.ar.interface.ARBackbone` over a ``JanusForConditionalGeneration`` and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, boi_id: int, pad_id: int, bos_id: int | None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.boi_id, self.pad_id, self.bos_id = boi_id, pad_id, bos_id
        vq_config = model.config.vq_config
        self.codebook_size = vq_config.num_embeddings
        self.n_tokens = vq_config.num_patches**2
        self.lm = model.model.language_model
        self.tokenizer.padding_side = "left"

    def encode_prompts(self, prompts: list[str]) -> Prefix:
        enc = self.tokenizer([PROMPT.format(prompt=p) for p in prompts], padding=True, return_tensors="pt")
        device = self.model.device
        boi = torch.full((len(prompts), 1), self.boi_id, dtype=torch.long)
        ids = torch.cat([enc.input_ids, boi], dim=1).to(device)  # (B, T)
        mask = torch.cat([enc.attention_mask, torch.ones_like(boi)], dim=1).bool().to(device)
        return Prefix(self.model.get_input_embeddings()(ids), mask, ids)

    def prompt_vocabulary(self) -> tuple[Any, torch.nn.Module]:
        """The prompt tokenizer and the input embedding table the prompt's tokens are looked up in."""
        return self.tokenizer, self.model.get_input_embeddings()

    def text_features(self, prompts: list[str], length: int = FEATURE_LENGTH) -> torch.Tensor:
        """What the language model makes of the prompts: its hidden states over the last ``length`` prompt
        positions, left-padded with zeros (B, length, D), so that any two prompts compare position by
        position (prompts are left-padded)."""
        prefix = self.encode_prompts(prompts)
        hidden = self._run(prefix.embeds, prefix.mask, _positions(prefix.mask), None)
        hidden = hidden * prefix.mask[..., None].to(hidden.dtype)
        pad = max(0, length - hidden.shape[1])
        return torch.nn.functional.pad(hidden, (0, 0, pad, 0))[:, -length:]

    def null_prefix(self, cond: Prefix) -> Prefix:
        ids = cond.ids.clone()
        keep = ids == self.boi_id
        if self.bos_id is not None:
            keep |= ids == self.bos_id
        ids[~keep] = self.pad_id
        return Prefix(self.model.get_input_embeddings()(ids), cond.mask, ids)

    def _image_embeds(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.prepare_embeddings_for_image_generation(tokens)  # (B, n, D)

    def _run(self, embeds, mask, positions, cache: JanusCache | None) -> torch.Tensor:
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask.long(),
            position_ids=positions,
            past_key_values=cache.kv if cache is not None else None,
            use_cache=cache is not None,
        )
        return out.last_hidden_state  # (B, L, D)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.model.generation_head(hidden).float()  # (B, L, V)

    def logits(self, prefix: Prefix, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        embeds = torch.cat([prefix.embeds, self._image_embeds(tokens)], dim=1)  # (B, T + n, D)
        ones = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        mask = torch.cat([prefix.mask, ones], dim=1)
        hidden = self._run(embeds, mask, _positions(mask), None)[:, prefix.mask.shape[1] - 1 :]
        return self._head(hidden[:, -1:] if last_only else hidden)  # (B, n + 1 | 1, V)

    def new_cache(self, batch: int) -> JanusCache:
        from transformers import DynamicCache

        return JanusCache(DynamicCache())

    def prefill(self, prefix: Prefix, cache: JanusCache) -> torch.Tensor:
        positions = _positions(prefix.mask)
        hidden = self._run(prefix.embeds, prefix.mask, positions, cache)
        cache.mask, cache.next_pos = prefix.mask, positions[:, -1] + 1
        return self._head(hidden[:, -1])  # (B, V)

    def extend(self, tokens: torch.Tensor, cache: JanusCache) -> torch.Tensor:
        k = tokens.shape[1]
        ones = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        cache.mask = torch.cat([cache.mask, ones], dim=1)
        positions = cache.next_pos[:, None] + torch.arange(k, device=tokens.device)  # (B, k)
        hidden = self._run(self._image_embeds(tokens), cache.mask, positions, cache)
        cache.next_pos = cache.next_pos + k
        return self._head(hidden)  # (B, k, V)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]


class JanusImageTokenizer:
    """The ``ImageTokenizer`` over Janus's ``vqmodel`` (codes are l2-normalised at decode)."""

    def __init__(self, model: Any) -> None:
        self.vq = model.model.vqmodel
        self.codebook_size = self.vq.config.num_embeddings
        self.downsample = 2 ** (len(self.vq.config.channel_multiplier) - 1)

    def encode_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.vq.encode(pixels.to(self.vq.dtype))
        return out.image_tokens.view(pixels.shape[0], -1)  # (B, N)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(tokens)  # (B, 3, H, W)


def load_janus(source: str, name: str, device: torch.device, dtype: torch.dtype) -> ARModel:
    """Load ``JanusForConditionalGeneration`` and its tokenizer from a folder or hub id (never remote code).

    Raises:
        SafegenError: not loadable, or the begin-of-image / pad tokens cannot be found.
    """
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from safegen.hub import from_pretrained

    model = from_pretrained(JanusForConditionalGeneration, source, dtype=dtype)
    tokenizer = from_pretrained(AutoTokenizer, source)
    gen = model.generation_config
    boi = (getattr(gen, "generation_kwargs", None) or {}).get("boi_token_id")
    if boi is None:
        boi = tokenizer.convert_tokens_to_ids(BOI)
    if boi is None or boi == tokenizer.unk_token_id:
        raise SafegenError(f"{source}: no begin-of-image token (generation_kwargs.boi_token_id or {BOI}).")
    pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        raise SafegenError(f"{source}: no pad token id (generation_config.pad_token_id).")
    bos = gen.bos_token_id if gen.bos_token_id is not None else tokenizer.bos_token_id
    model = model.to(device).eval()
    defaults = dict(JANUS_DEFAULTS)
    if getattr(gen, "guidance_scale", None):
        defaults["cfg"] = float(gen.guidance_scale)
    return ARModel(
        name=name,
        source=str(source),
        family="janus",
        backbone=JanusBackbone(model, tokenizer, int(boi), int(pad), bos),
        vq=JanusImageTokenizer(model),
        device=device,
        dtype=dtype,
        defaults=defaults,
    )
