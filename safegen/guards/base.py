"""The guard hook protocol: how an inference-time guard takes part in the denoising loop.

A guard is a small object in the shape of diffusers' guiders, but with a hook *inside* the loop (diffusers'
step-end callbacks run after the scheduler step and cannot change eps). For each batch,
:func:`safegen.generator.generate` calls::

    guard.begin(ctx)                                    # once: the batch's prompts, timesteps, helpers
    for step, t in enumerate(ctx.timesteps):
        extra = guard.branches(step)                    # (k, B, L, D) extra prompt embeddings, or None
        # one batched UNet call over [uncond?, cond, extra branches]
        eps = guard.guide(step, t, latents, eps_uncond, eps_cond, eps_extra)
        latents = scheduler.step(eps, t, latents)
        latents = guard.after_step(step, t, latents)
    infos = guard.end()                                 # one dict per image, saved with it

``branches`` may change over time and may return None to drop its branches for the rest of the run (a
benign prompt then costs what plain CFG costs). ``after_step`` lets a guard keep a second latent stream
with its own scheduler instance (``ctx.make_scheduler()``) and blend it in.

Guards are stateful per batch: ``begin`` resets them, so one instance may serve many batches, but not two
runs at the same time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from safegen.errors import SafegenError
from safegen.options import build


@dataclass
class RunContext:
    """What a guard is told about the batch it guards (see :meth:`Guard.begin`).

    Attributes:
        prompts: the batch's prompts, one per image (B).
        seeds: the batch's seeds, one per image.
        n_steps: the number of denoising steps.
        timesteps: the scheduler's timesteps, (n_steps,).
        cfg: the classifier-free guidance scale w.
        do_cfg: whether the loop computes the unconditional branch (``cfg > 1`` or ``guard.needs_uncond``).
        prompt_embeds: the prompts' text embeddings, (B, L, D).
        negative_embeds: the negative prompt's embeddings, (B, L, D).
        encode: texts -> text embeddings (len(texts), L, D), on the model's device and dtype.
        unet: (latent_model_input, t, embeds) -> eps, one raw UNet call (no scale_model_input).
        make_scheduler: a fresh scheduler of the run's class and config, with the run's timesteps set.
        step_kwargs: the run's extra ``scheduler.step`` arguments (``eta``, ``generator``) where accepted.
        generators: one ``torch.Generator`` per image.
        device: the device latents live on.
        dtype: the dtype of latents and embeddings.
        options: the generation settings (a dict of :class:`safegen.generator.GenerationConfig`).
        token_vectors: a word -> the text encoder's input embeddings of its tokens, (n_tokens, D)
            (no special tokens; what :class:`safegen.guards.detect.ConceptDetector` compares).
        scheduler: the run's own scheduler instance (read-only, except for a guard that hands some images
            over to a latent stream of its own and gives them that stream's solver state).
    """

    prompts: list[str]
    seeds: list[int]
    n_steps: int
    timesteps: torch.Tensor
    cfg: float
    do_cfg: bool
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    encode: Callable[[list[str]], torch.Tensor]
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    make_scheduler: Callable[[], Any]
    step_kwargs: dict[str, Any]
    generators: list[torch.Generator]
    device: torch.device
    dtype: torch.dtype
    options: dict[str, Any] = field(default_factory=dict)
    token_vectors: Callable[[str], torch.Tensor] | None = None
    scheduler: Any = None

    @property
    def batch_size(self) -> int:
        return len(self.prompts)


@runtime_checkable
class Guard(Protocol):
    """The hook protocol. :class:`GuardBase` gives the no-op defaults; a guard overrides what it needs."""

    name: str
    needs_uncond: bool

    def begin(self, ctx: RunContext) -> None:
        """Start a batch: remember what is needed from ``ctx`` and reset per-batch state."""

    def branches(self, step: int) -> torch.Tensor | None:
        """Extra prompt embeddings (k, B, L, D) evaluated in this step's UNet call, or None."""

    def conditioning(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (negative, prompt) embeddings, each (B, L, D), of this step's two base branches, or None
        for the run's own (a guard that runs some images on other texts from some step on)."""

    def guide(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        """Combine the branch predictions (each (B, C, h, w); ``eps_extra`` (k, B, C, h, w)) into eps."""

    def after_step(self, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Edit the latents after the scheduler step (return them unchanged if not needed)."""

    def end(self) -> list[dict]:
        """Finish the batch: one JSON-serialisable report per image."""

    def describe(self) -> dict:
        """The guard's name and options, recorded with every image."""

    def effective_eps(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        """The noise prediction the guard makes the sampler follow at this step, differentiably (what a
        white-box attack on the guarded model descends; :mod:`safegen.attacks`). For a guard acting on eps
        it is :meth:`guide`; a guard acting on latents gives its one-step equivalent."""

    def replay_steps(self) -> int:
        """How many first steps must run before a later step is guided as in a real run (their state:
        SP-Guard's judgement); an attack replays them on the attacked latent first."""


class GuardBase:
    """No-op defaults for the hook protocol, and plain CFG as :meth:`guide`.

    Subclasses set ``name`` and pass their options to ``__init__`` so :meth:`describe` records them.
    """

    name = "base"
    needs_uncond = False

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        self.ctx: RunContext | None = None

    def begin(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def branches(self, step: int) -> torch.Tensor | None:
        return None

    def conditioning(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def guide(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        if eps_uncond is None:
            return eps_cond
        # Classifier-free guidance (Ho & Salimans 2022): eps = eps_u + w * (eps_c - eps_u), written as
        # diffusers writes it so the pixels match its pipeline exactly.
        return eps_uncond + self.ctx.cfg * (eps_cond - eps_uncond)

    def after_step(self, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def end(self) -> list[dict]:
        return [{} for _ in range(self.ctx.batch_size)]

    def describe(self) -> dict:
        return {"name": self.name, **self.options}

    def effective_eps(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.guide(step, t, latents, eps_uncond, eps_cond, eps_extra)

    def replay_steps(self) -> int:
        return 0


class NoGuard(GuardBase):
    """The ``none`` guard: plain classifier-free guidance, pixel-identical to diffusers' pipeline."""

    name = "none"

    def __init__(self) -> None:
        super().__init__()


# --------------------------------------------------------------------------- shared set-up
def resolve_concept(guard: str, concept: Any) -> Any:
    """The :class:`~safegen.concepts.Concept` a guard acts against: a name, a Concept, or several at once.

    Several concepts (``"red,circle"``, or a list of names or Concepts) become one combined concept
    (:func:`safegen.concepts.combine_concepts`), which every guard reads as it reads one.

    Raises:
        SafegenError: no concept given, an unknown concept name or one named twice.
    """
    from safegen.concepts import concept_names, lookup_concept

    blank = isinstance(concept, str) and not concept_names(concept)
    if concept is None or blank or (isinstance(concept, (list, tuple)) and not concept):
        raise SafegenError(
            f"Guard '{guard}' needs a concept to act against: pass --concept (e.g. nudity, or red on the "
            "mini model; `safegen concepts` lists them)."
        )
    return lookup_concept(concept)


def configure(guard: Any, concept: Any, strength: str | None, options: Mapping[str, Any]) -> str:
    """Set ``guard.concept`` and ``guard.opts`` (defaults < preset < explicit options); return the strength.

    Every guard's constructor starts with this, using its class attributes ``name``, ``Options`` and
    ``PRESETS``; with no strength, the medium preset (whose values are the defaults) is recorded.
    """
    guard.concept = resolve_concept(guard.name, concept)
    strength = "medium" if strength is None else strength
    owner = f"Guard '{guard.name}'"
    guard.opts = build(guard.Options, owner, presets=guard.PRESETS, strength=strength, overrides=options)
    return strength
