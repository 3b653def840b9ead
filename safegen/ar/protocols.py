"""The protocols of an autoregressive text-to-image model: its conditioning prefix, backbone and tokenizer.

A leaf module shared by :mod:`safegen.ar.interface` (the :class:`~safegen.ar.interface.ARModel` that
composes them) and :mod:`safegen.ar.sampler` (which samples from any backbone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Prefix:
    """The conditioning a backbone reads before the first image token, for a batch of B prompts.

    ``embeds`` (B, T, D) are caption features (LlamaGen) or prompt-token embeddings (Janus); ``mask`` (B, T)
    is False at (left) padding; ``ids`` (B, T) are the prompt token ids where the backbone has them.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, rows: slice) -> Prefix:
        """The prefix of a slice of the batch's rows."""
        return Prefix(self.embeds[rows], self.mask[rows], None if self.ids is None else self.ids[rows])

    @staticmethod
    def cat(parts: Sequence[Prefix]) -> Prefix:
        """Stack prefixes along the batch (all must have the same length T)."""
        ids = [p.ids for p in parts]
        return Prefix(
            torch.cat([p.embeds for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat(ids) if all(i is not None for i in ids) else None,
        )


class ARBackbone(Protocol):
    """The sequence model of an AR text-to-image model. Logits are float32 (B, ..., codebook_size)."""

    codebook_size: int  # image-token vocabulary
    n_tokens: int  # image tokens per image

    def encode_prompts(self, prompts: Sequence[str]) -> Prefix: ...

    def null_prefix(self, cond: Prefix) -> Prefix:
        """The unconditional prefix for classifier-free guidance, one row per row of ``cond``."""
        ...

    def logits(self, prefix: Prefix, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Without a cache: (B, n + 1, V) logits for image tokens 0..n given tokens (B, n).

        ``last_only`` keeps the last position only: (B, 1, V).
        """
        ...

    def new_cache(self, batch: int) -> Any: ...

    def prefill(self, prefix: Prefix, cache: Any) -> torch.Tensor:
        """Fill ``cache`` with the prefix; return (B, V) logits for image token 0."""
        ...

    def extend(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        """Append tokens (B, k) to ``cache``; return (B, k, V) logits for the tokens after each."""
        ...

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules, for eval/train mode switching."""
        ...

    def prompt_vocabulary(self) -> tuple[Any, torch.nn.Module]:
        """The prompt tokenizer and the input embedding table of its tokens (attacks edit rows of it)."""
        ...

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """The text side's output for the prompts, (B, T, D) (what a text-only attack matches)."""
        ...


class ImageTokenizer(Protocol):
    """A VQ autoencoder: images (B, 3, H, W) in [-1, 1] <-> token grids (B, N), N = (H / downsample)^2."""

    codebook_size: int
    downsample: int

    def encode_tokens(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor: ...
