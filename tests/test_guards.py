"""The guards sp, dlr, sld and neg in safegen's loop, on tiny random SD models built offline.

SLD: same latents at every step as diffusers' StableDiffusionPipelineSafe, per preset. neg: diffusers'
negative prompt. SP-Guard: a benign prompt is plain CFG and drops its branch (UNet batch sizes counted);
hand-computed equations. DLR: stream B alone is a plain run of the safety context (own scheduler, own
generators), blend options, batch sizes. Options: presets, types, ranges.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from safegen.concepts import Concept, ConceptKind, get_concept
from safegen.errors import SafegenError
from safegen.generator import generate
from safegen.guards import build_guard, get_guard, guard_class, guard_names, guard_options, judge, list_guards
from safegen.guards import sp as sp_guard
from safegen.guards.base import RunContext
from safegen.guards.dlr import blend_latents
from safegen.guards.sld import PRESETS as SLD_PRESETS
from safegen.loader import LoadedModel, load_model
from safegen.options import parse_sets, read_config
from safegen.sampling import GenerationConfig

PROMPTS = ["a red circle", "a blue star"]


def pixels(images: list) -> np.ndarray:
    return np.stack([np.asarray(im.image) for im in images]).astype(np.int16)


def run(model: LoadedModel, guard=None, steps: int = 8, prompts=PROMPTS, **config) -> np.ndarray:
    return pixels(generate(model, prompts, config=GenerationConfig(steps=steps, **config), guard=guard))


def unet_batches(model: LoadedModel, fn) -> list[int]:
    sizes: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        fn()
    finally:
        hook.remove()
    return sizes


def own_model(tiny_sd_dir: Path, scheduler: type | None = None, **config) -> LoadedModel:
    model = load_model(str(tiny_sd_dir), device="cpu")
    if scheduler is not None or config:
        cls = scheduler or type(model.scheduler)
        model.pipe.scheduler = cls.from_config(model.scheduler.config, **config)
    return model


# --------------------------------------------------------------------------- SLD
@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_matches_diffusers_safe_pipeline(tiny_sd: LoadedModel, preset: str) -> None:
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig, StableDiffusionPipelineSafe

    parts = {k: getattr(tiny_sd.pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        safe = StableDiffusionPipelineSafe(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        safe.set_progress_bar_config(disable=True)
        guard = get_guard("sld", concept="red", strength=preset)
        safe.safety_concept = guard.text
        reference: list[torch.Tensor] = []
        generators = [torch.Generator().manual_seed(s) for s in range(2)]
        out = safe(
            PROMPTS,
            num_inference_steps=20,
            generator=generators,
            output_type="np",
            callback=lambda i, t, latents: reference.append(latents.clone()),
            **getattr(SafetyConfig, preset.upper()),
        ).images
    ours: list[torch.Tensor] = []
    guard.after_step = lambda step, t, latents: ours.append(latents.clone()) or latents
    images = run(tiny_sd, guard, steps=20)
    assert len(ours) == len(reference) == 20
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))  # every step's latents
    diff = np.abs(images - (out * 255).round().astype(np.int16)).max()
    assert diff <= 1  # target <= 1/255; diffusers' SLD decodes with latents * (1 / s), we with latents / s
    if preset != "weak":
        assert np.abs(images - run(tiny_sd, steps=20)).mean() > 0.05  # and it does change the image


def test_sld_presets_are_the_papers() -> None:
    assert SLD_PRESETS["max"] == {
        "warmup_steps": 0,
        "guidance_scale": 5000.0,
        "threshold": 1.0,
        "momentum_scale": 0.5,
        "mom_beta": 0.7,
    }
    assert get_guard("sld", concept="nudity").describe()["warmup_steps"] == 10  # medium, as diffusers


def test_sld_without_cfg_is_plain(tiny_sd: LoadedModel) -> None:
    guard = get_guard("sld", concept="red", strength="max")
    sizes = unet_batches(tiny_sd, lambda: run(tiny_sd, guard, steps=3, cfg=1.0))
    assert sizes == [2, 2, 2]  # no CFG, no safety branch (diffusers' rule)
    assert np.array_equal(run(tiny_sd, guard, steps=3, cfg=1.0), run(tiny_sd, steps=3, cfg=1.0))


# --------------------------------------------------------------------------- negative prompt
def test_neg_matches_diffusers_negative_prompt(tiny_sd: LoadedModel) -> None:
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    unsafe = get_concept("red").unsafe_text
    reference = tiny_sd.pipe(
        PROMPTS, num_inference_steps=8, negative_prompt=[unsafe] * 2, generator=generators, output_type="np"
    ).images
    ours = run(tiny_sd, get_guard("neg", concept="red"))
    assert np.abs(ours - (reference * 255).round().astype(np.int16)).max() <= 1
    off = get_guard("neg", concept="red", weight=0.0)
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, off, steps=2)) == [4, 4]
    assert np.array_equal(run(tiny_sd, off), run(tiny_sd))


# --------------------------------------------------------------------------- SP-Guard
def test_sp_equations_on_hand_numbers() -> None:
    d_c = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, C=2, h=1, w=2)
    d_s = torch.tensor([[[[1.0, 0.0]], [[1.0, -1.0]]]])
    # cos: <d_c, d_s> = 1 - 2 = -1; |d_c| = sqrt(5), |d_s| = sqrt(3)
    assert judge.cosine(d_c, d_s).item() == pytest.approx(-1 / (5**0.5 * 3**0.5))
    # per location: (1*1 + 0*1) / sqrt(2) = 0.7071; (0*0 + 2*-1) / 1 = -2 -> 0
    assert sp_guard.projection(d_c, d_s)[0, 0].tolist() == pytest.approx([2**-0.5, 0.0])
    h = torch.tensor([0.1, 0.3, 0.65, 1.0])
    assert sp_guard.adaptive_strength(h, tau=0.3, lam_max=10.0).tolist() == pytest.approx(
        [0.0, 0.0, 5.0, 10.0]
    )
    # h_sat 0.5: full strength from h = 0.5 on; (0.4 - 0.3) / (0.5 - 0.3) = 0.5
    h = torch.tensor([0.3, 0.4, 0.5, 0.9])
    assert sp_guard.adaptive_strength(h, tau=0.3, lam_max=10.0, h_sat=0.5).tolist() == pytest.approx(
        [0.0, 5.0, 10.0, 10.0]
    )


def test_sp_mask_options() -> None:
    torch.manual_seed(0)
    d_s = torch.randn(2, 4, 8, 8)
    d_c = d_s * torch.linspace(-1, 2, 64).reshape(1, 1, 8, 8)  # projection grows along the image
    opts = sp_guard.SPGuardOptions
    quarter = sp_guard.make_mask(d_c, d_s, opts(mask_quantile=0.25, mask_dilate=0))
    assert quarter.shape == (2, 8, 8) and quarter.mean().item() == pytest.approx(0.25, abs=1 / 64)
    assert quarter[:, -1, -1].tolist() == [1.0, 1.0] and quarter[:, 0, 0].tolist() == [0.0, 0.0]
    assert sp_guard.make_mask(d_c, d_s, opts(mask="none")).mean().item() == 1.0
    high = sp_guard.make_mask(d_c, d_s, opts(mask="threshold", mask_threshold=0.5))
    assert 0 < high.mean().item() < 0.5
    soft = sp_guard.make_mask(d_c, d_s, opts(mask_quantile=0.25, mask_soft=True, mask_dilate=0))
    assert soft.min() >= 0 and soft.max() <= 1 and 0.25 < soft.mean().item() < 1
    grown = sp_guard.make_mask(d_c, d_s, opts(mask_quantile=0.25, mask_dilate=1))
    assert grown.mean() > quarter.mean() and (grown >= quarter).all()
    blurred = sp_guard.make_mask(d_c, d_s, opts(mask_quantile=0.25, mask_blur=1, mask_dilate=0))
    assert set(blurred.unique().tolist()) > {0.0, 1.0}


def test_sp_benign_prompt_is_plain_cfg_and_drops_its_branch(tiny_sd: LoadedModel) -> None:
    guard = get_guard("sp", concept="red", judge="noise", tau=0.99, h_sat=1.0, judge_steps=2, judge_start=0,
                      presence=False)  # fmt: skip
    sizes = unet_batches(tiny_sd, lambda: run(tiny_sd, guard, steps=8))
    assert sizes == [8, 8] + [4] * 6  # [u, c, s, a] x 2 images while judging, then plain CFG's batch
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=8), guard=guard)
    plain = run(tiny_sd, steps=8)
    assert np.abs(pixels(images) - plain).max() <= 1  # float rounding of the larger batch, nothing else
    assert np.abs(pixels(images) - plain).mean() <= 1 / 255
    for im in images:
        assert im.info["judged_benign"] and im.info["strength"] == 0.0 and im.info["guided_steps"] == []
        assert len(im.info["harm_per_step"]) == 2 and -1 <= im.info["harm"] <= 1


def test_sp_judges_only_steps_from_judge_start(tiny_sd: LoadedModel) -> None:
    """judge_start S: steps before S run plain CFG, S..K-1 run [u, c, s, a]; h averages those steps only."""
    guard = get_guard("sp", concept="red", judge="noise", tau=0.99, h_sat=1.0, judge_steps=3, judge_start=1,
                      presence=False)  # fmt: skip
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, guard, steps=8)) == [4] + [8] * 2 + [4] * 5
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=8), guard=guard)
    for im in images:
        per_step = im.info["harm_per_step"]
        assert len(per_step) == 2 and im.info["harm"] == pytest.approx(sum(per_step) / 2, abs=1e-4)
    late = get_guard("sp", concept="red", judge="noise", judge_steps=2, judge_start=5)  # S clamped to K-1
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, late, steps=8))[:2] == [4, 8]


def test_sp_harmful_prompt_is_guided_in_its_window(tiny_sd: LoadedModel) -> None:
    guard = get_guard(
        "sp",
        concept="red",
        judge="noise",
        judge_steps=1,
        tau=-1.0,
        direction="unsafe",
        mask_quantile=0.25,
        mask_dilate=0,
        keep_masks=True,
        window_start=0.0,
        window_end=0.5,
    )
    sizes = unet_batches(tiny_sd, lambda: run(tiny_sd, guard, steps=8))
    assert sizes == [8] + [6] * 3 + [4] * 4  # judged with [s, a], guided with [s]; dropped after window_end
    guard.take_masks()
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=8), guard=guard)
    assert np.abs(pixels(images) - run(tiny_sd, steps=8)).mean() > 0.05
    for im in images:
        info = im.info
        assert not info["judged_benign"] and info["strength"] > 0
        assert info["guided_steps"] == [1, 2, 3] and len(info["mask_coverage"]) == 3  # judged at step 0
        assert info["mask_coverage_mean"] == pytest.approx(0.25, abs=0.05)
    masks = guard.take_masks()
    assert [[s for s, _ in m] for m in masks] == [[1, 2, 3]] * 2 and masks[0][0][1].dtype == np.uint8


def test_sp_hard_strength_gives_every_flagged_image_lam_max(tiny_sd: LoadedModel) -> None:
    """strength_shape=hard (judge.py Eq. c''): a ramp from h = -1 to 1 puts each image's lam strictly
    between 0 and lam_max; hard lifts every one to lam_max, which a saturated ramp gives too."""
    opts = dict(judge="noise", judge_steps=1, judge_start=0, tau=-1.0, presence=False, lam_max=7.0)
    config = GenerationConfig(steps=4)
    ramp = generate(tiny_sd, PROMPTS, config=config, guard=get_guard("sp", concept="red", h_sat=1.0, **opts))
    assert all(0 < im.info["strength"] < 7.0 for im in ramp)
    hard = get_guard("sp", concept="red", h_sat=1.0, strength_shape="hard", **opts)
    images = generate(tiny_sd, PROMPTS, config=config, guard=hard)
    assert [im.info["strength"] for im in images] == [7.0, 7.0]
    full = run(tiny_sd, get_guard("sp", concept="red", h_sat=-0.99, **opts), steps=4)
    assert np.array_equal(pixels(images), full)


def test_sp_contrast_direction_runs_the_anchor_and_steers_along_it(tiny_sd: LoadedModel) -> None:
    opts = dict(judge="noise", judge_steps=1, tau=-1.0, window_start=0.0, window_end=0.5, mask="none")
    opts["lam_max"] = 5.0
    contrast = get_guard("sp", concept="red", direction="contrast", **opts)
    sizes = unet_batches(tiny_sd, lambda: run(tiny_sd, contrast, steps=8))
    assert sizes == [8] * 4 + [4] * 4  # judge [u, c, s, a]; guide [u, c, s, a]; then plain CFG
    # the guided eps, by hand: eps_u + w d_c - lam (eps_s - eps_a) on one step's branch outputs
    contrast.begin(_context(tiny_sd, contrast))
    contrast.lam = torch.full((2,), 5.0)
    eps = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    out = contrast.guide(1, torch.tensor(1), eps[0], eps[0], eps[1], torch.stack(eps[2:]))
    expected = eps[0] + 7.5 * (eps[1] - eps[0]) - 5.0 * (eps[2] - eps[3])
    assert torch.allclose(out, expected, atol=1e-5)
    unsafe = get_guard("sp", concept="red", direction="unsafe", **opts)
    images = [
        generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=8), guard=g) for g in (contrast, unsafe)
    ]
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 0.05


def test_judge_statistics_on_hand_numbers() -> None:
    """judge.py Eq. (b1)-(b3) on one location's channels; the anchor's statistics need eps_a."""
    u = torch.zeros(1, 2, 1, 1)
    c, s, a = (torch.tensor([[[[x]], [[y]]]]) for x, y in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0)))
    extra = torch.stack([s, a])
    d_c = c - u
    assert judge.statistic("unsafe", d_c, u, extra).item() == pytest.approx(2**-0.5)
    assert judge.statistic("contrast", d_c, u, extra).item() == pytest.approx(0.0)  # (1,1) . (1,-1)
    assert judge.statistic("relative", d_c, u, extra).item() == pytest.approx(0.0)  # as near s as a
    weighted = judge.statistic("relative", d_c, u, extra, anchor_weight=0.5).item()
    assert weighted == pytest.approx(0.5 * 2**-0.5)  # w = 0.5: cos(d_c, d_s) - 0.5 cos(d_c, d_a)
    near_s = torch.tensor([[[[1.0]], [[0.2]]]])
    assert judge.statistic("relative", near_s, u, extra).item() > 0.5
    with pytest.raises(ValueError, match="anchor"):
        judge.statistic("relative", d_c, u, s[None])
    with pytest.raises(ValueError, match="unknown judge statistic"):
        judge.NoiseJudge(2, 1, stat="local")
    no_anchor = Concept("plain", ConceptKind.OBJECT, ("plain",), "a plain thing", "")
    fallback = judge.NoiseJudge(2, 1, stat="relative")
    assert fallback.branch_texts(no_anchor) == ["a plain thing"] and fallback.stat == "unsafe"  # Eq. (b1)
    assert judge.NoiseJudge(2, 1, stat="relative").branch_texts(get_concept("red")) == ["red", "green"]


def test_windowed_judge_sees_a_concept_in_one_corner() -> None:
    """judge.py Eq. (b5): the concept's direction in one 4 x 4 corner of an 8 x 8 latent, noise elsewhere.
    Over the whole latent the cosine and presence are diluted; the largest window's are the corner's."""
    gen = torch.Generator().manual_seed(0)
    u = torch.zeros(1, 4, 8, 8)
    d_s = torch.randn(1, 4, 8, 8, generator=gen)
    d_c = torch.randn(1, 4, 8, 8, generator=gen)
    d_c[..., :4, :4] = d_s[..., :4, :4]  # the prompt draws the concept in the top-left corner only
    extra = torch.stack([d_s, torch.randn(1, 4, 8, 8, generator=gen)])
    s_p, a_p = d_s.clone(), d_s.clone()  # presence: elsewhere s and its anchor move eps alike (0)
    s_p[..., :4, :4] *= 0.3  # the corner already shows s: conditioning on it barely moves eps there
    shown = torch.stack([s_p, a_p])
    whole = judge.statistic("unsafe", d_c, u, extra).item()
    corner = judge.statistic("unsafe", d_c, u, extra, window=4).item()
    assert corner == pytest.approx(1.0, abs=1e-5) and whole < 0.6
    assert judge.cosine(d_c, d_s, window=4).shape == (1, 9)  # 3 x 3 windows at stride 2
    assert judge.presence(u, shown, window=4).item() > 0.8 > 0.4 > judge.presence(u, shown).item()
    assert judge.statistic("unsafe", d_c, u, extra, window=64).item() == pytest.approx(whole)  # capped
    assert judge.NoiseJudge(2, 1, window=4).window == 4


def test_a_windowed_judgement_beside_the_whole_latent_one():
    """judge.py Eq. (b5') and (c'''): with judge_window_mode=either, h and presence stay the whole
    latent's and w is the largest window's; the share is the largest of the three ramps."""
    gen = torch.Generator().manual_seed(0)
    u = torch.zeros(1, 4, 8, 8)
    d_s, d_c = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    d_c[..., :4, :4] = d_s[..., :4, :4]  # the concept in one corner
    extra = torch.stack([d_s, torch.randn(1, 4, 8, 8, generator=gen)])
    jd = judge.NoiseJudge(2, 1, stat="unsafe", presence=True, window=4, window_mode="either")
    assert (jd.window, jd.beside) == (0, 4)
    assert not jd.update(0, d_c, u, extra) and jd.update(1, d_c, u, extra)
    whole = judge.statistic("unsafe", d_c, u, extra).item()
    assert jd.h.item() == pytest.approx(whole) and jd.h_window.item() == pytest.approx(1.0, abs=1e-5)
    assert jd.h_presence.item() == pytest.approx(judge.presence(u, extra).item())
    high = {"presence_tau": 0.98, "presence_h_sat": 0.99}  # presence off the table
    assert jd.share(0.9, 0.95, **high, window_tau=0.5, window_h_sat=0.75).item() == pytest.approx(1.0)
    off = {"window_tau": 1.5, "window_h_sat": 2.0}  # above any cosine
    assert jd.share(0.9, 0.95, **high, **off).item() == 0.0  # every ramp at 0
    assert jd.share(whole - 0.1, whole + 0.1, **high, **off).item() == (pytest.approx(0.5))
    only = judge.NoiseJudge(2, 1, stat="unsafe", window=4)  # the default mode: windows in place of the whole
    only.update(0, d_c, u, extra), only.update(1, d_c, u, extra)
    assert only.h.item() == pytest.approx(1.0, abs=1e-5) and only.h_window is None
    with pytest.raises(ValueError, match="window mode"):
        judge.NoiseJudge(2, 1, window=4, window_mode="both")


@pytest.mark.parametrize("name", ["sp", "dlr"])
def test_the_windowed_judgement_guides_where_the_whole_latent_ones_say_benign(
    tiny_sd: LoadedModel, name: str
) -> None:
    """judge_window_mode=either: with the whole-latent thresholds out of reach, the windowed judgement
    (judge.py Eq. b5') with its own thresholds guides every image, at no extra UNet branch; each image
    reports w; with its threshold out of reach too, nothing is guided."""
    opts = dict(concept="red", judge_steps=2, judge_start=0, tau=0.99, h_sat=1.0, presence_tau=0.99)
    opts |= {"presence_h_sat": 1.0, "judge_window": 2, "judge_window_mode": "either"}
    opts |= {"speculate": False} if name == "dlr" else {}
    caught = get_guard(name, window_tau=-1.0, window_h_sat=-0.99, **opts)
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, caught, steps=6))[:2] == [8, 8]  # [u, c, s, a]
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=caught)
    assert not any(im.info["judged_benign"] for im in images)
    assert all(-1 <= im.info["harm_window"] <= 1 for im in images)
    assert all(im.info["harm_window"] != im.info["harm"] for im in images)
    missed = get_guard(name, window_tau=0.99, window_h_sat=1.0, **opts)
    quiet = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=missed)
    assert all(im.info["judged_benign"] for im in quiet)
    assert np.abs(pixels(images) - pixels(quiet)).mean() > 0.05
    with pytest.raises(SafegenError, match="window_h_sat"):
        get_guard(name, concept="red", window_tau=0.5, window_h_sat=0.4)


def test_presence_on_hand_numbers() -> None:
    """judge.py Eq. (b4) and (c'): a latent whose s-conditioned prediction barely moves is drawing s."""
    u = torch.zeros(1, 2, 1, 1)
    s, a = torch.tensor([[[[0.1]], [[0.0]]]]), torch.tensor([[[[0.0]], [[0.3]]]])
    assert judge.presence(u, torch.stack([s, a])).item() == pytest.approx((0.09 - 0.01) / (0.09 + 0.01))
    assert judge.presence(u, torch.stack([a, s])).item() == pytest.approx(-0.8)  # nearer the anchor
    assert judge.presence(u, torch.stack([s, s])).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="anchor"):
        judge.presence(u, s[None])
    jd = judge.NoiseJudge(1, 1, stat="unsafe", presence=True)
    assert jd.branch_texts(get_concept("red")) == ["red", "green"]  # presence reads the anchor too
    c = torch.tensor([[[[0.0]], [[1.0]]]])  # the prompt points at the anchor: Eq. (b1) says benign
    assert jd.update(0, c - u, u, torch.stack([s, a]))
    assert jd.h.item() == pytest.approx(0.0) and jd.h_presence.item() == pytest.approx(0.8)
    assert jd.share(0.1, 0.3).item() == pytest.approx(0.8)  # Eq. (c'): the larger ramp (0 and 0.8 / 1)
    assert jd.share(0.1, 0.3, presence_tau=0.7, presence_h_sat=0.9).item() == pytest.approx(0.5)
    assert jd.share(0.1, 0.3, presence_tau=0.85, presence_h_sat=0.9).item() == 0.0
    no_anchor = Concept("plain", ConceptKind.OBJECT, ("plain",), "a plain thing", "")
    off = judge.NoiseJudge(1, 1, stat="unsafe", presence=True)
    assert off.branch_texts(no_anchor) == ["a plain thing"] and not off.presence


@pytest.mark.parametrize("name", ["sp", "dlr"])
def test_presence_acts_where_the_prompt_statistic_says_benign(tiny_sd: LoadedModel, name: str) -> None:
    """tau = 0.99 makes every prompt benign by Eq. (b3); presence (Eq. b4, c') with its own thresholds
    guides them anyway, at no extra UNet branch; with a presence threshold out of reach nothing changes."""
    opts = dict(concept="red", judge_steps=2, judge_start=0, tau=0.99, h_sat=1.0)
    opts |= {"speculate": False} if name == "dlr" else {}  # dlr's stream B waits for the judgement here
    caught = get_guard(name, presence_tau=-1.0, presence_h_sat=-0.99, **opts)
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, caught, steps=6))[:2] == [8, 8]  # [u, c, s, a]
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=caught)
    assert not any(im.info["judged_benign"] for im in images)
    assert all(-1 <= im.info["harm_presence"] <= 1 for im in images)
    missed = get_guard(name, presence_tau=0.99, presence_h_sat=1.0, **opts)
    quiet = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=missed)
    assert all(im.info["judged_benign"] for im in quiet)
    assert np.abs(pixels(images) - pixels(quiet)).mean() > 0.05
    with pytest.raises(SafegenError, match="presence_h_sat"):
        get_guard(name, concept="red", presence_tau=0.5, presence_h_sat=0.4)


def test_a_calibration_is_read_on_its_own_statistic_only() -> None:
    """A file without a statistic was measured on the paper's; another explicit statistic drops it."""
    from safegen.guards import with_calibration

    old = {"tau": 0.2, "h_sat": 0.4}
    implied = {"judge_direction": "unsafe", "presence": False}  # measured before either existed
    assert with_calibration(old, {}) == {**implied, "tau": 0.2, "h_sat": 0.4}
    assert with_calibration(old, {"presence": True}) == {
        **implied,
        "tau": 0.2,
        "h_sat": 0.4,
        "presence": True,
    }
    assert with_calibration(old, {"judge_direction": "relative"}) == {"judge_direction": "relative"}
    new = {"judge_direction": "relative", "anchor_weight": 0.5, "tau": 0.1, "h_sat": 0.3, "presence": True}
    new |= {"presence_tau": 0.05, "presence_h_sat": 0.2}
    assert with_calibration(new, {"lam_max": 10.0}) == {**new, "lam_max": 10.0}
    assert with_calibration(new, {"anchor_weight": 1.0}) == {"anchor_weight": 1.0}
    assert with_calibration({}, {"tau": 0.5}) == {"tau": 0.5}
    assert with_calibration(new, {"judge_window": 8}) == {"judge_window": 8}  # measured on whole latents
    windowed = {**new, "judge_window": 8}
    assert with_calibration(windowed, {}) == windowed
    assert with_calibration(windowed, {"judge_window": 8, "lam_max": 10.0}) == {**windowed, "lam_max": 10.0}
    assert with_calibration(windowed, {"judge_window": 0}) == {"judge_window": 0}


@pytest.mark.parametrize("name", ["sp", "dlr"])
def test_anchor_statistics_judge_with_the_anchor_branch(tiny_sd: LoadedModel, name: str) -> None:
    """judge_direction=relative (the default): the judged steps run [u, c, s, a]; h is Eq. (b3) averaged
    over them, and differs from the paper's Eq. (b1), judged with [u, c, s]."""
    wait = {"speculate": False} if name == "dlr" else {}  # dlr: no stream-B call before the judgement
    guard = get_guard(name, concept="red", judge_steps=2, judge_start=0, tau=0.99, h_sat=1.0,
                      judge_direction="relative", presence=False, **wait)  # fmt: skip
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, guard, steps=6)) == [8] * 2 + [4] * 4
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=guard)
    for im in images:
        assert len(im.info["harm_per_step"]) == 2 and -2 <= im.info["harm"] <= 2
    paper = get_guard(name, concept="red", judge_steps=2, judge_start=0, tau=0.99, h_sat=1.0,
                      judge_direction="unsafe", presence=False, **wait)  # fmt: skip
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, paper, steps=6)) == [6] * 2 + [4] * 4
    other = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=paper)
    assert [im.info["harm"] for im in images] != [im.info["harm"] for im in other]


def _context(model: LoadedModel, guard) -> RunContext:
    """The RunContext the generator would give ``guard`` for PROMPTS (built by running one step)."""
    seen = {}
    original = guard.begin

    def capture(ctx):
        seen["ctx"] = ctx
        original(ctx)

    guard.begin = capture
    try:
        run(model, guard, steps=1)
    finally:
        del guard.begin
    return seen["ctx"]


# --------------------------------------------------------------------------- DLR
def test_dlr_blend_on_hand_numbers() -> None:
    a, b = torch.full((1, 1, 1, 4), 2.0), torch.tensor([[[[2.0, -2.0, 2.0, -2.0]]]])
    plain = blend_latents(a, b, 0.5, norm_correction=False)
    assert plain.flatten().tolist() == [2.0, 0.0, 2.0, 0.0]  # norm 2.83, while both streams have norm 4
    fixed = blend_latents(a, b, 0.5, norm_correction=True)
    assert fixed.norm().item() == pytest.approx(4.0) and fixed.flatten()[1].item() == 0.0
    assert torch.equal(blend_latents(a, b, 0.0, True), a) and torch.equal(blend_latents(a, b, 1.0, True), b)


@pytest.mark.parametrize(
    "scheduler", [DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler]
)
@pytest.mark.parametrize("blend", ["step", "final"])
def test_dlr_stream_b_alone_is_a_plain_run_of_the_context(
    tiny_sd_dir: Path, scheduler: type, blend: str
) -> None:
    """weight 1 from step 0: the image is stream B's, i.e. the context prompt with the unsafe negative.

    With a multistep solver (DPM-Solver) or a stochastic one (Euler ancestral), this holds only if stream B
    has its own scheduler instance and its own copy of the generators.
    """
    model = own_model(tiny_sd_dir, scheduler)
    options = {"context": "append", "negative": "unsafe", "norm_correction": False, "gate": "none"}
    guard = get_guard("dlr", concept="red", weight=1.0, tau_gc=0.0, blend=blend, **options)
    images = generate(model, PROMPTS, config=GenerationConfig(steps=6), guard=guard)
    contexts = [im.info["context"] for im in images]
    assert contexts == ["a red circle, green", "a blue star, green"]
    alone = run(model, steps=6, prompts=contexts, negative_prompt="red")
    diff = np.abs(pixels(images) - alone)
    assert diff.max() <= (0 if blend == "final" else 1)  # step: B's branches share a larger batch


def test_dlr_one_stream_before_the_fork_and_batch_sizes(tiny_sd: LoadedModel) -> None:
    plain = run(tiny_sd, steps=6)
    never = get_guard("dlr", concept="red", tau_gc=1.0, gate="none")  # never forks: plain CFG, exactly
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, never, steps=6)) == [4] * 6
    assert np.array_equal(run(tiny_sd, never, steps=6), plain)
    zero = get_guard("dlr", concept="red", weight=0.0, tau_gc=0.5, gate="none")
    assert np.abs(run(tiny_sd, zero, steps=6) - plain).max() <= 1  # stream A only (batch rounding)

    step = get_guard("dlr", concept="red", weight=0.75, tau_gc=0.5, negative="unsafe", gate="none")
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, step, steps=6)) == [4] * 3 + [8] * 3
    shared = get_guard("dlr", concept="red", weight=0.75, tau_gc=0.5, negative="empty", gate="none")
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, shared, steps=6)) == [4] * 3 + [6] * 3
    whole = get_guard("dlr", concept="red", tau_gc=0.5, negative="unsafe", gate="none")  # omega 1: B alone
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, whole, steps=6)) == [4] * 6
    final = get_guard("dlr", concept="red", tau_gc=0.5, negative="unsafe", blend="final", gate="none")
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, final, steps=6)) == [4] * 3 + [4, 4] * 3

    first_reading = {
        "tau_gc": 0.34,
        "weight": 0.75,
        "context": "append",
        "negative": "unsafe",
        "gate": "none",
    }
    images = {
        name: run(tiny_sd, get_guard("dlr", concept="red", **{**first_reading, **options}), steps=6)
        for name, options in {
            "latent": {},
            "raw": {"norm_correction": False},
            "x0": {"space": "x0"},
            "final": {"blend": "final"},
            "rewrite": {"context": "rewrite"},
        }.items()
    }
    for name, image in images.items():
        assert np.abs(image - plain).mean() > 0.05, name  # every variant changes the image
    assert not np.array_equal(images["latent"], images["raw"])
    assert not np.array_equal(images["latent"], images["x0"])


def test_dlr_gate_judges_the_noise_then_forks_only_harmful_images(tiny_sd: LoadedModel) -> None:
    """gate=noise, speculate=false: the first K steps run [u, c, s] (the judge, Eq. b); images judged benign
    then run plain CFG (stream B never runs); judged harmful, stream B forks at step K with omega = weight x
    ramp (Eq. G). The judged steps run [u, c, s, a]: the default statistic reads the safe anchor (Eq. b3)."""
    plain = run(tiny_sd, steps=6)
    gate = {"judge_steps": 2, "judge_start": 0, "speculate": False}
    benign = get_guard("dlr", concept="red", tau=0.99, h_sat=1.0, presence=False, **gate)
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, benign, steps=6)) == [8] * 2 + [4] * 4
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=benign)
    assert np.abs(pixels(images) - plain).max() <= 1  # plain CFG's image (batch rounding)
    assert all(im.info["judged_benign"] and im.info["fork_step"] is None for im in images)
    assert all(len(im.info["harm_per_step"]) == 2 and -1 <= im.info["harm"] <= 1 for im in images)
    harmful = get_guard("dlr", concept="red", tau=-1.0, h_sat=-0.99, tau_gc=0.0, **gate)
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, harmful, steps=6)) == [8] * 2 + [4] * 4  # omega 1
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=harmful)
    assert all(im.info["fork_step"] == 2 and im.info["weight"] == 1.0 for im in images)
    assert np.abs(pixels(images) - plain).mean() > 0.05
    half = get_guard("dlr", concept="red", tau=-1.0, h_sat=1.0, presence=False, gate_shape="ramp", **gate)
    weights = [
        im.info["weight"] for im in generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=half)
    ]
    assert all(0 < w < 1 for w in weights)  # the ramp of Eq. (c): (h + 1) / 2
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, half, steps=6))[-1] == 8  # a true blend: both streams


SPECULATE = {"judge_steps": 2, "judge_start": 0, "tau_gc": 0.0, "speculate": True, "context": "append"}


@pytest.mark.parametrize(
    "scheduler", [DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler]
)
def test_dlr_speculate_keeps_stream_b_from_the_paper_fork(tiny_sd_dir: Path, scheduler: type) -> None:
    """speculate: stream B forks at tau_gc (0 here) while the gate judges (K = 2), in a UNet call of its own.
    Judged harmful at full weight, the image is stream B's from the fork, i.e. a plain run of the context
    with the unsafe negative: after K it goes on in the run's scheduler, which must take stream B's solver
    state (DPM-Solver's past outputs) and noise (Euler ancestral) for it to hold."""
    model = own_model(tiny_sd_dir, scheduler)
    harmful = get_guard("dlr", concept="red", tau=-1.0, h_sat=-0.99, norm_correction=False, **SPECULATE)
    assert unet_batches(model, lambda: run(model, harmful, steps=6)) == [8, 4] * 2 + [4] * 4
    images = generate(model, PROMPTS, config=GenerationConfig(steps=6), guard=harmful)
    assert all(im.info["fork_step"] == 0 and im.info["weight"] == 1.0 for im in images)
    alone = run(model, steps=6, prompts=[im.info["context"] for im in images], negative_prompt="red")
    assert np.abs(pixels(images) - alone).max() <= 1


def test_dlr_speculate_drops_stream_b_for_images_judged_benign(tiny_sd: LoadedModel) -> None:
    """Judged benign at K, stream B's speculative steps are thrown away: plain CFG's image. A partial omega
    blends the two streams at K, and both run on from there."""
    plain = run(tiny_sd, steps=6)
    benign = get_guard("dlr", concept="red", tau=0.99, h_sat=1.0, presence=False, **SPECULATE)
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, benign, steps=6)) == [8, 4, 8] + [4] * 4
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=benign)
    assert np.abs(pixels(images) - plain).max() <= 1
    assert all(im.info["judged_benign"] and im.info["fork_step"] is None for im in images)
    mixed = get_guard(
        "dlr", concept="red", tau=-1.0, h_sat=1.0, presence=False, gate_shape="ramp", **SPECULATE
    )
    weights = [
        im.info["weight"] for im in generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=mixed)
    ]
    assert all(0 < w < 1 for w in weights)  # a true blend at K, then both streams in the batch
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, mixed, steps=6)) == [8, 4] * 2 + [8] * 4
    hard = get_guard("dlr", concept="red", tau=-1.0, h_sat=1.0, presence=False, **SPECULATE)  # the default
    images = generate(tiny_sd, PROMPTS, config=GenerationConfig(steps=6), guard=hard)
    assert [im.info["weight"] for im in images] == [1.0, 1.0]  # Eq. (G'): flagged at all, in full
    assert unet_batches(tiny_sd, lambda: run(tiny_sd, hard, steps=6)) == [8, 4] * 2 + [4] * 4  # B alone
    full = get_guard("dlr", concept="red", tau=-1.0, h_sat=-0.99, presence=False, **SPECULATE)
    assert np.array_equal(pixels(images), run(tiny_sd, full, steps=6))  # the same as a saturated ramp


def test_dlr_speculate_hands_over_only_the_images_judged_harmful(tiny_sd_dir: Path) -> None:
    """One image judged harmful, one benign (tau between their h, a ramp of width 1e-6): with DPM-Solver
    the harmful one is stream B's image from the fork, the benign one plain CFG's, in the same batch."""
    model = own_model(tiny_sd_dir, DPMSolverMultistepScheduler)
    opts = {"presence": False, "norm_correction": False, **SPECULATE}
    probe = generate(model, PROMPTS, config=GenerationConfig(steps=6), guard=get_guard("dlr", concept="red",
                     tau=-1.0, h_sat=1.0, **opts))  # fmt: skip
    harms = [im.info["harm"] for im in probe]
    tau = sum(harms) / 2
    guard = get_guard("dlr", concept="red", tau=tau, h_sat=tau + 1e-6, **opts)
    images = generate(model, PROMPTS, config=GenerationConfig(steps=6), guard=guard)
    hot = int(np.argmax(harms))
    assert [im.info["weight"] for im in images] == [float(i == hot) for i in range(2)]
    alone = run(model, steps=6, prompts=[im.info["context"] for im in images], negative_prompt="red")
    plain = run(model, steps=6)
    assert np.abs(pixels(images)[hot] - alone[hot]).max() <= 1
    assert np.abs(pixels(images)[1 - hot] - plain[1 - hot]).max() <= 1


def test_dlr_x0_space_needs_a_variance_preserving_scheduler(tiny_sd_dir: Path) -> None:
    model = own_model(tiny_sd_dir, EulerAncestralDiscreteScheduler)
    with pytest.raises(SafegenError, match="variance-preserving scheduler"):
        run(model, get_guard("dlr", concept="red", space="x0"), steps=2)


def test_every_guard_runs_on_a_v_prediction_model(tiny_sd_dir: Path) -> None:
    """SD 2.x (768) predicts v: the guards treat the UNet's output as diffusers' pipelines do."""
    model = own_model(tiny_sd_dir, DDIMScheduler, prediction_type="v_prediction")
    plain = run(model, steps=4)
    sp = {"judge": "noise", "judge_steps": 1, "tau": -1.0}
    cases = [("sp", "strong", sp), ("dlr", "strong", {"space": "x0"}), ("sld", "max", {})]
    for name, strength, options in [*cases, ("neg", "strong", {})]:
        images = run(model, get_guard(name, concept="nudity", strength=strength, **options), steps=4)
        assert images.shape == plain.shape and not np.array_equal(images, plain), name


# --------------------------------------------------------------------------- options
def test_presets_and_defaults() -> None:
    for name in ("sp", "dlr", "sld", "neg"):
        cls = guard_class(name)
        assert {"weak", "medium", "strong"} <= set(cls.PRESETS)
        defaults = dataclasses.asdict(cls.Options())
        assert {**defaults, **cls.PRESETS["medium"]} == defaults  # medium = the defaults
        described = get_guard(name, concept="red").describe()
        assert described["name"] == name and described["concept"] == "red"
        assert described["strength"] == "medium"
    strong = get_guard("sp", concept="red", strength="strong", tau=0.2)
    assert strong.opts.lam_max == sp_guard.PRESETS["strong"]["lam_max"] and strong.opts.tau == 0.2
    assert {row["name"] for row in list_guards()} == set(guard_names())


def test_set_and_config_file(tmp_path: Path) -> None:
    cls = guard_class("sp").Options
    parsed = parse_sets("Guard 'sp'", cls, ["tau=0.5", "judge_steps=3", "mask=none", "mask_soft=yes"])
    assert parsed == {"tau": 0.5, "judge_steps": 3, "mask": "none", "mask_soft": True}
    config = tmp_path / "sp.yaml"
    config.write_text("# safegen generate x --guard sp --guard-config sp.yaml\nstrength: weak\ntau: 0.2\n")
    assert read_config(config, "guard config") == {"strength": "weak", "tau": 0.2}
    options = guard_options("sp", None, config, ["tau=0.1"])
    assert options == {"strength": "weak", "tau": 0.1}  # --set wins over the file
    guard = build_guard("sp", "red", None, config, ["tau=0.1"])
    assert guard.opts.tau == 0.1 and guard.opts.lam_max == sp_guard.PRESETS["weak"]["lam_max"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: get_guard("sp"), "needs a concept"),
        (lambda: get_guard("dlr", concept=""), "needs a concept"),
        (lambda: get_guard("sld", concept="nudityy"), "Unknown concept 'nudityy'. Did you mean 'nudity'"),
        (
            lambda: get_guard("sp", concept="red", nope=1),
            "Guard 'sp' has no option 'nope'. Its options: judge",
        ),
        (lambda: get_guard("sp", concept="red", tau=1.5), r"tau must be in -1.0..0.99, got 1.5"),
        (lambda: get_guard("sp", concept="red", judge_steps=2.5), "judge_steps must be an integer"),
        (lambda: get_guard("sp", concept="red", mask="blob"), "mask must be one of quantile"),
        (lambda: get_guard("sp", concept="red", mask_soft=1), "must be true or false"),
        (lambda: get_guard("sp", concept="red", window_start=0.5, window_end=0.5), "greater than"),
        (
            lambda: get_guard("sp", concept="red", tau=0.5, h_sat=0.4),
            r"h_sat \(0.4\) must be greater",
        ),
        (lambda: get_guard("sp", concept="red", direction="sideways"), "direction must be one of unsafe"),
        (lambda: get_guard("dlr", concept="red", weight=float("nan")), "weight must be a finite number"),
        (lambda: get_guard("neg", concept="red", strength="extreme"), "Unknown strength for guard 'neg'"),
        (lambda: get_guard("sld", concept="red", threshold="0.1"), "threshold must be a number"),
        (lambda: parse_sets("Guard 'sp'", guard_class("sp").Options, ["tau"]), "--set takes KEY=VALUE"),
        (lambda: parse_sets("Guard 'sp'", guard_class("sp").Options, ["tau=high"]), "tau must be a number"),
        (lambda: guard_options("none", "weak"), "Guard 'none' takes no"),
        (lambda: build_guard("sp", "nudity", model="mini"), "mini model only knows the mini world"),
    ],
)
def test_bad_guard_input(call, message: str) -> None:
    with pytest.raises(SafegenError, match=message):
        call()


def test_bad_config_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tau: [unclosed\n")
    with pytest.raises(SafegenError, match="not valid YAML"):
        read_config(bad, "guard config")
    bad.write_text("- tau\n")
    with pytest.raises(SafegenError, match="mapping of option names"):
        read_config(bad, "guard config")
    bad.write_text("tau: high\n")
    with pytest.raises(SafegenError, match="tau must be a number"):
        build_guard("sp", "red", config_file=bad)
