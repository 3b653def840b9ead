"""SP-Guard: adaptive, selective safety guidance inside the denoising loop.

Following SP-Guard (arXiv 2511.11014, TRUST-AI @ ECAI 2025; our reading, ``docs/methods/sp.md``). The paper
estimates a prompt's harmfulness from the noise direction it
induces, adapts the guidance strength to it, and masks the safety guidance to the unsafe image regions.
Our reading, per denoising step t, with one batched UNet call over three branches::

    eps_u (empty prompt), eps_c (the prompt), eps_s (the concept's unsafe text)
    d_c = eps_c - eps_u,  d_s = eps_s - eps_u                                     # Eq. (a) directions
    d_s = eps_s - eps_a   (direction=contrast, guided steps only; a = the safe anchor)  # Eq. (a')
    h   = mean_{t < K} cos(flat(d_c), flat(d_s))                                  # Eq. (b) harmfulness
          (judge_direction=contrast|relative: the anchor's statistics, safegen/guards/judge.py)
    h   = max_{w in prompt} max_{k in keywords} cos(E[w], E[k])    (judge=text)    # Eq. (b') word score
    lam = lam_max * clamp((h - tau) / (h_sat - tau), 0, 1)                        # Eq. (c) strength
          (presence: the larger of this and the same ramp on Eq. (b4), judge.py Eq. (c'))
          (strength_shape=hard: lam_max wherever that is above 0, judge.py Eq. (c''))
    p   = relu(<d_c, d_s>_channels / |d_s|_channels)     per latent location     # Eq. (d) projection
    M_t = top-q quantile (or threshold) of p, optional dilation / blur, hard or soft  # Eq. (e) mask
    eps = eps_u + w * d_c - lam * M_t * d_s      for steps in the active window   # Eq. (f) guidance

With ``direction=contrast`` the guided steps also run the concept's safe anchor text (``safe_text``,
e.g. "clothed" for nudity, the replacement value for a mini concept) and steer along eps_s - eps_a: what
the unsafe text adds over its safe counterpart, without the generic "draw something" component that
eps_s - eps_u also holds (one more branch while guiding). h is still judged with Eq. (a).
``judge=text`` (our addition, not the paper's) reads h before the first step from the text encoder's token
embeddings (:mod:`safegen.guards.detect`, Eq. D1-D2): it finds synonyms and misspellings the registry was
not told, costs no UNet call, and lets guidance start at step 0; ``text_tau`` / ``text_h_sat`` replace
``tau`` / ``h_sat`` on its scale. It only sees words: a prompt that implies the concept without a word near
its keywords (common in I2P) is judged benign. ``judge=both`` takes the larger strength of the
two judges (guidance from step K): use it, or ``noise``, where prompts are implicit.

Guidance starts once h is known (step K; step 0 with judge=text; later with ``window_start``). When every
image of the batch has ``lam == 0`` once judged, the extra branches are dropped for the rest of the run: a
benign prompt then costs what plain CFG costs, and its image is plain CFG's (judge=text: exactly; noise:
up to float rounding of the larger batch in the first K steps). The branch is also dropped after
``window_end``.

Transparency: each image's report (saved in ``generation.jsonl``) gives h, lam, the steps guided and the
mask coverage per step; with ``keep_masks`` the masks are kept and :func:`save_masks` writes them as PNGs.

    safegen generate "a photo of a nude woman" --model path/to/sd --guard sp --concept nudity --save-masks
    safegen generate "..." --model path/to/sd --guard sp --concept nudity --set judge=both --set tau=0.3
    safegen bench mini --guard sp --concept red --set lam_max=25
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from safegen.errors import SafegenError
from safegen.guards.base import GuardBase, RunContext, configure
from safegen.guards.detect import ConceptDetector
from safegen.guards.judge import (
    PART_KEYS,
    STATISTICS,
    NoiseJudge,
    part_values,
    ramp,
    reported,
    window_options,
)
from safegen.options import option


@dataclass
class SPGuardOptions:
    """SP-Guard's knobs (defaults: the ``medium`` preset; where they come from: docs/methods/sp.md)."""

    judge: str = option(
        "noise",
        choices=("noise", "text", "both"),
        help="h from the noise directions (Eq. b), the prompt's words (Eq. b', no UNet call), or both",
    )
    judge_steps: int = option(6, low=1, high=1000, help="K: h is read by step K (guidance starts there)")
    judge_start: int = option(
        4, low=0, high=999, help="S: first judged step, at most K-1 (steps S..K-1 are averaged)"
    )
    tau: float = option(
        0.1, low=-1.0, high=0.99, help="harmfulness threshold (calibrated): lam = 0 for h <= tau"
    )
    lam_max: float = option(60.0, low=0.0, high=100.0, help="largest safety strength (at h >= h_sat)")
    h_sat: float = option(
        0.3, low=-0.99, high=1.0, help="harmfulness at which lam reaches lam_max (calibrated)"
    )
    text_tau: float = option(0.6, low=0.0, high=0.99, help="judge=text: tau on the word score (Eq. D2)")
    text_h_sat: float = option(0.7, low=0.01, high=1.0, help="judge=text: h_sat on the word score")
    window_start: float = option(0.2, low=0.0, high=1.0, help="guide from this fraction of steps (>= K)")
    window_end: float = option(0.7, low=0.0, high=1.0, help="stop guiding (and drop the branch) here")
    mask: str = option("quantile", choices=("quantile", "threshold", "none"), help="how M_t is chosen")
    mask_quantile: float = option(0.5, low=0.01, high=1.0, help="share of locations kept (mask=quantile)")
    mask_threshold: float = option(0.2, low=0.0, high=1.0, help="share of the max projection (threshold)")
    mask_soft: bool = option(False, help="soft mask: projection / cut-off, clipped to [0, 1]")
    mask_dilate: int = option(1, low=0, high=8, help="grow the mask by this many latent pixels")
    mask_blur: int = option(0, low=0, high=8, help="box-blur radius in latent pixels (softens edges)")
    keep_masks: bool = option(False, help="keep each step's mask for save_masks (--save-masks)")
    direction: str = option(
        "contrast",
        choices=("unsafe", "contrast"),
        help="guided d_s: eps_s - eps_u, or eps_s - eps_a (anchor)",
    )
    judge_direction: str = option(
        "relative",
        choices=STATISTICS,
        help="judged statistic (judge.py Eq. b1-b3): cos to eps_s - eps_u (the paper's), to eps_s - eps_a, "
        "or the first minus anchor_weight x cos to eps_a - eps_u (the paper's where no anchor)",
    )
    judge_window: int = option(
        0, low=0, high=128, help="judge each k x k latent window, the largest (judge.py Eq. b5; 0: whole)"
    )
    anchor_weight: float = option(
        0.5, low=0.0, high=2.0, help="judge_direction=relative: w, the weight of the anchor's cosine (Eq. b3)"
    )
    judge_window_mode: str
    window_tau: float
    window_h_sat: float
    judge_window_mode, window_tau, window_h_sat = window_options()  # judge.py Eq. (b5')
    presence: bool = option(
        True, help="also guide images whose latent already shows the concept (judge.py Eq. b4, c')"
    )
    presence_tau: float = option(0.0, low=-1.0, high=0.99, help="presence: threshold (calibrated)")
    presence_h_sat: float = option(0.2, low=-0.99, high=1.0, help="presence: full strength (calibrated)")
    strength_shape: str = option(
        "ramp",
        choices=("ramp", "hard"),
        help="lam on the judge's ramp (Eq. c, the paper's adaptive strength), or lam_max for every image the "
        "judge flags at all (judge.py Eq. c'')",
    )


PRESETS: dict[str, dict[str, Any]] = {
    "weak": {"lam_max": 40.0},  # weak / strong: lam_max 20 below / above the default (not swept)
    "medium": {},  # the dataclass defaults
    "strong": {"lam_max": 80.0},
}


# --------------------------------------------------------------------------- the equations
def adaptive_strength(h: torch.Tensor, tau: float, lam_max: float, h_sat: float = 1.0) -> torch.Tensor:
    """Eq. (c): lam = lam_max * clamp((h - tau) / (h_sat - tau), 0, 1); exactly 0 for h <= tau.

    ``h_sat = 1`` is the paper's linear ramp over the whole cosine range (our reading); a smaller
    ``h_sat`` reaches full strength at the harmfulness that prompts with the concept actually reach.
    """
    return lam_max * ramp(h, tau, h_sat)


def projection(d_c: torch.Tensor, d_s: torch.Tensor) -> torch.Tensor:
    """Eq. (d): positive projection of d_c on d_s over channels, (B, C, h, w) -> (B, h, w)."""
    dot = (d_c.float() * d_s.float()).sum(1)
    return (dot / d_s.float().norm(dim=1).clamp_min(1e-12)).clamp_min(0.0)


def make_mask(d_c: torch.Tensor, d_s: torch.Tensor, opts: SPGuardOptions) -> torch.Tensor:
    """Eq. (e): the mask M_t in [0, 1], (B, h, w), from the projection of Eq. (d)."""
    proj = projection(d_c, d_s)  # (B, h, w)
    if opts.mask == "none":
        return torch.ones_like(proj)
    flat = proj.flatten(1)
    if opts.mask == "quantile":
        cut = torch.quantile(flat, 1.0 - opts.mask_quantile, dim=1)  # (B,)
    else:
        cut = opts.mask_threshold * flat.max(dim=1).values
    cut = cut.clamp_min(1e-12)[:, None, None]
    if opts.mask_soft:
        mask = (proj / cut).clamp(0.0, 1.0)
    else:
        mask = ((proj >= cut) & (proj > 0)).float()
    if opts.mask_dilate:
        r = opts.mask_dilate
        mask = F.max_pool2d(mask[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]
    if opts.mask_blur:
        r = opts.mask_blur
        mask = F.avg_pool2d(mask[:, None], 2 * r + 1, stride=1, padding=r, count_include_pad=False)[:, 0]
    return mask


# --------------------------------------------------------------------------- the guard
@dataclass
class _Part:
    """One concept the guard acts against (a combined concept has several): its own judgement and guidance."""

    concept: Any
    tau: float
    h_sat: float
    stat: str
    anchor_weight: float
    presence: bool
    presence_tau: float
    presence_h_sat: float
    window_tau: float
    window_h_sat: float
    judge: NoiseJudge | None = None
    judge_rows: list[int] = dataclasses.field(default_factory=list)  # its rows of the judged branches
    guide_texts: list[str] = dataclasses.field(default_factory=list)  # [s] or [s, a] while guiding
    h: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    h_text: torch.Tensor | None = None
    lam_text: torch.Tensor | None = None


class SPGuard(GuardBase):
    """SP-Guard: harmfulness-adaptive strength and a per-step spatial mask on the safety guidance.

    Against several concepts at once (``concept="red,circle"``), each part is judged and guided on its own
    (our reading: Eq. b-f per concept, the guidance terms summed), with its own calibration where
    ``part_options`` gives one (``{part: {tau, h_sat, judge_direction, ...}}``; the bundled calibrations
    of each part on a bundled model, :func:`safegen.guards.guard_for_model`); the other options are shared.
    """

    name = "sp"
    needs_uncond = True
    Options = SPGuardOptions
    PRESETS = PRESETS
    PART_KEYS = PART_KEYS  # judge.py: the options each part may set on its own

    def __init__(
        self,
        concept: Any = None,
        strength: str | None = None,
        part_options: dict[str, dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        strength = configure(self, concept, strength, options)
        from safegen.concepts import concept_parts

        parts = concept_parts(self.concept)
        self.parts: list[_Part] = []
        for part, v in zip(parts, part_values("sp", parts, self.opts, part_options), strict=True):
            self.parts.append(
                _Part(part, float(v["tau"]), float(v["h_sat"]), v["judge_direction"],
                      float(v["anchor_weight"]), bool(v["presence"]), float(v["presence_tau"]),
                      float(v["presence_h_sat"]), float(v["window_tau"]), float(v["window_h_sat"]))
            )  # fmt: skip
        if self.opts.text_h_sat <= self.opts.text_tau:
            raise SafegenError(
                f"Guard 'sp' option text_h_sat ({self.opts.text_h_sat}) must be greater than "
                f"text_tau ({self.opts.text_tau})."
            )
        if self.opts.window_end <= self.opts.window_start:
            raise SafegenError(
                f"Guard 'sp' option window_end ({self.opts.window_end}) must be greater than "
                f"window_start ({self.opts.window_start})."
            )
        described = {"part_options": part_options} if part_options else {}
        super().__init__(
            concept=self.concept.name, strength=strength, **dataclasses.asdict(self.opts), **described
        )
        self.masks: list[list[tuple[int, np.ndarray]]] = []  # per image, across batches (keep_masks)

    @property
    def lam(self) -> torch.Tensor:
        """Each image's strongest part strength (B,) (a single concept: its lam)."""
        return torch.stack([p.lam for p in self.parts]).amax(0)

    @lam.setter
    def lam(self, value: torch.Tensor) -> None:
        """Set every part's strength (what a judgement would have set; for tests and attacks)."""
        for part in self.parts:
            part.lam = value.clone()

    def begin(self, ctx: RunContext) -> None:
        super().begin(ctx)
        n, opts, size = ctx.n_steps, self.opts, ctx.batch_size
        self.judge = min(opts.judge_steps, n) if opts.judge != "text" else 0
        self.guide_from = max(self.judge, math.ceil(opts.window_start * n - 1e-9))
        self.guide_until = min(n, math.ceil(opts.window_end * n - 1e-9))
        judged: list[str] = []
        for part in self.parts:
            part.judge = NoiseJudge(
                self.judge, size, opts.judge_start, part.stat, part.anchor_weight, part.presence,
                opts.judge_window, opts.judge_window_mode,
            )  # fmt: skip
            texts = part.judge.branch_texts(part.concept) if self.judge else []
            part.judge_rows = list(range(len(judged), len(judged) + len(texts)))
            judged += texts
            contrast = part.concept.safe_text and opts.direction == "contrast"
            part.guide_texts = [part.concept.unsafe_text] + ([part.concept.safe_text] if contrast else [])
            part.h, part.lam = torch.zeros(size), torch.zeros(size)
            part.h_text = part.lam_text = None
        self.judge_branches = self._encode(judged) if judged else None
        self.guide_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.flagged: list[list[str]] = [[] for _ in range(size)]
        if opts.judge != "noise":
            self._judge_text(ctx)
        self.coverage: list[list[float]] = [[] for _ in range(size)]
        self.guided: list[int] = []
        self.batch_masks: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(size)]

    def _encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), B, L, D): each text for every image of the batch."""
        size = self.ctx.batch_size
        embeds = self.ctx.encode([t for t in texts for _ in range(size)])
        return embeds.view(len(texts), size, *embeds.shape[1:])

    def _judge_text(self, ctx: RunContext) -> None:
        """Eq. (b') and (c) before the first step: h from the prompts' words, lam from h (per part)."""
        if ctx.token_vectors is None:
            raise SafegenError("Guard 'sp' judge=text needs the model's token embeddings (none given).")
        opts = self.opts
        for part in self.parts:
            detector = ConceptDetector(ctx.token_vectors, part.concept.keywords, part.concept.ignore)
            part.h_text = detector.scores(ctx.prompts).float()
            part.lam_text = adaptive_strength(part.h_text, opts.text_tau, opts.lam_max, opts.text_h_sat)
            if opts.judge == "text":
                part.h, part.lam = part.h_text, part.lam_text
            for b, prompt in enumerate(ctx.prompts):
                self.flagged[b] += [w.word for w in detector.words(prompt) if w.score >= opts.text_tau]

    def _active(self) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(self.parts) if bool((p.lam > 0).any()))

    def branches(self, step: int) -> torch.Tensor | None:
        if self.judge_branches is not None and self.parts[0].judge.judging(step):
            return self.judge_branches  # judging: every image needs each part's eps_s (and eps_a)
        active = self._active()
        if self.guide_from <= step < self.guide_until and active:
            if active not in self.guide_cache:
                self.guide_cache[active] = self._encode(
                    [t for i in active for t in self.parts[i].guide_texts]
                )
            return self.guide_cache[active]
        return None  # judged benign, outside the window, or past it: plain CFG's cost

    def guide(
        self,
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        eps_extra: torch.Tensor | None,
    ) -> torch.Tensor:
        eps = super().guide(step, t, latents, eps_uncond, eps_cond, eps_extra)  # eps_u + w * d_c
        if eps_extra is None:
            return eps
        d_c = eps_cond - eps_uncond  # Eq. (a)
        opts = self.opts
        if self.parts[0].judge.judging(step):
            for part in self.parts:
                if part.judge.update(step, d_c, eps_uncond, eps_extra[part.judge_rows]):  # Eq. (b); h after K
                    part.h = part.judge.h  # Eq. (c), or (c') with presence
                    share = part.judge.share(
                        part.tau, part.h_sat, part.presence_tau, part.presence_h_sat, opts.strength_shape,
                        part.window_tau, part.window_h_sat,
                    )  # fmt: skip
                    part.lam = opts.lam_max * share
                    if part.lam_text is not None:  # judge=both: the stronger of the two judgements
                        part.lam = torch.maximum(part.lam, part.lam_text)
            return eps
        row, covered = 0, torch.zeros(eps.shape[0], *eps.shape[2:], device=eps.device)
        for i in self._active():
            part = self.parts[i]
            rows = eps_extra[row : row + len(part.guide_texts)]
            row += len(part.guide_texts)
            d_s = rows[0] - (rows[1] if len(rows) > 1 else eps_uncond)  # Eq. (a), or (a') with the anchor
            mask = make_mask(d_c, d_s, opts)  # Eq. (d), (e): (B, h, w)
            lam = part.lam.to(device=eps.device, dtype=eps.dtype)
            eps = eps - lam[:, None, None, None] * mask[:, None].to(eps.dtype) * d_s  # Eq. (f), summed
            covered = torch.maximum(covered, mask * (lam > 0)[:, None, None].to(mask.dtype))
        self.guided.append(step)
        lam = self.lam
        for b in range(len(lam)):
            if lam[b] <= 0:
                continue  # judged benign in a batch with harmful images: eps unchanged (lam = 0)
            self.coverage[b].append(round(float(covered[b].mean()), 4))
            if opts.keep_masks:
                pixels = (covered[b].float().cpu().numpy() * 255).round().astype(np.uint8)
                self.batch_masks[b].append((step, pixels))
        return eps

    def end(self) -> list[dict]:
        infos = []
        # per part and image: (lam, h) as numbers (under an attack h carries gradients)
        judged = [(p.lam.detach().cpu().tolist(), p.h.detach().cpu().tolist()) for p in self.parts]
        for b in range(self.ctx.batch_size):
            k = max(range(len(self.parts)), key=lambda i: (judged[i][0][b], judged[i][1][b]))  # judged worst
            top = self.parts[k]
            lam = judged[k][0][b]
            steps, cover = (self.guided if lam > 0 else []), self.coverage[b]
            info = {
                "judge": self.opts.judge,
                "judge_statistic": top.judge.stat if self.judge else None,  # Eq. (b1)-(b3) of judge.py
                "harm": round(judged[k][1][b], 5),  # h, Eq. (b) or (b')
                "harm_per_step": top.judge.per_step[b],
                "harm_presence": reported(top.judge.h_presence, b),  # Eq. (b4), with presence on
                "harm_window": reported(top.judge.h_window, b),  # Eq. (b5'), judge_window_mode=either
                "harm_text": None if top.h_text is None else round(float(top.h_text[b]), 5),
                "flagged_words": self.flagged[b],  # judge=text/both: the words at or above text_tau
                "strength": round(lam, 5),  # lam, Eq. (c)
                "judged_benign": lam == 0.0,
                "guided_steps": list(steps),
                "mask_coverage": cover,  # mean of M_t per guided step (the union over parts)
                "mask_coverage_mean": round(float(np.mean(cover)), 4) if cover else 0.0,
            }
            if len(self.parts) > 1:
                info["parts"] = {
                    p.concept.name: {
                        "harm": round(judged[i][1][b], 5),
                        "harm_presence": reported(p.judge.h_presence, b),
                        "strength": round(judged[i][0][b], 5),
                    }
                    for i, p in enumerate(self.parts)
                }
            infos.append(info)
        if self.opts.keep_masks:
            self.masks.extend(self.batch_masks)
        return infos

    def replay_steps(self) -> int:
        return self.judge  # the noise judge reads the first K steps (0 with judge=text)

    def take_masks(self) -> list[list[tuple[int, np.ndarray]]]:
        """The kept masks, one list of (step, (h, w) uint8) per image in generation order; then cleared."""
        masks, self.masks = self.masks, []
        return masks


def save_masks(guard: SPGuard, image_paths: list[str | Path]) -> list[Path]:
    """Write each image's per-step masks as PNGs: ``<folder>/masks/<image stem>_step<NNN>.png``.

    The latent-resolution mask is scaled up (nearest) to the image's size: white is guided, black is not.

    Args:
        guard: the SP-Guard that generated the images, built with ``keep_masks=True``.
        image_paths: the saved images, in generation order (``generate_to_dir(...)["files"]``).

    Returns:
        The mask files written.
    """
    from PIL import Image

    from safegen.outputs import write_png

    masks = guard.take_masks()
    if len(masks) != len(image_paths):
        raise RuntimeError(f"{len(masks)} mask lists for {len(image_paths)} images")
    written = []
    for path, steps in zip(map(Path, image_paths), masks, strict=True):
        if not steps:
            continue
        folder = path.parent / "masks"
        folder.mkdir(exist_ok=True)
        with Image.open(path) as im:
            size = im.size
        for step, pixels in steps:
            target = folder / f"{path.stem}_step{step:03d}.png"
            write_png(Image.fromarray(pixels).resize(size, Image.NEAREST), target)
            written.append(target)
    return written
