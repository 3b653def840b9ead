"""Image generation with an autoregressive model: the AR sibling of :func:`safegen.generator.generate`.

    >>> from safegen.loader import load_model
    >>> from safegen.ar.generate import generate
    >>> model = load_model("mini-ar")
    >>> images = generate(model, ["a red circle"], n=2)           # [GeneratedImage, GeneratedImage]

It takes the same arguments and returns the same :class:`safegen.sampling.GeneratedImage` records, so
:mod:`safegen.outputs` and the CLI save them unchanged. ``config`` may be a
:class:`safegen.ar.sampler.SamplingConfig` or the diffusion :class:`safegen.sampling.GenerationConfig`:
from the latter only ``cfg``, ``batch_size`` and ``negative_prompt`` apply (``steps`` and ``eta`` have
no meaning for token sampling; a size other than the model's is refused), the rest of the sampling
settings being the model family's defaults; a negative prompt takes the place of CFG's null condition.
Each image's ``info`` records the sampling settings used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from safegen.ar.interface import ARModel
from safegen.ar.sampler import SamplingConfig
from safegen.errors import SafegenError, unknown
from safegen.sampling import OUTPUT_TYPES, GeneratedImage, GenerationConfig, plan_jobs


def generate(
    model: ARModel,
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    n: int = 1,
    config: SamplingConfig | GenerationConfig | None = None,
    guard: Any = None,
    progress: Callable[[int, int], None] | None = None,
    output_type: str = "pil",
) -> list[GeneratedImage]:
    """Generate ``n`` images per prompt with an AR model.

    Args:
        model: an AR model (:func:`safegen.ar.load_ar_model` or :func:`safegen.loader.load_model`).
        prompts: the prompts; none may be empty.
        seeds: one seed per image, prompt-major; default 0..N-1.
        n: images per prompt.
        config: sampling settings (see the module docstring); default: the model's defaults.
        guard: must be None or ``none``: inference guards act inside diffusion loops.
        progress: called as ``progress(done, total)`` after every token step, counting image-tokens.
        output_type: ``pil`` or ``np`` ((H, W, 3) uint8 arrays).

    Returns:
        One :class:`GeneratedImage` per image, in prompt-major order.

    Raises:
        SafegenError: empty prompt, wrong number of seeds, bad settings, a guard, a bad output type.
    """
    if output_type not in OUTPUT_TYPES:
        raise unknown("output type", output_type, OUTPUT_TYPES)
    if getattr(model, "kind", None) != "ar":
        raise SafegenError(f"safegen.ar.generate runs autoregressive models; '{model.name}' is not one.")
    _check_guard(guard)
    sampling = sampling_config(model, config)
    jobs = plan_jobs(prompts, seeds, n)
    total, done = len(jobs) * model.n_tokens, 0

    def on_step(images: int) -> None:
        nonlocal done
        done += images
        if progress is not None:
            progress(done, total)

    negative = getattr(config, "negative_prompt", None) or None  # replaces CFG's null condition
    negatives = [negative] * len(jobs) if negative else None
    tokens = model.generate_tokens(
        [p for p, _ in jobs], [s for _, s in jobs], sampling, on_step, negatives
    )  # (N, T)
    arrays = model.decode(tokens, batch_size=sampling.batch_size)  # (N, H, W, 3) uint8
    info = {"sampling": sampling.to_dict(), "family": model.family}
    if negatives:
        info["negative_prompt"] = negative
    return [
        GeneratedImage(
            prompt=p, seed=s, image=Image.fromarray(a) if output_type == "pil" else a, info=dict(info)
        )
        for (p, s), a in zip(jobs, arrays, strict=True)
    ]


def sampling_config(model: ARModel, config: SamplingConfig | GenerationConfig | None) -> SamplingConfig:
    """The sampling settings for ``config``: as given, or the model's defaults with a diffusion config's
    ``cfg`` and ``batch_size``.

    Raises:
        SafegenError: a diffusion config asks for another image size, or a negative prompt without CFG.
    """
    if config is None or isinstance(config, SamplingConfig):
        config = config or SamplingConfig.for_model(model)
        config.validate()
        return config
    if not isinstance(config, GenerationConfig):
        raise SafegenError(
            f"config must be a SamplingConfig or GenerationConfig, got {type(config).__name__}."
        )
    config.validate()
    for name in ("height", "width"):
        value = getattr(config, name)
        if value is not None and value != model.image_size:
            raise SafegenError(f"{model.name} generates {model.image_size} px images; got {name}={value}.")
    if config.negative_prompt and config.cfg <= 1.0:
        raise SafegenError("A negative prompt acts through guidance: it needs --cfg above 1.")
    return SamplingConfig.for_model(model, cfg=float(config.cfg), batch_size=config.batch_size)


def _check_guard(guard: Any) -> None:
    name = guard if isinstance(guard, str) else getattr(guard, "name", None) if guard is not None else None
    if name not in (None, "none"):
        raise SafegenError(
            f"Guard '{name}' acts inside a diffusion loop; autoregressive models take no inference guard "
            "(erase concepts from them with a fine-tuning method such as VCE)."
        )
