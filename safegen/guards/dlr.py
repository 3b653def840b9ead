"""Dual latent reconstruction (DLR): blend the prompt's latents with a safety-context stream.

Following "Safety Without Semantic Disruptions: Editing-free Safe Image Generation via Context-preserving
Dual Latent Reconstruction" (arXiv 2411.13982; our reading, ``docs/methods/dlr.md``). No weights are edited.
Two latent streams start from the same initial noise:

- stream A: the prompt, with the run's unconditional branch (plain CFG);
- stream B: a safety context (the prompt with the concept's safe anchor text, ``context``) with the
  concept's unsafe text as its negative prompt (``negative``).

Each stream has its own scheduler instance (multistep solvers keep a history per stream) and, for
stochastic samplers, its own copy of the generators, so both draw the same noise. Steps before the
global-context threshold tau_gc run once (stream B = stream A: the layout of the original prompt is kept);
from step ``fork = round(tau_gc * N)`` on both streams run and are combined by a weighted sum::

    eps_A = eps_u + w (eps_c - eps_u);   eps_B = eps_n + w (eps_ctx - eps_n)            # Eq. (1) streams
    z_A, z_B = scheduler_A.step(eps_A, t, x_A), scheduler_B.step(eps_B, t, x_B)        # Eq. (2) two steps
    z = (1 - omega) z_A + omega z_B                               (space=latent)       # Eq. (3) blend
    z = z_A + omega sqrt(abar_prev) (x0_B - x0_A)                 (space=x0)           # Eq. (3') blend
    z = z * ((1 - omega)|z_A| + omega |z_B|) / |z|                (norm_correction)    # Eq. (4) norm

``blend=step`` blends after every step from the fork on and both streams go on from the blend (stream B's
UNet branches then share the batched call with stream A); ``blend=final`` lets the streams run apart and
blends once, after the last step (stream B gets its own UNet call). Averaging latents shrinks their norm
and washes images out: ``norm_correction`` rescales each image's blended
latent to the interpolated norm. ``space=x0`` blends the two streams' predicted clean latents and keeps
stream A's noise (variance-preserving schedulers only: DDIM, DDPM, PNDM, DPM-Solver, UniPC).

``detect=embedding`` (our addition) rewrites every word whose token embedding is near the concept's
keywords (:mod:`safegen.guards.detect`), so synonyms and misspellings the registry was not told are
replaced too. ``context=rewrite-append`` (the default, our addition) also appends the safe text to a
prompt with nothing to rewrite (an implicit prompt, a caption that leaves the concept out), so stream B
still asks for the safe alternative. With ``context=rewrite`` and ``negative=empty``, an image whose prompt
has nothing to rewrite has stream B = stream A: when that holds for the whole batch, stream B is not run
at all (a benign prompt costs plain CFG and gives plain CFG's image).

Gate and fork (``gate=noise``, our addition): omega comes from the noise judge (judge.py) at step K::

    omega = weight * r                    (gate_shape=ramp)    # Eq. (G)  r: judge.py Eq. (c'), in [0, 1]
    omega = weight * [r > 0]              (gate_shape=hard)    # Eq. (G') every flagged image in full

With ``speculate=false`` stream B forks there, not at tau_gc: by then a prompt that implies an object has
laid out its shape, and stream B cannot redraw it. ``speculate`` (the default) forks stream B at tau_gc,
as the paper does, while the gate judges: until step K it runs apart from stream A in a UNet call of its
own; at K images judged benign drop it (their latents are stream A's, plain CFG's image) and the rest are
blended with their omega (one at the default weight: the image of stream B since tau_gc, which goes on
in the run's scheduler with stream B's solver state, :func:`adopt_rows`). It costs two branches more over
the steps between tau_gc and K, for every image.

Cost: the steps from the fork on run two UNet branches more, so about ``1 + (1 - tau_gc)`` x plain CFG
(``negative=empty`` in step mode shares stream A's unconditional branch: ``1 + (1 - tau_gc) / 2``). When
every omega of the batch is 0 or 1 (blend=step, space=latent) the blend keeps one stream per image, so
each image runs only its own stream's branches (:meth:`DualLatentGuard.conditioning`): plain CFG's cost
from the judgement on; with ``speculate``, stream B's branches before it come on top, for every image.
With the defaults (``gate_shape=hard``, weight 1) every omega is 0 or 1.

    safegen generate "a photo of a nude woman" --model path/to/sd --guard dlr --concept nudity
    safegen bench mini --guard dlr --concept red --set weight=0.9 --set tau_gc=0.3
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from safegen.concepts import rewrite
from safegen.errors import SafegenError
from safegen.guards.base import GuardBase, RunContext, configure
from safegen.guards.detect import ConceptDetector
from safegen.guards.judge import PART_KEYS, STATISTICS, NoiseJudge, part_values, reported, window_options
from safegen.options import option


@dataclass
class DLROptions:
    """DLR's knobs (defaults: the ``medium`` preset; where they come from: docs/methods/dlr.md)."""

    weight: float = option(1.0, low=0.0, high=1.0, help="omega: share of the safety stream in the blend")
    tau_gc: float = option(0.05, low=0.0, high=1.0, help="share of steps run as one stream (global context)")
    blend: str = option("step", choices=("step", "final"), help="blend after every step, or once at the end")
    space: str = option("latent", choices=("latent", "x0"), help="blend latents, or predicted clean latents")
    norm_correction: bool = option(True, help="rescale the blend to the streams' interpolated norm")
    context: str = option(
        "rewrite-append",
        choices=("prompt", "append", "rewrite", "rewrite-append"),
        help="stream B's prompt: the prompt itself, prompt + safe text, its concept words rewritten, or "
        "rewritten and, where it has none (an implicit prompt), the safe text appended",
    )
    negative: str = option(
        "unsafe", choices=("unsafe", "empty"), help="stream B's negative: the unsafe text, or the run's own"
    )
    gate: str = option(
        "noise",
        choices=("noise", "none"),
        help="omega per image scaled by the noise judge's harmfulness (Eq. G), or the same for every image",
    )
    judge_steps: int = option(6, low=1, high=1000, help="gate=noise: h is read by step K (omega known there)")
    judge_start: int = option(4, low=0, high=999, help="gate=noise: S, first judged step, at most K-1")
    judge_window: int = option(
        0, low=0, high=128, help="gate=noise: judge each k x k latent window, the largest (judge.py Eq. b5)"
    )
    judge_window_mode: str
    window_tau: float
    window_h_sat: float
    judge_window_mode, window_tau, window_h_sat = window_options("gate=noise, judge_window: ")
    judge_direction: str = option(
        "relative", choices=STATISTICS, help="gate=noise: the judged statistic (judge.py Eq. b1-b3)"
    )
    anchor_weight: float = option(
        0.5, low=0.0, high=2.0, help="gate=noise, judge_direction=relative: w of Eq. (b3)"
    )
    tau: float = option(0.1, low=-1.0, high=0.99, help="gate=noise: threshold (calibrated), omega = 0 below")
    h_sat: float = option(0.3, low=-0.99, high=1.0, help="gate=noise: h of full omega (calibrated)")
    presence: bool = option(
        True, help="gate=noise: also blend images whose latent already shows the concept (judge.py Eq. b4)"
    )
    presence_tau: float = option(0.0, low=-1.0, high=0.99, help="presence: threshold (calibrated)")
    presence_h_sat: float = option(0.2, low=-0.99, high=1.0, help="presence: full omega (calibrated)")
    detect: str = option(
        "embedding",
        choices=("keywords", "embedding"),
        help="context=rewrite: replace the registry's keywords, or every word near them (Eq. D1-D3)",
    )
    detect_tau: float = option(0.6, low=0.0, high=0.99, help="detect=embedding: word score replaced from")
    gate_shape: str = option(
        "hard",
        choices=("ramp", "hard"),
        help="gate=noise: omega = weight x the judge's ramp (Eq. G), or the full weight for every image "
        "the judge flags at all (Eq. G')",
    )
    speculate: bool = option(
        True,
        help="gate=noise: fork stream B at tau_gc while the gate judges (its own UNet call until step K); "
        "images judged benign drop it, the rest keep it from there",
    )


PRESETS: dict[str, dict[str, Any]] = {
    "weak": {"weight": 0.75},
    "medium": {},  # the dataclass defaults
    "strong": {"gate": "none"},  # stream B for every image: nothing slips past the judge, at retention's cost
}


# --------------------------------------------------------------------------- the equations
def blend_latents(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    weight: float | torch.Tensor,
    norm_correction: bool,
    delta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (3)/(3') and (4): blend two (B, C, h, w) latents; ``delta`` replaces ``z_b - z_a`` (space=x0).
    ``weight``: one omega, or one per image (B,)."""
    w = torch.as_tensor(weight, dtype=torch.float32, device=z_a.device).reshape(-1)
    if w.numel() == 1:
        w = w.expand(z_a.shape[0])
    w4 = w.to(z_a.dtype)[:, None, None, None]
    z = (1 - w4) * z_a + w4 * z_b if delta is None else z_a + w4 * delta
    if not norm_correction or (delta is None and bool(((w == 0) | (w == 1)).all())):
        return z
    norm_a, norm_b = z_a.flatten(1).norm(dim=1), z_b.flatten(1).norm(dim=1)
    target = (1 - w) * norm_a + w * norm_b  # Eq. (4)
    scale = target / z.flatten(1).norm(dim=1).clamp_min(1e-12)
    return z * scale.to(z.dtype)[:, None, None, None]


def predicted_x0(scheduler: Any, sample: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean latent a variance-preserving scheduler's model output implies at timestep ``t``."""
    abar = scheduler.alphas_cumprod[int(t)].to(sample.device, torch.float32)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (sample.float() - (1 - abar).sqrt() * output.float()) / abar.sqrt()
    elif kind == "v_prediction":
        x0 = abar.sqrt() * sample.float() - (1 - abar).sqrt() * output.float()
    elif kind == "sample":
        x0 = output.float()
    else:
        raise SafegenError(f"Guard 'dlr' space=x0 does not know prediction_type '{kind}'.")
    return x0.to(sample.dtype)


def adopt_rows(dst: Any, src: Any, rows: torch.Tensor, shape: torch.Size) -> None:
    """Give scheduler ``dst`` the per-image solver state of ``src`` (two instances of one class at the same
    step) for the images in ``rows`` (B,) bool: every tensor of the latents' ``shape`` they hold, alone or in
    a list (a multistep solver's past outputs, a last sample). After a speculative fork the images whose
    stream B was kept go on in the run's scheduler with stream B's history."""
    if dst is None:
        raise SafegenError("Guard 'dlr' speculate needs the run's scheduler (RunContext.scheduler).")
    mask = rows.to(torch.bool).reshape(-1, *([1] * (len(shape) - 1)))

    def pick(mine: Any, theirs: Any) -> Any:
        if isinstance(mine, torch.Tensor) and mine.shape == shape and isinstance(theirs, torch.Tensor):
            return torch.where(mask.to(mine.device), theirs.to(mine.dtype), mine)
        return mine

    for name, value in list(vars(dst).items()):
        other = getattr(src, name, None)
        if isinstance(value, list) and isinstance(other, list) and len(value) == len(other):
            setattr(dst, name, [pick(v, o) for v, o in zip(value, other, strict=True)])
        else:
            setattr(dst, name, pick(value, other))


def _clone(generator: torch.Generator) -> torch.Generator:
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


# --------------------------------------------------------------------------- the guard
class DualLatentGuard(GuardBase):
    """Dual latent reconstruction: a safety-context latent stream blended into the prompt's stream."""

    name = "dlr"
    needs_uncond = False
    Options = DLROptions
    PRESETS = PRESETS

    PART_KEYS = PART_KEYS  # judge.py: the options each part of a combined concept may set on its own

    def __init__(
        self,
        concept: Any = None,
        strength: str | None = None,
        part_options: dict[str, dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        strength = configure(self, concept, strength, options)
        from safegen.concepts import concept_parts

        self.parts = concept_parts(self.concept)  # judged one by one; stream B acts against them all
        self.part_values = part_values("dlr", self.parts, self.opts, part_options)
        self.needs_uncond = self.opts.gate == "noise"  # the judge reads eps_c - eps_u
        described = {"part_options": part_options} if part_options else {}
        super().__init__(
            concept=self.concept.name, strength=strength, **dataclasses.asdict(self.opts), **described
        )

    def context_text(self, prompt: str) -> str:
        """Stream B's prompt: the prompt, ``"<prompt>, <safe text>"`` (append), the keywords replaced
        (rewrite), or replaced where the prompt has them and appended where it has none (rewrite-append)."""
        if self.opts.context == "prompt":
            return prompt
        safe = self.concept.safe_text
        if self.opts.context.startswith("rewrite"):
            if self.opts.detect == "embedding":
                text = self.detector.rewrite(prompt, self.opts.detect_tau, safe)
            else:
                text = rewrite(prompt, self.concept)
            if text != prompt or self.opts.context == "rewrite":
                return text
        return f"{prompt}, {safe}" if safe else prompt

    def begin(self, ctx: RunContext) -> None:
        super().begin(ctx)
        opts, n = self.opts, ctx.n_steps
        self.fork = min(n, round(opts.tau_gc * n))  # steps [0, fork) run as one stream
        self.scheduler = ctx.make_scheduler()  # stream B's own instance
        if opts.space == "x0":
            self._check_vp(self.scheduler)
        self.step_kwargs = dict(ctx.step_kwargs)
        if "generator" in self.step_kwargs:
            self.step_kwargs["generator"] = [_clone(g) for g in ctx.generators]
        if opts.context.startswith("rewrite") and opts.detect == "embedding":
            if ctx.token_vectors is None:
                raise SafegenError(
                    "Guard 'dlr' detect=embedding needs the model's token embeddings (none given)."
                )
            self.detector = ConceptDetector(ctx.token_vectors, self.concept.keywords, self.concept.ignore)
        self.texts = [self.context_text(p) for p in ctx.prompts]
        self.negative_text = self.concept.unsafe_text if opts.negative == "unsafe" else None
        # stream B = stream A for every image: run one stream only (plain CFG's cost and image)
        self.idle = self.negative_text is None and self.texts == list(ctx.prompts)
        steps = min(opts.judge_steps, n) if opts.gate == "noise" and not self.idle else 0
        self.judges, self.judge_rows, texts = [], [], []
        for part, v in zip(self.parts, self.part_values, strict=True):  # one judgement per part
            judge = NoiseJudge(steps, ctx.batch_size, opts.judge_start, v["judge_direction"],
                               v["anchor_weight"], v["presence"], opts.judge_window,
                               opts.judge_window_mode)  # fmt: skip
            own = judge.branch_texts(part) if steps else []
            self.judges.append(judge)
            self.judge_rows.append(list(range(len(texts), len(texts) + len(own))))
            texts += own
        self.judge = self.judges[0]  # the judged steps (shared by the parts)
        self.omega = torch.full((ctx.batch_size,), opts.weight)
        self.worst = torch.zeros(ctx.batch_size, dtype=torch.long)
        self.decided = self.fork  # steps [fork, decided): stream B runs apart, omega not known yet
        if self.judge.steps:
            embeds = ctx.encode([t for t in texts for _ in range(ctx.batch_size)])  # each part's s (and a)
            self.unsafe = embeds.view(-1, ctx.batch_size, *embeds.shape[1:])  # (R, B, L, D)
            self.decided = max(self.fork, self.judge.steps)
            self.fork = self.fork if opts.speculate else self.decided
        if self.idle:
            self.fork = n
        self.context = ctx.encode(self.texts)  # (B, L, D)
        if self.negative_text is not None:
            self.negative = ctx.encode([self.negative_text] * ctx.batch_size)
        else:
            self.negative = ctx.negative_embeds
        self.swap: tuple[torch.Tensor, torch.Tensor] | None = None  # see conditioning()
        self.z_b: torch.Tensor | None = None  # stream B's latents before this step
        self.eps_b: torch.Tensor | None = None
        self.eps_a: torch.Tensor | None = None
        self.sample_a: torch.Tensor | None = None

    @staticmethod
    def _check_vp(scheduler: Any) -> None:
        sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
        if not hasattr(scheduler, "alphas_cumprod") or abs(sigma - 1.0) > 1e-6:
            raise SafegenError(
                f"Guard 'dlr' space=x0 needs a variance-preserving scheduler (DDIM, DDPM, PNDM, DPM-Solver); "
                f"this model uses {type(scheduler).__name__}. Use space=latent."
            )

    def _uses_cfg(self) -> bool:
        return self.ctx.do_cfg

    def _pending(self, step: int) -> bool:
        """speculate: stream B has forked but the gate has not judged yet (it runs apart, own UNet call)."""
        return self.fork <= step < self.decided and not self.idle

    def _one_stream_each(self, step: int) -> bool:
        """From the fork on, with every omega 0 or 1 and a step blend of latents, Eq. (3) keeps one stream
        per image (z = z_A at 0, z_B at 1, Eq. (4) then changes nothing): each image runs only its own
        stream's two branches, in the run's base rows (:meth:`conditioning`), stepped by the run's scheduler
        (whose history and noise match stream B's: both streams took the same steps before the fork; after a
        speculative fork the run's scheduler is given stream B's state for its images, :func:`adopt_rows`)."""
        if self.idle or step < self.decided or self.opts.blend != "step" or self.opts.space != "latent":
            return False
        return bool(((self.omega == 0) | (self.omega == 1)).all())

    def conditioning(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._one_stream_each(step):
            return None
        if self.swap is None:
            on = (self.omega == 1).to(self.context.device)[:, None, None]  # (B, 1, 1): stream B's images
            ctx = self.ctx
            self.swap = (
                torch.where(on, self.negative, ctx.negative_embeds),
                torch.where(on, self.context, ctx.prompt_embeds),
            )
        return self.swap

    def branches(self, step: int) -> torch.Tensor | None:
        if self.judge.judging(step):
            return self.unsafe  # eps_s, for the gate's judge
        if self.idle or step < self.decided or self.opts.blend != "step" or self._one_stream_each(step):
            return None
        rows = [] if self.opts.context == "prompt" else [self.context]  # context=prompt: eps_ctx = eps_c
        if self._uses_cfg() and self.negative_text is not None:
            rows.append(self.negative)
        return torch.stack(rows) if rows else None  # (R, B, L, D): eps_ctx, eps_n

    def guide(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        eps_a = super().guide(step, t, latents, eps_uncond, eps_cond, eps_extra)  # Eq. (1), stream A
        if self._one_stream_each(step):
            return eps_a  # Eq. (1) of each image's own stream (conditioning())
        if self.judge.judging(step):
            d_c = eps_cond - eps_uncond
            pairs = zip(self.judges, self.judge_rows, strict=True)
            if all([j.update(step, d_c, eps_uncond, eps_extra[rows]) for j, rows in pairs]):
                shape = self.opts.gate_shape  # Eq. (G) / (G'), judge.py (c'), (c''): the most harmful part
                shares = torch.stack([
                    j.share(v["tau"], v["h_sat"], v["presence_tau"], v["presence_h_sat"], shape,
                            v["window_tau"], v["window_h_sat"])
                    for j, v in zip(self.judges, self.part_values, strict=True)
                ])  # fmt: skip
                self.worst, self.omega = shares.argmax(0), self.opts.weight * shares.amax(0)
                if not bool((self.omega > 0).any()):
                    self.idle, self.fork = True, self.ctx.n_steps  # judged benign: plain CFG from here on
        if self.z_b is None or step < self.fork:
            self.z_b = latents  # one stream so far: B = A
        self.sample_a, self.eps_a = latents, eps_a
        if step < self.fork or self.idle:
            self.eps_b = eps_a
        elif self.opts.blend == "step" and not self._pending(step):  # B's branches came with the batch
            extra = list(eps_extra) if eps_extra is not None else []
            eps_ctx = eps_cond if self.opts.context == "prompt" else extra.pop(0)
            eps_n = extra.pop(0) if extra else eps_uncond
            self.eps_b = eps_ctx if eps_n is None else eps_n + self.ctx.cfg * (eps_ctx - eps_n)  # Eq. (1)
        else:  # stream B's own UNet call, made in after_step: only a real step uses it
            self.eps_b = None
        return eps_a

    def effective_eps(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        """One step's equivalent prediction: from a shared latent, blending the two streams' scheduler
        steps (Eq. 3) is stepping with ``(1 - omega) eps_A + omega eps_B`` for a scheduler linear in eps
        (DDIM, DPM-Solver's first order); our reading for attacks, without the norm correction."""
        eps_a = self.guide(step, t, latents, eps_uncond, eps_cond, eps_extra)
        if self.idle or step < self.decided or self.opts.blend != "step" or self._one_stream_each(step):
            return eps_a  # speculate: before the judgement the run's latents are stream A's
        w = self.omega.to(eps_a.device, eps_a.dtype)[:, None, None, None]
        return (1 - w) * eps_a + w * self.eps_b

    def _stream_b_eps(self, t: torch.Tensor) -> torch.Tensor:
        """Stream B's guided prediction from its own UNet call on its own latents (blend=final)."""
        if self._uses_cfg():
            embeds = torch.cat([self.negative, self.context])  # (2B, L, D)
            latent_input = self.scheduler.scale_model_input(torch.cat([self.z_b] * 2), t)
            eps_n, eps_ctx = self.ctx.unet(latent_input, t, embeds).chunk(2)
            return eps_n + self.ctx.cfg * (eps_ctx - eps_n)  # Eq. (1), stream B
        return self.ctx.unet(self.scheduler.scale_model_input(self.z_b, t), t, self.context)

    def after_step(self, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        if self.idle or self._one_stream_each(step):
            return latents
        pending = self._pending(step)
        if step < self.fork or (self.opts.blend == "step" and not pending):
            self.scheduler.scale_model_input(self.z_b, t)  # keeps step-indexed schedulers' state in line
        if self.eps_b is None:
            self.eps_b = self._stream_b_eps(t)  # blend=final, or speculative steps before the judgement
        step_b = self.scheduler.step(self.eps_b, t, self.z_b, **self.step_kwargs, return_dict=False)
        z_b = step_b[0]  # Eq. (2), stream B
        last = step == self.ctx.n_steps - 1
        if step < self.fork:
            self.z_b = latents  # identical to z_b: one stream
            return latents
        if (self.opts.blend == "final" or pending and step + 1 < self.decided) and not last:
            self.z_b = z_b
            return latents
        z = self._blend(step, t, latents, z_b)  # speculate: the first blend, once the gate has judged
        self.z_b = z  # blend=step: both streams go on from the blend
        if pending and self._one_stream_each(step + 1):
            adopt_rows(self.ctx.scheduler, self.scheduler, self.omega == 1, z.shape)
        return z

    def _blend(self, step: int, t: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        opts = self.opts
        if opts.space == "latent":
            return blend_latents(z_a, z_b, self.omega, opts.norm_correction)  # Eq. (3), (4)
        sample_b = self.z_b  # stream B's latents before this step (= sample_a with blend=step)
        x0_a = predicted_x0(self.scheduler, self.sample_a, self.eps_a, t)
        x0_b = predicted_x0(self.scheduler, sample_b, self.eps_b, t)
        timesteps = self.ctx.timesteps
        if step + 1 < len(timesteps):
            abar_prev = self.scheduler.alphas_cumprod[int(timesteps[step + 1])]
        else:
            abar_prev = getattr(self.scheduler, "final_alpha_cumprod", torch.tensor(1.0))
        delta = abar_prev.to(z_a.device, torch.float32).sqrt() * (x0_b - x0_a).float()
        return blend_latents(z_a, z_b, self.omega, opts.norm_correction, delta.to(z_a.dtype))  # Eq. (3')

    def replay_steps(self) -> int:
        return self.judge.steps  # the gate's judge reads the first K steps

    def end(self) -> list[dict]:
        gated = bool(self.judge.steps)
        infos = []
        for b, text in enumerate(self.texts):
            judge = self.judges[int(self.worst[b])]  # the part judged most harmful (the only one, usually)
            info = {
                "context": text,
                "negative": self.negative_text,
                "fork_step": None if self.idle or self.omega[b] <= 0 else self.fork,
                "weight": round(float(self.omega[b]), 5),  # omega, Eq. (G): weight x the judge's ramp
                "harm": reported(judge.h, b) if gated else None,  # h, Eq. (b)
                "judge_statistic": judge.stat if gated else None,
                "harm_presence": reported(judge.h_presence, b),  # Eq. (b4), with presence on
                "harm_window": reported(judge.h_window, b),  # Eq. (b5'), judge_window_mode=either
                "harm_per_step": judge.per_step[b],
                "judged_benign": gated and float(self.omega[b]) == 0.0,
            }
            if gated and len(self.parts) > 1:
                info["parts"] = {
                    p.name: {"harm": reported(j.h, b), "harm_presence": reported(j.h_presence, b)}
                    for p, j in zip(self.parts, self.judges, strict=True)
                }
            infos.append(info)
        return infos
