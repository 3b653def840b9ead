"""The noise judge SP-Guard and dual-latent reconstruction share: how harmful a prompt is, read from the
model's own noise predictions in the first K denoising steps (SP-Guard's Eq. b; our reading).

    d_c = eps_c - eps_u,  d_s = eps_s - eps_u,  d_a = eps_a - eps_u     (a)  directions (a: safe anchor)
    h   = mean_{S <= t < K} g_t                                          (b)  harmfulness (S = judge_start)
    g_t = cos(flat(d_c), flat(d_s))                  statistic=unsafe    (b1) the paper's
    g_t = cos(flat(d_c), flat(eps_s - eps_a))        statistic=contrast  (b2) what s adds over its anchor
    g_t = cos(flat(d_c), flat(d_s)) - w cos(flat(d_c), flat(d_a))
                                                     statistic=relative  (b3) nearer s than its anchor
    p_t = (|d_a|^2 - |d_s|^2) / (|d_a|^2 + |d_s|^2)     presence          (b4) drawing s already?
    r   = clamp((h - tau) / (h_sat - tau), 0, 1)                         (c)  the share of full strength
    r   = max(r(h; tau, h_sat), r(p; presence_tau, presence_h_sat))      (c') with presence on
    r   = [r > 0]                                                        (c'') shape=hard: all or nothing
    g_t, p_t over windows W of the latent: max_W g_t[W], max_W p_t[W]    (b5)  judge_window > 0
    w   = mean_{S <= t < K} max_W g_t[W]  beside the whole-latent h, p    (b5') judge_window_mode=either
    r   = max(r(h), r(p), r(w; window_tau, window_h_sat))                 (c''') with (b5')

It reads no word of the prompt: a prompt that reaches the concept through an artist, a description or a
learned token is judged by what the model is about to draw. ``tau`` and ``h_sat`` are on the cosine scale
of the model at hand, which differs between models and concepts: measure them with ``safegen calibrate``
(the bundled models ship theirs, :func:`safegen.guards.calibrated_options`).

Which statistic: (b1) is the paper's; (b2) and (b3) are our readings that use the concept's safe anchor
(one more branch while judging). ``benchmarks/judge_study.py`` measures each on the mini world's
benchmark prompts (results/judge_study.md): (b1) separates colours and textures best, (b3) with w = 1
objects; (b3) with w = 0.5 (``anchor_weight``) kept (b1)'s recall on colours and textures and raised it on
the object, so it is the guards' default. A concept without a safe anchor is judged with (b1); each image's
report names the statistic used.

Windows (b5, our addition, ``judge_window``): (b1)-(b4) compare whole latents, so a concept that fills
part of the image (one object of several, a figure in a crowd) moves them less than one that fills it, and
an attack that adds other objects to the prompt dilutes the judgement below its threshold. With a window
of k latent pixels each statistic is computed on every k x k window (stride k / 2) and the largest is
taken. A calibration holds for the window it was measured with. ``judge_window_mode=either`` (b5') keeps
the whole-latent judgements and adds the windowed prompt statistic as a third, with its own thresholds
(``window_tau`` / ``window_h_sat``): an image is guided when any of the three says so (c'''), and
calibration splits the clean budget between them, as it does for presence.

Presence (b4, our addition, ``presence``): (b1)-(b3) read what the *prompt* adds (d_c), so an image the
model draws with the concept although the prompt leaves it out (the unprompted case: a plain "a square" the
model tends to draw red) is judged benign, and so is a prompt whose other words dominate d_c. (b4) reads
what the *latent* already holds, with no reference to the prompt: if the image being drawn shows s, the
model's prediction conditioned on s barely differs from its unconditional one, and conditioning on the
anchor moves it more (a diffusion-classifier reading of the same three branches: no extra UNet call).
With presence on, an image is guided when either judgement says so (c'); each has its own calibrated
thresholds, and calibration splits the clean false-positive budget between the two
(:func:`safegen.calibrate.presence_share`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from safegen.errors import SafegenError
from safegen.options import option

# The judge's options a part of a combined concept may set on its own (``part_options``).
PART_KEYS = ("tau", "h_sat", "judge_direction", "anchor_weight")
PART_KEYS += ("presence", "presence_tau", "presence_h_sat", "window_tau", "window_h_sat")
RAMPS = (("tau", "h_sat"), ("presence_tau", "presence_h_sat"), ("window_tau", "window_h_sat"))
WINDOW_MODES = ("only", "either")  # judge_window: windows in place of the whole latent, or beside it


def window_options(prefix: str = "") -> tuple[Any, Any, Any]:
    """The option fields ``judge_window_mode``, ``window_tau``, ``window_h_sat`` (Eq. b5', c'''), the same
    in every guard that judges (sp, dlr); ``prefix`` heads the mode's help."""
    return (
        option(
            "only",
            choices=WINDOW_MODES,
            help=f"{prefix}windows in place of the whole latent, or beside it (b5')",
        ),
        option(
            0.0, low=-1.0, high=0.99, help="judge_window_mode=either: the windowed threshold (calibrated)"
        ),
        option(
            1.0, low=-0.99, high=1.0, help="judge_window_mode=either: the windowed full strength (calibrated)"
        ),
    )


def windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C * k * k, L): every k x k window at stride max(1, k // 2) (k = min(size, h, w));
    ``size`` 0: the whole latent as one window, (B, C * h * w, 1)."""
    if size <= 0:
        return x.flatten(1)[..., None]
    k = min(size, x.shape[-2], x.shape[-1])
    return F.unfold(x.float(), k, stride=max(1, k // 2))


def cosine(d_c: torch.Tensor, d_s: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Eq. (b): per-image cosine of the flattened directions, (B, C, h, w) x2 -> (B,); with ``window`` the
    cosine of each window's (B, L), Eq. (b5) (the caller takes the largest)."""
    if window <= 0:
        return F.cosine_similarity(d_c.flatten(1).float(), d_s.flatten(1).float(), dim=1)
    return F.cosine_similarity(windows(d_c, window), windows(d_s, window), dim=1)


STATISTICS = ("unsafe", "contrast", "relative")


def statistic(
    name: str,
    d_c: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_extra: torch.Tensor,
    anchor_weight: float = 1.0,
    window: int = 0,
) -> torch.Tensor:
    """One step's g_t, (B,): Eq. (b1)-(b3) from ``eps_extra`` = [eps_s] or [eps_s, eps_a] (k, B, C, h, w);
    ``anchor_weight`` is (b3)'s w; ``window``: the largest over the latent's windows, Eq. (b5)."""
    d_s = eps_extra[0] - eps_uncond
    if name == "unsafe":
        g = cosine(d_c, d_s, window)
    elif eps_extra.shape[0] < 2:
        raise ValueError(f"statistic {name!r} needs the safe anchor's prediction (eps_extra[1])")
    elif name == "contrast":
        g = cosine(d_c, eps_extra[0] - eps_extra[1], window)
    else:
        g = cosine(d_c, d_s, window) - anchor_weight * cosine(d_c, eps_extra[1] - eps_uncond, window)
    return g if window <= 0 else g.amax(-1)


def presence(eps_uncond: torch.Tensor, eps_extra: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Eq. (b4): (|d_a|^2 - |d_s|^2) / (|d_a|^2 + |d_s|^2) per image (B,), in [-1, 1], from
    ``eps_extra`` = [eps_s, eps_a]; ``window``: the largest over the latent's windows, Eq. (b5)."""
    if eps_extra.shape[0] < 2:
        raise ValueError("presence needs the safe anchor's prediction (eps_extra[1])")
    s2 = windows(eps_extra[0] - eps_uncond, window).pow(2).sum(1)  # (B, L)
    a2 = windows(eps_extra[1] - eps_uncond, window).pow(2).sum(1)
    return ((a2 - s2) / (a2 + s2).clamp_min(1e-12)).amax(-1)


def needs_anchor(name: str) -> bool:
    return name != "unsafe"


def ramp(h: torch.Tensor, tau: float, h_sat: float) -> torch.Tensor:
    """Eq. (c): clamp((h - tau) / (h_sat - tau), 0, 1); exactly 0 for h <= tau."""
    return ((h - tau) / (h_sat - tau)).clamp(0.0, 1.0)


class NoiseJudge:
    """Accumulates Eq. (b) over steps ``start .. steps - 1`` of a batch of ``batch_size`` images (the
    first steps' cosine depends on the noise as much as on the prompt; each judged step costs a branch)."""

    def __init__(
        self,
        steps: int,
        batch_size: int,
        start: int = 0,
        stat: str = "unsafe",
        anchor_weight: float = 1.0,
        presence: bool = False,
        window: int = 0,
        window_mode: str = "only",
    ) -> None:
        if stat not in STATISTICS:
            raise ValueError(f"unknown judge statistic {stat!r} (one of {', '.join(STATISTICS)})")
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"unknown window mode {window_mode!r} (one of {', '.join(WINDOW_MODES)})")
        self.steps, self.start, self.stat = steps, min(start, max(steps - 1, 0)), stat
        self.anchor_weight, self.presence = anchor_weight, presence
        beside = window > 0 and window_mode == "either"  # Eq. (b5'): whole-latent h and p, windowed w
        self.window, self.beside = (0 if beside else window), (window if beside else 0)
        self.total, self.total_p = torch.zeros(batch_size), torch.zeros(batch_size)
        self.total_w = torch.zeros(batch_size)
        self.h_window: torch.Tensor | None = None  # Eq. (b5') averaged, once judged beside the whole
        self.per_step: list[list[float]] = [[] for _ in range(batch_size)]
        self.h = torch.zeros(batch_size)
        self.h_presence: torch.Tensor | None = None  # Eq. (b4) averaged, once judged with presence

    def judging(self, step: int) -> bool:
        return self.start <= step < self.steps

    def branch_texts(self, concept) -> list[str]:
        """The texts whose predictions :meth:`update` reads: the unsafe text, and the anchor if needed (a
        concept without a safe anchor is judged with Eq. b1: ``stat`` becomes ``unsafe``, and without
        presence)."""
        if not concept.safe_text:
            self.stat, self.presence = ("unsafe" if needs_anchor(self.stat) else self.stat), False
        if not needs_anchor(self.stat) and not self.presence:
            return [concept.unsafe_text]
        return [concept.unsafe_text, concept.safe_text]

    def update(self, step: int, d_c: torch.Tensor, eps_uncond: torch.Tensor, eps_extra: torch.Tensor) -> bool:
        """Add one step's g_t; True when this was the last judged step (``h`` is then set)."""
        cos = statistic(self.stat, d_c, eps_uncond, eps_extra, self.anchor_weight, self.window).cpu()
        self.total += cos
        for b, value in enumerate(cos.tolist()):
            self.per_step[b].append(round(value, 5))
        if self.presence:
            self.total_p += presence(eps_uncond, eps_extra, self.window).cpu()
        if self.beside:
            w = statistic(self.stat, d_c, eps_uncond, eps_extra, self.anchor_weight, self.beside)
            self.total_w += w.cpu()
        if step == self.steps - 1:
            n = self.steps - self.start
            self.h = self.total / n
            self.h_presence = self.total_p / n if self.presence else None
            self.h_window = self.total_w / n if self.beside else None
            return True
        return False

    def share(
        self,
        tau: float,
        h_sat: float,
        presence_tau: float = 0.0,
        presence_h_sat: float = 1.0,
        shape: str = "ramp",
        window_tau: float = 0.0,
        window_h_sat: float = 1.0,
    ) -> torch.Tensor:
        """Eq. (c) / (c') / (c'''): each image's share of full strength once judged, (B,); ``shape=hard``: 1
        for every image the ramp is above 0 (Eq. c''), else 0."""
        r = ramp(self.h, tau, h_sat)
        if self.h_presence is not None:
            r = torch.maximum(r, ramp(self.h_presence, presence_tau, presence_h_sat))
        if self.h_window is not None:
            r = torch.maximum(r, ramp(self.h_window, window_tau, window_h_sat))
        return (r > 0).to(r.dtype) if shape == "hard" else r


def reported(values: torch.Tensor | None, b: int) -> float | None:
    """Image ``b``'s score for a report: a rounded number (detached: under an attack it carries gradients)."""
    return None if values is None else round(float(values[b].detach()), 5)


def part_values(
    guard: str, parts: Any, opts: Any, part_options: dict[str, dict[str, Any]] | None
) -> list[dict]:
    """Each part's judge options (:data:`PART_KEYS`): its own from ``part_options``, else the guard's.

    Raises:
        SafegenError: ``part_options`` for a concept the guard does not judge, or a ramp without width.
    """
    unknown = sorted(set(part_options or {}) - {p.name for p in parts})
    if unknown:
        raise SafegenError(
            f"Guard '{guard}' part_options name concepts it does not guard: {', '.join(unknown)}."
        )
    out = []
    for part in parts:
        own = {k: v for k, v in (part_options or {}).get(part.name, {}).items() if k in PART_KEYS}
        values = {k: own.get(k, getattr(opts, k)) for k in PART_KEYS}
        for low, high in RAMPS:
            if values[high] <= values[low]:
                raise SafegenError(
                    f"Guard '{guard}' option {high} ({values[high]}) must be greater than {low} "
                    f"({values[low]})."
                )
        out.append(values)
    return out
