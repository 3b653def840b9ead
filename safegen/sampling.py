"""What every generator shares, diffusion and autoregressive alike: the run's settings and its records.

A leaf module (no model code), so :mod:`safegen.generator` (diffusion) and :mod:`safegen.ar.generate`
(autoregressive) both build on it without importing each other.

    >>> from safegen.sampling import GenerationConfig, plan_jobs
    >>> plan_jobs(["a red circle"], None, n=2)       # [("a red circle", 0), ("a red circle", 1)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from safegen.errors import SafegenError

OUTPUT_TYPES = ("pil", "np")
MAX_SEED = 2**63 - 1
MAX_IMAGES = 1_000_000  # images of one call: a larger number is a typo, not a plan


@dataclass
class GenerationConfig:
    """Sampling settings shared by every image of a run.

    Attributes:
        steps: denoising steps (1..1000).
        cfg: classifier-free guidance scale w (0..50); as in diffusers, ``cfg <= 1`` means no CFG (the
            conditional prediction alone) unless the guard needs the unconditional branch.
        height: image height in pixels; None: the UNet's sample size times the VAE's scale factor.
        width: image width in pixels; None: as height.
        negative_prompt: the text of the unconditional branch ("" is plain CFG).
        batch_size: images per UNet batch (see :mod:`safegen.generator` for what it may change).
        eta: DDIM eta (0..1), passed to schedulers whose ``step`` takes it.
    """

    steps: int = 20
    cfg: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""
    batch_size: int = 8
    eta: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SafegenError on the first setting out of range."""
        check_int("steps", self.steps, 1, 1000)
        check_number("cfg", self.cfg, 0.0, 50.0)
        check_int("batch_size", self.batch_size, 1, 4096)
        check_number("eta", self.eta, 0.0, 1.0)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 8, 8192)
                if value % 8:
                    raise SafegenError(f"{name} must be a multiple of 8, got {value}.")
        if not isinstance(self.negative_prompt, str):
            raise SafegenError(
                f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GeneratedImage:
    """One generated image: its prompt, its seed, the image, and the guard's report on it."""

    prompt: str
    seed: int
    image: Image.Image | np.ndarray  # PIL RGB, or (H, W, 3) uint8 with output_type="np"
    info: dict[str, Any] = field(default_factory=dict)


def plan_jobs(prompts: Sequence[str], seeds: Sequence[int] | None, n: int) -> list[tuple[str, int]]:
    """(prompt, seed) per image, prompt-major; seeds default to 0..N-1.

    Raises:
        SafegenError: no prompts, an empty prompt, bad ``n``, or a seed list of the wrong length.
    """
    if isinstance(prompts, str):
        raise SafegenError("prompts must be a list of strings, not one string.")
    if not prompts:
        raise SafegenError("No prompts given.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise SafegenError(f"Prompt {i} is empty; every prompt needs some text.")
    check_int("n", n, 1, 100_000)
    total = len(prompts) * n
    if total > MAX_IMAGES:
        raise SafegenError(
            f"{len(prompts)} prompts x n={n} is {total} images; one call makes at most {MAX_IMAGES}."
        )
    seeds = list(range(total)) if seeds is None else list(seeds)
    if len(seeds) != total:
        raise SafegenError(f"Got {len(seeds)} seeds for {total} images ({len(prompts)} prompts x n={n}).")
    for seed in seeds:
        check_int("seed", seed, 0, MAX_SEED)
    return [(prompts[k // n], seeds[k]) for k in range(total)]


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SafegenError(f"{name} must be an integer, got {value!r}.")
    if not low <= value <= high:
        raise SafegenError(f"{name} must be in {low}..{high}, got {value}.")


def check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise SafegenError(f"{name} must be a number, got {value!r}.")
    if not low <= value <= high:  # also rejects NaN
        raise SafegenError(f"{name} must be in {low}..{high}, got {value}.")
