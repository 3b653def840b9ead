"""The one interface to autoregressive text-to-image models, used by ``generate``, ``bench`` and VCE.

An :class:`ARModel` is composed of two parts behind small protocols:

- an :class:`ARBackbone` (LlamaGen's GPT with its text encoder, or Janus's language model) that turns
  prompts into a conditioning :class:`Prefix` and gives next-image-token logits, with or without a KV cache;
- an :class:`ImageTokenizer` (a VQ autoencoder) that maps images to token grids and back.

    >>> model = safegen.loader.load_model("mini-ar")                         # or safegen.ar.load_ar_model
    >>> tokens = model.generate_tokens(["a red circle"], seeds=[0])            # (1, N) int64
    >>> images = model.decode(tokens)                                          # (1, H, W, 3) uint8
    >>> logp = model.token_logprobs(["a red circle"], tokens)                 # (1, N), differentiable

``token_logprobs`` is what a DPO loss (VCE) needs: log p(y_i | y_<i, prompt) for given tokens,
teacher-forced, conditional branch only (no CFG), with dropout off and no caption dropout even when the
modules are in training mode (LlamaGen's own training forward swaps 10 % of captions for the null
embedding and keeps dropout on; neither belongs in a log-probability).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from safegen.ar.protocols import ARBackbone, ImageTokenizer, Prefix
from safegen.errors import SafegenError

if TYPE_CHECKING:
    from safegen.ar.sampler import SamplingConfig


@contextmanager
def eval_mode(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Dropout off inside the block (``.eval()``); each submodule's mode is restored after. Gradients flow."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


@dataclass
class ARModel:
    """A loaded AR text-to-image model: backbone + image tokenizer, where it came from, and its defaults.

    ``kind`` is ``"ar"`` (diffusion models loaded by :func:`safegen.loader.load_model` have ``"sd"``);
    ``family`` is ``"llamagen"`` or ``"janus"``; ``defaults`` are the family's sampling defaults
    (``cfg``, ``temperature``, ``top_k``, ``top_p``).
    """

    name: str
    source: str
    family: str
    backbone: ARBackbone
    vq: ImageTokenizer
    device: torch.device
    dtype: torch.dtype
    defaults: dict[str, float] = field(default_factory=dict)
    kind: str = "ar"
    peft: Any = field(default=None, repr=False)  # the peft.PeftModel of an attached LoRA (safegen.adapters)

    def __post_init__(self) -> None:
        if self.backbone.codebook_size != self.vq.codebook_size:
            raise SafegenError(
                f"{self.source}: the GPT predicts {self.backbone.codebook_size} image codes but the VQ "
                f"tokenizer has {self.vq.codebook_size}; they must be trained together."
            )

    @property
    def n_tokens(self) -> int:
        return self.backbone.n_tokens

    @property
    def image_size(self) -> int:
        """Side of the square images in pixels: token grid side x the VQ's downsampling."""
        return math.isqrt(self.n_tokens) * self.vq.downsample

    def encode_prompts(self, prompts: Sequence[str]) -> Prefix:
        """Prompts -> the conditioning prefix (B, T, D) with its mask."""
        return self.backbone.encode_prompts(list(prompts))

    def generate_tokens(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        config: SamplingConfig | None = None,
        progress: Callable[[int], None] | None = None,
        negative_prompts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Sample image tokens (len(prompts), N), one seed per prompt, in batches of ``config.batch_size``.

        ``config`` is a :class:`safegen.ar.sampler.SamplingConfig` (default: the model's defaults).
        ``progress(k)`` is called after each token step with the number of images that advanced.
        ``negative_prompts``: one per prompt, a negative condition in place of the null prefix of CFG
        (:func:`safegen.ar.sampler.sample_tokens`); a prompt and its negative are encoded together, so
        they share one padded length.
        """
        from safegen.ar.sampler import SamplingConfig, sample_tokens

        config = config or SamplingConfig.for_model(self)
        if len(prompts) != len(seeds):
            raise SafegenError(f"Got {len(seeds)} seeds for {len(prompts)} prompts.")
        if negative_prompts is not None and len(negative_prompts) != len(prompts):
            raise SafegenError(f"Got {len(negative_prompts)} negative prompts for {len(prompts)} prompts.")
        out = []
        with torch.no_grad(), eval_mode(self.backbone.modules()):
            for start in range(0, len(prompts), config.batch_size):
                rows = slice(start, start + config.batch_size)
                batch, negative = list(prompts[rows]), None
                if negative_prompts is None:
                    prefix = self.encode_prompts(batch)
                else:
                    both = self.encode_prompts(batch + list(negative_prompts[rows]))
                    prefix, negative = both[: len(batch)], both[len(batch) :]
                seed_batch = list(seeds[rows])
                out.append(sample_tokens(self.backbone, prefix, seed_batch, config, progress, negative))
        return torch.cat(out)

    def decode(self, tokens: torch.Tensor, batch_size: int = 16) -> np.ndarray:
        """Tokens (B, N) -> (B, H, W, 3) uint8 images, rounded as torchvision's ``save_image`` rounds."""
        self._check_tokens(tokens)
        arrays = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                pixels = self.vq.decode_tokens(tokens[start : start + batch_size].to(self.device))
                pixels = (pixels.float() * 0.5 + 0.5).clamp(0, 1)  # (b, 3, H, W)
                arrays.append((pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
        return np.concatenate(arrays)

    def encode_images(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """PIL images, (H, W, 3) uint8 arrays, or a (B, 3, H, W) tensor in [-1, 1] -> tokens (B, N).

        Raises:
            SafegenError: an image is not ``image_size`` pixels square.
        """
        pixels = to_pixels(images, self.image_size).to(self.device)
        with torch.no_grad():
            return self.vq.encode_tokens(pixels)

    def token_logprobs(
        self,
        prompts: Sequence[str],
        tokens: torch.Tensor,
        inputs: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced log p(y_i | y_<i, prompt) of tokens (B, N) under prompts: (B, N) float32.

        Conditional branch only, dropout off, no caption dropout; differentiable in the backbone's
        parameters (call it under ``torch.no_grad()`` for a frozen reference model). ``inputs`` (B, N), when
        given, is the context fed to the model in place of ``tokens`` (VCE's token corruption); the
        log-probabilities are still those of ``tokens``. ``shift`` (R, T, D), when given, is added to the
        prefix embeddings of the first R rows at their last T positions (prompts are left-padded, so a
        shift made on a shorter batch lands on the same tokens); differentiable in ``shift`` (VCE's
        adversarial training, :func:`safegen.recipes.vce_adversarial.prefix_attack`).
        """
        self._check_tokens(tokens)
        if len(prompts) != tokens.shape[0]:
            raise SafegenError(f"Got {len(prompts)} prompts for {tokens.shape[0]} token sequences.")
        tokens = tokens.to(self.device)
        if inputs is not None:
            self._check_tokens(inputs)
            if inputs.shape != tokens.shape:
                raise SafegenError(f"inputs {tuple(inputs.shape)} and tokens {tuple(tokens.shape)} differ.")
        context = tokens if inputs is None else inputs.to(self.device)
        with eval_mode(self.backbone.modules()):
            prefix = self.encode_prompts(prompts)
            if shift is not None:
                prefix = shifted(prefix, shift)
            logits = self.backbone.logits(prefix, context[:, :-1])  # (B, N, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1)  # (B, N)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[1] != self.n_tokens:
            raise SafegenError(
                f"Expected image tokens of shape (B, {self.n_tokens}), got {tuple(tokens.shape)}."
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vq.codebook_size):
            raise SafegenError(f"Image tokens must be in 0..{self.vq.codebook_size - 1}.")


def shifted(prefix: Prefix, shift: torch.Tensor) -> Prefix:
    """``prefix`` with ``shift`` (R, T, D) added to its first R rows' last T positions (zero elsewhere)."""
    rows, length = shift.shape[:2]
    total, width = prefix.embeds.shape[:2]
    if rows > total or length > width or shift.shape[2] != prefix.embeds.shape[2]:
        raise SafegenError(
            f"A prefix shift {tuple(shift.shape)} does not fit the prefix {tuple(prefix.embeds.shape)}."
        )
    full = torch.nn.functional.pad(shift.to(prefix.embeds.dtype), (0, 0, width - length, 0, 0, total - rows))
    return Prefix(prefix.embeds + full * prefix.mask[..., None], prefix.mask, prefix.ids)


def to_pixels(images: Sequence[Any] | torch.Tensor, size: int) -> torch.Tensor:
    """Images -> (B, 3, size, size) float32 in [-1, 1]; a tensor input is taken as already scaled."""
    if isinstance(images, torch.Tensor):
        pixels = images.float()
    else:
        arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
        if any(a.ndim != 3 or a.shape[2] != 3 for a in arrays):
            raise SafegenError("Images must be RGB: (H, W, 3) arrays or PIL images.")
        if len({a.shape for a in arrays}) > 1:
            raise SafegenError("Images of one call must all have the same size.")
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if pixels.dim() != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
        raise SafegenError(f"The model takes {size}x{size} RGB images, got shape {tuple(pixels.shape)}.")
    return pixels
