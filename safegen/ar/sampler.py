"""Sampling image tokens from an AR backbone: KV cache, classifier-free guidance, temperature, top-k, top-p.

    >>> from safegen.ar.sampler import SamplingConfig, sample_tokens
    >>> tokens = sample_tokens(model.backbone, model.encode_prompts(["a red circle"]), [0], SamplingConfig())

Per step, as in LlamaGen's ``generate.py``:

- CFG on logits (Ho & Salimans 2022, applied to token logits as in LlamaGen and Janus):
  ``l = l_uncond + s * (l_cond - l_uncond)`` when ``s > 1``; the conditional and unconditional rows run as one
  batch of 2B;
- temperature: ``l / max(T, 1e-5)``; top-k keeps the k largest logits (ties kept); top-p (Holtzman et al.
  2020) keeps the smallest set whose probability reaches p (the first token past p included);
- the token is drawn by inverse CDF from a uniform number taken from the image's own generator
  (``torch.Generator().manual_seed(seed)``, N numbers per image), so a (prompt, seed) pair gives the same
  tokens whatever batch it is in and whether or not the cache is used.

With ``use_cache`` the prefix runs once and each step feeds only the new token (O(N) work per image);
without, each step reruns the whole sequence (O(N^2)); both give the same tokens
(``tests/test_ar_sampler.py``, ``benchmarks/bench_kv_cache.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from safegen.ar.protocols import ARBackbone, Prefix
from safegen.errors import SafegenError


@dataclass
class SamplingConfig:
    """Token sampling settings; defaults are LlamaGen's text-to-image ones (cfg 7.5, top-k 1000).

    Attributes:
        cfg: guidance scale s (0..50); ``s <= 1`` samples the conditional logits alone.
        temperature: softmax temperature (0..10; 0 is greedy up to ties).
        top_k: keep the k most likely tokens (0: all).
        top_p: nucleus mass in (0, 1] (1: all).
        batch_size: images per forward batch (does not change the tokens).
        use_cache: KV cache on (same tokens, much faster).
    """

    cfg: float = 7.5
    temperature: float = 1.0
    top_k: int = 1000
    top_p: float = 1.0
    batch_size: int = 8
    use_cache: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SafegenError on the first setting out of range."""
        checks = (
            ("cfg", self.cfg, 0.0, 50.0),
            ("temperature", self.temperature, 0.0, 10.0),
            ("top_p", self.top_p, 1e-6, 1.0),
        )
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise SafegenError(f"{name} must be a number in {low:g}..{high:g}, got {value!r}.")
        for name, value, low in (("top_k", self.top_k, 0), ("batch_size", self.batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SafegenError(f"{name} must be an integer >= {low}, got {value!r}.")

    @classmethod
    def for_model(cls, model: Any, **overrides: Any) -> SamplingConfig:
        """The model family's defaults (``model.defaults``), with any field overridden."""
        return cls(**{**getattr(model, "defaults", {}), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(2B, V) rows [cond; uncond] -> (B, V) guided logits l_u + s (l_c - l_u)."""
    cond, uncond = logits.chunk(2)
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits (B, V) outside the top-k and outside the top-p nucleus to -inf (a new tensor)."""
    logits = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = mass > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses p
        drop[..., 0] = False
        logits[drop.scatter(-1, order, drop)] = float("-inf")
    return logits


def draw(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: (B, V) logits and (B,) numbers in [0, 1) -> (B,) token ids.

    Token j is chosen when cdf[j-1] <= u * cdf[V-1] < cdf[j] (cdf in float64), so tokens of probability
    zero are never chosen.
    """
    cdf = logits.double().softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    target = (uniform.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def uniforms(seeds: Sequence[int], n: int) -> torch.Tensor:
    """(B, n) float64 numbers in [0, 1): row b from ``torch.Generator().manual_seed(seeds[b])`` (on CPU)."""
    rows = [
        torch.rand(n, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds
    ]
    return torch.stack(rows)


def next_token(logits: torch.Tensor, uniform: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Guided, tempered, filtered logits (B or 2B, V) -> (B,) sampled tokens."""
    if config.cfg > 1.0:
        logits = guide(logits, config.cfg)
    logits = filter_logits(logits / max(config.temperature, 1e-5), config.top_k, config.top_p)
    return draw(logits, uniform)


def sample_tokens(
    backbone: ARBackbone,
    prefix: Prefix,
    seeds: Sequence[int],
    config: SamplingConfig,
    progress: Callable[[int], None] | None = None,
    negative: Prefix | None = None,
) -> torch.Tensor:
    """Sample ``backbone.n_tokens`` image tokens for each row of ``prefix``: (B, N) int64.

    ``negative``: a negative condition, one row per row of ``prefix`` (the same length T), that takes the
    place of the unconditional prefix in classifier-free guidance, ``l = l_neg + s (l_cond - l_neg)``: the
    logits are pushed away from what it describes, as a negative prompt does in a diffusion model.
    Call under ``torch.no_grad()``. ``progress(B)`` is called after each token step.
    """
    batch, n = len(prefix), backbone.n_tokens
    if len(seeds) != batch:
        raise SafegenError(f"Got {len(seeds)} seeds for {batch} prompts.")
    guided = config.cfg > 1.0
    if negative is not None and not guided:
        raise SafegenError("A negative condition acts through guidance: it needs cfg > 1.")
    if guided:
        uncond = backbone.null_prefix(prefix) if negative is None else negative
        full = Prefix.cat([prefix, uncond])  # (2B, T, D)
    else:
        full = prefix  # (B, T, D)
    numbers = uniforms(seeds, n)  # (B, N)
    tokens = torch.zeros(batch, n, dtype=torch.long, device=prefix.embeds.device)

    def both(t: torch.Tensor) -> torch.Tensor:  # the same tokens for the conditional and unconditional rows
        return torch.cat([t, t]) if guided else t

    cache = backbone.new_cache(len(full)) if config.use_cache else None
    if cache is not None:
        logits = backbone.prefill(full, cache)  # (B', V)
    else:
        logits = backbone.logits(full, both(tokens[:, :0]), last_only=True)[:, -1]
    for i in range(n):
        tokens[:, i] = next_token(logits, numbers[:, i], config)
        if progress is not None:
            progress(batch)
        if i == n - 1:
            break
        if cache is not None:
            logits = backbone.extend(both(tokens[:, i : i + 1]), cache)[:, -1]  # (B', V)
        else:
            logits = backbone.logits(full, both(tokens[:, : i + 1]), last_only=True)[:, -1]
    return tokens
