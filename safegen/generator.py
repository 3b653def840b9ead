"""Text-to-image generation: safegen's own denoising loop, with a guard hook inside it.

    >>> from safegen.loader import load_model
    >>> from safegen.generator import GenerationConfig, generate
    >>> model = load_model("mini")
    >>> images = generate(model, ["a red circle"], n=2, config=GenerationConfig(steps=20))

With the default ``none`` guard the loop gives the same pixels as diffusers'
``StableDiffusionPipeline.__call__`` for the same model, seeds and settings (checked by
``tests/test_generator.py`` and ``benchmarks/bench_generator.py``): prompt encoding, ``randn`` with one
generator per image, ``init_noise_sigma``, ``scale_model_input``, one UNet call over the concatenated
[uncond, cond] batch, ``eps_u + w * (eps_c - eps_u)``, ``scheduler.step`` (with ``eta``/``generator``
where the scheduler takes them), VAE decode with ``scaling_factor`` and the same rounding to uint8.

Every image has its own ``torch.Generator(device).manual_seed(seed)``, so its noise does not depend on the
batch it lands in. What is guaranteed: the same (prompt, seed, settings, batch size, device, dtype,
library versions) gives the same PNG bytes. A different batch size runs the same arithmetic through
batched kernels that may round differently: pixel values may then differ by at most 2 (of 255) in a few
pixels (measured on the bundled mini model, batch 1 vs 8: 1, in 0.008 % of pixels;
``tests/test_generator.py`` checks the bound).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from safegen.errors import SafegenError, unknown
from safegen.guards.base import Guard, NoGuard, RunContext
from safegen.loader import LoadedModel
from safegen.sampling import OUTPUT_TYPES, GeneratedImage, GenerationConfig, plan_jobs

log = logging.getLogger(__name__)


def generate(
    model: LoadedModel,
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    n: int = 1,
    config: GenerationConfig | None = None,
    guard: Guard | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    output_type: str = "pil",
) -> list[GeneratedImage]:
    """Generate ``n`` images per prompt.

    Args:
        model: a loaded SD model (:func:`safegen.loader.load_model`).
        prompts: the prompts; none may be empty.
        seeds: one seed per image, prompt-major (prompt 0's ``n`` images first); default 0..N-1.
        n: images per prompt.
        config: sampling settings; default :class:`GenerationConfig()`.
        guard: a guard object or registered name; default ``none`` (plain CFG).
        progress: called as ``progress(done, total)`` after every denoising step, counting image-steps
            (a step of a batch of B images adds B; total = images x steps).
        output_type: ``pil`` or ``np`` ((H, W, 3) uint8 arrays).

    Returns:
        One :class:`GeneratedImage` per image, in prompt-major order.

    Raises:
        SafegenError: empty prompt, wrong number of seeds, bad settings or output type.
    """
    config = config or GenerationConfig()
    config.validate()
    if output_type not in OUTPUT_TYPES:
        raise unknown("output type", output_type, OUTPUT_TYPES)
    if model.kind == "ar":  # autoregressive models have their own sampler behind the same call
        from safegen.ar.generate import generate as generate_ar

        return generate_ar(model, prompts, seeds, n, config, guard, progress, output_type)
    if model.kind != "sd":
        raise SafegenError(f"generate() runs diffusion models; '{model.name}' is of kind '{model.kind}'.")
    if isinstance(guard, str):
        from safegen.guards import get_guard

        guard = get_guard(guard)
    guard = guard or NoGuard()
    if guard.name != "none":
        from safegen.bundled import mini_tuned_notice

        mini_tuned_notice(model.name, "guard", guard.name)
    jobs = plan_jobs(prompts, seeds, n)
    height, width = image_size(model, config)
    total, done = len(jobs) * config.steps, 0

    def on_step(images: int) -> None:
        nonlocal done
        done += images
        if progress is not None:
            progress(done, total)

    results: list[GeneratedImage] = []
    with torch.no_grad():
        negative = encode_text(model, [config.negative_prompt])  # (1, L, D), shared by all batches
        for start in range(0, len(jobs), config.batch_size):
            batch = jobs[start : start + config.batch_size]
            pixels, infos = denoise(model, batch, config, guard, (height, width), negative, on_step)
            for (prompt, seed), array, info in zip(batch, pixels, infos, strict=True):
                image = Image.fromarray(array) if output_type == "pil" else array
                results.append(GeneratedImage(prompt=prompt, seed=seed, image=image, info=info))
    return results


def denoise(
    model: LoadedModel,
    batch: list[tuple[str, int]],
    config: GenerationConfig,
    guard: Guard,
    size: tuple[int, int],
    negative: torch.Tensor,
    on_step: Callable[[int], None],
) -> tuple[np.ndarray, list[dict]]:
    """Run the denoising loop for one batch of (prompt, seed) pairs.

    Returns:
        (B, H, W, 3) uint8 pixels and the guard's per-image reports.
    """
    prompts, seeds = [p for p, _ in batch], [s for _, s in batch]
    batch_size = len(batch)
    generators = [torch.Generator(model.device).manual_seed(seed) for seed in seeds]
    cond = encode_text(model, prompts)  # (B, L, D)
    uncond = negative.expand(batch_size, -1, -1)  # (B, L, D)
    scheduler = fresh_scheduler(model, config.steps)
    ctx = run_context(model, config, guard, prompts, seeds, cond, uncond, scheduler, generators)
    latents = initial_noise(model, generators, size, cond.dtype) * scheduler.init_noise_sigma  # (B, 4, h, w)
    guard.begin(ctx)
    for i, t in enumerate(ctx.timesteps):
        eps_uncond, eps_cond, eps_extra = branch_predictions(ctx, guard, i, t, latents, scheduler)
        eps = guard.guide(i, t, latents, eps_uncond, eps_cond, eps_extra).to(latents.dtype)  # fp32 LoRA out
        latents = scheduler.step(eps, t, latents, **ctx.step_kwargs, return_dict=False)[0]
        latents = guard.after_step(i, t, latents)
        on_step(batch_size)
    infos = guard.end()
    if len(infos) != batch_size:
        raise RuntimeError(f"guard '{guard.name}' reported {len(infos)} images for a batch of {batch_size}")
    return decode_latents(model, latents), infos


def run_context(
    model: LoadedModel,
    config: GenerationConfig,
    guard: Guard,
    prompts: list[str],
    seeds: list[int],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scheduler: Any,
    generators: list[torch.Generator],
) -> RunContext:
    """What a guard is told about a batch (:class:`~safegen.guards.base.RunContext`)."""

    def run_unet(latent_input: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        return model.unet(latent_input, t, encoder_hidden_states=embeds, return_dict=False)[0]

    return RunContext(
        prompts=prompts,
        seeds=seeds,
        n_steps=len(scheduler.timesteps),
        timesteps=scheduler.timesteps,
        cfg=config.cfg,
        do_cfg=config.cfg > 1.0 or guard.needs_uncond,
        prompt_embeds=cond,
        negative_embeds=uncond,
        encode=lambda texts: encode_text(model, list(texts)),
        unet=run_unet,
        make_scheduler=lambda: fresh_scheduler(model, config.steps),
        step_kwargs=scheduler_step_kwargs(scheduler, config.eta, generators),
        generators=generators,
        device=model.device,
        dtype=cond.dtype,
        options=config.to_dict(),
        token_vectors=lambda word: token_vectors(model, word),
        scheduler=scheduler,
    )


def branch_predictions(
    ctx: RunContext, guard: Guard, step: int, t: torch.Tensor, latents: torch.Tensor, scheduler: Any
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """One batched UNet call over [uncond?, cond, the guard's extra branches] at step ``step``.

    Returns:
        ``eps_uncond`` (B, C, h, w) or None without CFG, ``eps_cond`` (B, C, h, w), ``eps_extra``
        (k, B, C, h, w) or None: what :meth:`Guard.guide` combines.
    """
    batch_size = latents.shape[0]
    negative, prompt = guard.conditioning(step) or (ctx.negative_embeds, ctx.prompt_embeds)
    base = [negative, prompt] if ctx.do_cfg else [prompt]
    extra = guard.branches(step)  # (k, B, L, D) or None
    if extra is not None:
        extra = extra.unsqueeze(0) if extra.dim() == 3 else extra
        if extra.dim() != 4 or extra.shape[1] != batch_size:
            raise RuntimeError(f"guard '{guard.name}' returned branches of shape {tuple(extra.shape)}")
    embeds = torch.cat(base if extra is None else [*base, extra.flatten(0, 1)])  # (n_branches * B, L, D)
    n_branches = embeds.shape[0] // batch_size
    latent_input = torch.cat([latents] * n_branches) if n_branches > 1 else latents
    latent_input = scheduler.scale_model_input(latent_input, t)
    eps_all = ctx.unet(latent_input, t, embeds).chunk(n_branches)  # n_branches x (B, 4, h, w)
    eps_uncond, eps_cond = (eps_all[0], eps_all[1]) if ctx.do_cfg else (None, eps_all[0])
    eps_extra = torch.stack(eps_all[len(base) :]) if extra is not None else None  # (k, B, 4, h, w)
    return eps_uncond, eps_cond, eps_extra


def model_cfg(model: Any, cfg: float | None) -> float:
    """``cfg``, or when None the model's default guidance scale: an AR model's own (its ``llamagen.json``
    sampling block), 7.5 (Stable Diffusion's usual scale) for diffusion models."""
    if cfg is not None:
        return float(cfg)
    if getattr(model, "kind", "sd") != "ar":
        return 7.5
    return float(getattr(model, "defaults", {}).get("cfg", 7.5))


def encode_text(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    """Texts -> CLIP text embeddings (len(texts), L, D), padded/truncated to the tokenizer's max length."""
    tokenizer, text_encoder = model.tokenizer, model.text_encoder
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    if max(len(ids) for ids in tokenizer(texts).input_ids) > tokenizer.model_max_length:
        log.warning("A prompt was truncated to the text encoder's %d tokens.", tokenizer.model_max_length)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(model.device)
    embeds = text_encoder(tokens.input_ids.to(model.device), attention_mask=mask)[0]
    return embeds.to(dtype=text_encoder.dtype, device=model.device)


def token_vectors(model: LoadedModel, word: str) -> torch.Tensor:
    """A word's tokens' input embeddings from the text encoder's table, (n_tokens, D), no special tokens."""
    ids = model.tokenizer(word, add_special_tokens=False).input_ids
    table = model.text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().float().cpu()


def fresh_scheduler(model: LoadedModel, steps: int) -> Any:
    """A new scheduler of the model's class and config with ``steps`` timesteps (never the shared one)."""
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    scheduler.set_timesteps(steps, device=model.device)
    return scheduler


def scheduler_step_kwargs(scheduler: Any, eta: float, generators: list[torch.Generator]) -> dict[str, Any]:
    """``eta`` and ``generator`` for schedulers whose ``step`` accepts them (DDIM, ancestral samplers)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def initial_noise(
    model: LoadedModel, generators: list[torch.Generator], size: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """Gaussian latents (B, C, h, w): one ``randn`` per image from its own generator, moved to the device."""
    scale = model.vae_scale_factor
    shape = (1, model.unet.config.in_channels, size[0] // scale, size[1] // scale)
    noise = [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.cat(noise).to(model.device)


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> np.ndarray:
    """Latents -> (B, H, W, 3) uint8 pixels, rounded exactly as diffusers' image processor rounds them."""
    latents = latents.to(model.vae.dtype)  # a half-precision VAE under a LoRA trained in fp32
    images = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0]  # (B, 3, H, W)
    images = (images * 0.5 + 0.5).clamp(0, 1)
    arrays = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return (arrays * 255).round().astype(np.uint8)


def image_size(model: LoadedModel, config: GenerationConfig) -> tuple[int, int]:
    """(height, width): the config's, or the UNet's sample size times the VAE's scale factor."""
    scale = model.vae_scale_factor
    sample = model.unet.config.sample_size
    default_h, default_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    height = config.height or default_h * scale
    width = config.width or default_w * scale
    for name, value in (("height", height), ("width", width)):
        if value % scale:
            raise SafegenError(f"{name} must be a multiple of the VAE's scale factor {scale}, got {value}.")
    return height, width
