"""Calibrate a guard's harmfulness judge on the model at hand, instead of absolute thresholds tuned on one.

SP-Guard's noise judge reads h = cos(eps_c - eps_u, eps_s - eps_u) over the first K steps (Eq. (b) in
:mod:`safegen.guards.sp`); its scale depends on the model (the bundled mini model and SD-1.5 put clean
prompts at very different cosines), so a fixed ``tau`` that suits one model guides every prompt, or none, on
another. :func:`calibrate_guard` measures the judge where it will run:

- h on prompts that carry the concept (``prompts``; default: the registry's ``examples``, the only
  concept prompts a method may see) and on clean prompts (``clean_prompts``; default: the bundled ``smoke``
  captions for real models, mini-world captions without the concept for the mini models), ``seeds``
  images each, with the generation settings the guard will run with;
- AUROC of h (harmful vs clean: the probability that a harmful prompt's h exceeds a clean one's), on the
  guard's judged statistic (``judge_direction``, :mod:`safegen.guards.judge`; written to the file with
  ``anchor_weight``, since tau and h_sat are on that statistic's scale);
- ``tau`` at the clean h's ``1 - target_fpr`` quantile (a share ``target_fpr`` of clean prompts guided at
  all) and ``h_sat`` at the harmful h's ``sat_quantile`` quantile (default 0.10: nine in ten concept
  prompts at full strength; ``benchmarks/sweep_guards.py``), as a guard config YAML that
  ``--guard-config`` reads. With ``judge=both`` the text judge's ``text_tau`` / ``text_h_sat`` are set the
  same way on its word score. With the presence judge on (``presence``, judge.py Eq. b4; the default
  where the concept has a safe anchor) ``presence_tau`` / ``presence_h_sat`` are set the same way on its
  score; an image is guided when either passes, so the two share ``target_fpr`` (the union's clean
  share stays within it): :func:`budget_split` picks the split that guides the most concept prompts
  (even unless an uneven one does strictly better; our rule, not the paper's). With
  ``judge_window_mode=either`` the windowed judgement (judge.py Eq. b5') gets ``window_tau`` /
  ``window_h_sat`` and a third of the budget the same way. The file's comments record what it was
  measured on.

sp and dlr (its ``gate=noise``) share the judge (:mod:`safegen.guards.judge`), so one calibration serves
both. Our reading: the paper sets its threshold per model by hand; the quantile rule is ours, named options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safegen.errors import SafegenError

CALIBRATED = ("sp", "dlr")
MIN_PROMPTS = 3
NOISE_JUDGES = ("harm", "harm_presence", "harm_window")  # judge.py Eq. (b), (b4), (b5')
# Mini-world clean captions for calibration: a phrasing no benchmark uses (every word known to the models).
MINI_CLEAN_TEMPLATE = "{object}, {texture}, {color}, plain background"


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U statistic / n m)."""
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


RAMP_FLOORS = ("clean-spread", "to-median")


def check_ramp_floor(ramp_floor: str) -> None:
    """Refuse a ramp floor rule :func:`thresholds` does not know (one line, before any work)."""
    if ramp_floor not in RAMP_FLOORS:
        raise SafegenError(f"ramp_floor must be one of {', '.join(RAMP_FLOORS)}, got {ramp_floor!r}.")


def thresholds(
    harmful: Sequence[float],
    clean: Sequence[float],
    target_fpr: float,
    sat_quantile: float = 0.10,
    ramp_floor: str = "clean-spread",
) -> tuple[float, float]:
    """``tau`` at the clean scores' ``1 - target_fpr`` quantile, ``h_sat`` at the harmful scores'
    ``sat_quantile`` quantile, kept above tau so the ramp has a width (``ramp_floor``):

    - ``clean-spread``: at least a tenth of the clean scores' range;
    - ``to-median``: at least a tenth of the way from tau to the harmful scores' median (a hundredth of the
      clean range where that median is not above tau), so a judge whose concept scores sit just above the
      clean ones still reaches full strength on them.
    """
    check_ramp_floor(ramp_floor)
    tau = min(float(np.quantile(clean, 1.0 - target_fpr)), 0.99)  # cosines: tau < h_sat <= 1
    spread = float(np.ptp(clean)) or 1e-3
    if ramp_floor == "clean-spread":
        width = 0.1 * spread
    else:
        width = max(0.1 * (float(np.median(harmful)) - tau), 0.01 * spread)
    return tau, min(max(float(np.quantile(harmful, sat_quantile)), tau + width), 1.0)


SHARES = (0.5, 0.25, 0.75, 0.0, 1.0)  # tried in this order: an uneven split must guide strictly more
# Three judges (h, presence, windowed w; judge.py Eq. c'''): even first, then halves and quarters.
SPLITS3 = ((1 / 3, 1 / 3, 1 / 3), (0.5, 0.25, 0.25), (0.25, 0.5, 0.25), (0.25, 0.25, 0.5), (0.5, 0.5, 0.0))
SPLITS3 += ((0.5, 0.0, 0.5), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def budget_split(scores: Sequence[Sequence[float]], n_harm: int, target_fpr: float) -> tuple[float, ...]:
    """Each judge's share of ``target_fpr`` (an image is guided when any judge passes its tau).

    ``scores``: one score list per judge ([h, presence] or [h, presence, w]), concept images first
    (``n_harm``). Each split (:data:`SHARES` for two judges, :data:`SPLITS3` for three) sets every tau at
    its clean quantile (so the union guides at most ``target_fpr`` of the clean images); the first split
    that guides the most concept images under any judgement wins. A judge that does not separate the
    concept (presence on a texture not yet drawn when it is read) then gives its budget to the others
    instead of thinning theirs."""
    columns = [np.asarray(x, float) for x in scores]
    if len(columns) not in (2, 3):
        raise ValueError(f"budget_split takes two or three judges, got {len(columns)}")
    splits = [(1 - s, s) for s in SHARES] if len(columns) == 2 else list(SPLITS3)
    best, best_recall = splits[0], -1.0
    for split in splits:
        caught = np.zeros(n_harm, bool)
        for values, share in zip(columns, split, strict=True):
            if share > 0:
                caught |= values[:n_harm] > np.quantile(values[n_harm:], 1.0 - share * target_fpr)
        if caught.mean() > best_recall:
            best, best_recall = split, float(caught.mean())
    return best


def presence_share(scores: Sequence[Sequence[float]], n_harm: int, target_fpr: float) -> float:
    """The share of ``target_fpr`` that goes to the presence judge (the rest to the prompt statistic):
    :func:`budget_split` of [h, presence]."""
    return budget_split(scores, n_harm, target_fpr)[1]


def mini_clean_prompts(concept: Any) -> list[str]:
    """Mini-world captions whose values do not show ``concept`` (every other object x colour x texture)."""
    from itertools import product

    from safegen.bench.mini_prompts import target_for
    from safegen.mini.world import World

    world, target = World.load(), target_for(concept)
    out = []
    for obj, color, texture in product(
        world.values["object"], world.values["color"], world.values["texture"]
    ):
        thing = {"object": obj, "color": color, "texture": texture}
        if target.artist is None and thing[target.axis] == target.value:
            continue
        out.append(MINI_CLEAN_TEMPLATE.format(**thing))
    return out


MINI_ARTIST_TEMPLATE = "{object}, {color}, by {artist}, plain background"


def mini_concept_prompts(concept: Any) -> list[str]:
    """Mini-world captions that show ``concept``, in the clean captions' phrasing: its value with every
    other object x colour x texture (an artist: named, with every object x colour)."""
    from itertools import product

    from safegen.bench.mini_prompts import target_for
    from safegen.mini.world import World

    world, target = World.load(), target_for(concept)
    if target.artist is not None:
        return [
            MINI_ARTIST_TEMPLATE.format(object=obj, color=color, artist=target.artist)
            for obj, color in product(world.values["object"], world.values["color"])
        ]
    out = []
    for obj, color, texture in product(
        world.values["object"], world.values["color"], world.values["texture"]
    ):
        thing = {"object": obj, "color": color, "texture": texture}
        if thing[target.axis] == target.value:
            out.append(MINI_CLEAN_TEMPLATE.format(**thing))
    return out


def default_prompts(concept: Any, world_captions: bool = False) -> tuple[list[str], list[str]]:
    """The concept prompts (its examples; on the mini world with ``world_captions``, also
    :func:`mini_concept_prompts`) and the clean prompts a calibration uses when given none."""
    from safegen.bench.quality import caption_set

    harmful = list(concept.examples or [])
    mini = "mini" in (concept.detector or {})
    if mini and world_captions:
        harmful += [p for p in mini_concept_prompts(concept) if p not in harmful]
    clean = mini_clean_prompts(concept) if mini else caption_set("smoke")[0]
    return harmful, clean


def calibrate_guard(
    guard: str,
    concept: Any,
    model: str = "mini",
    *,
    prompts: Sequence[str] | None = None,
    clean_prompts: Sequence[str] | None = None,
    judge: str = "noise",
    seeds: int = 4,
    steps: int | None = None,
    target_fpr: float = 0.05,
    sat_quantile: float = 0.10,
    ramp_floor: str = "clean-spread",
    world_captions: bool = False,
    max_clean: int = 64,
    device: str = "auto",
    options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Measure the guard's judge on ``model`` and return the calibrated options and the measurement.

    Raises:
        SafegenError: a guard without a calibrated judge, too few prompts, bad settings.
    """
    from safegen.generator import generate
    from safegen.guards import get_guard
    from safegen.loader import load_model
    from safegen.sampling import GenerationConfig

    if guard not in CALIBRATED:
        raise SafegenError(
            f"calibrate measures a harmfulness judge; guard '{guard}' has none to calibrate (only: "
            f"{', '.join(CALIBRATED)})."
        )
    if judge not in ("noise", "both"):
        raise SafegenError(
            f"judge must be noise or both (the text judge alone needs no model), got {judge!r}."
        )
    if not 0.0 < target_fpr < 0.5:
        raise SafegenError(f"target_fpr must be in (0, 0.5), got {target_fpr}.")
    if not 0.0 <= sat_quantile <= 1.0:
        raise SafegenError(f"sat_quantile must be in [0, 1], got {sat_quantile}.")
    check_ramp_floor(ramp_floor)
    if guard == "dlr" and judge != "noise":
        raise SafegenError("dlr's gate has the noise judge only; drop --judge.")
    if not 1 <= seeds <= 64:
        raise SafegenError(f"seeds must be in 1..64, got {seeds}.")
    default_harmful, default_clean = default_prompts(concept, world_captions)
    harmful = list(prompts) if prompts is not None else default_harmful
    clean = list(clean_prompts) if clean_prompts is not None else default_clean
    rng = np.random.default_rng(0)
    if len(clean) > max_clean:  # a fixed, seeded subset: the calibration is reproducible
        clean = [clean[i] for i in sorted(rng.choice(len(clean), max_clean, replace=False))]
    for name, given in (("concept prompts", harmful), ("clean prompts", clean)):
        if len(given) < MIN_PROMPTS:
            raise SafegenError(
                f"calibrate needs at least {MIN_PROMPTS} {name}, got {len(given)}; pass "
                f"{'--prompts' if name.startswith('concept') else '--clean-prompts'} FILE."
            )
    if set(harmful) & set(clean):
        raise SafegenError("Some prompts are both concept prompts and clean prompts; separate the files.")
    loaded = load_model(model, device=device)
    judged = {"judge": judge} if guard == "sp" else {"gate": "noise"}
    guard_obj = get_guard(guard, concept=concept, **{**(options or {}), **judged})
    config = GenerationConfig(steps=steps) if steps is not None else GenerationConfig()
    texts = [p for p in harmful + clean for _ in range(seeds)]
    seed_list = [k for _ in harmful + clean for k in range(seeds)]
    images = []
    batch = 8
    for i in range(0, len(texts), batch):
        images += generate(loaded, texts[i : i + batch], seeds=seed_list[i : i + batch], config=config,
                           guard=guard_obj)  # fmt: skip
        if progress is not None:
            progress(min(i + batch, len(texts)), len(texts))
    n_harm = len(harmful) * seeds
    result: dict[str, Any] = {
        "guard": guard,
        "concept": guard_obj.concept.name,
        "model": str(model),
        "judge": judge,
        "statistic": images[0].info.get("judge_statistic"),
        "n_prompts": len(harmful),
        "n_clean": len(clean),
        "seeds": seeds,
        "steps": config.steps,
        "target_fpr": target_fpr,
        "sat_quantile": sat_quantile,
        "ramp_floor": ramp_floor,
    }
    options_out: dict[str, Any] = {**judged, "judge_steps": guard_obj.opts.judge_steps}
    options_out["judge_start"] = guard_obj.opts.judge_start
    options_out["judge_direction"] = result["statistic"] or guard_obj.opts.judge_direction  # as judged
    options_out["anchor_weight"] = guard_obj.opts.anchor_weight
    if guard_obj.opts.judge_window:  # judge.py Eq. (b5): the thresholds hold for this window only
        options_out["judge_window"] = guard_obj.opts.judge_window
        options_out["judge_window_mode"] = guard_obj.opts.judge_window_mode
    with_presence = all(im.info.get("harm_presence") is not None for im in images)
    options_out["presence"] = with_presence  # as judged (a concept without an anchor has none)
    fpr = {"harm": target_fpr, "harm_text": target_fpr}
    judges = [k for k in NOISE_JUDGES if all(im.info.get(k) is not None for im in images)]
    if len(judges) > 1:  # Eq. (c'), (c'''): guided when any passes its tau: they share the clean budget
        split = budget_split([[im.info[k] for im in images] for k in judges], n_harm, target_fpr)
        fpr |= {k: share * target_fpr for k, share in zip(judges, split, strict=True)}
        result["budget_split"] = dict(zip(judges, split, strict=True))
        if "harm_presence" in judges:
            result["presence_share"] = result["budget_split"]["harm_presence"]
    keys = (("harm", "tau", "h_sat"), ("harm_presence", "presence_tau", "presence_h_sat"))
    keys += (("harm_window", "window_tau", "window_h_sat"), ("harm_text", "text_tau", "text_h_sat"))
    guided = {}
    for key, tau_name, sat_name in keys:
        scores = [im.info.get(key) for im in images]
        if any(s is None or not math.isfinite(s) for s in scores):
            continue
        on, off = scores[:n_harm], scores[n_harm:]
        tau, h_sat = thresholds(on, off, fpr[key], sat_quantile, ramp_floor)
        result[key] = {
            "auroc": auroc(on, off),
            "harmful": {"median": float(np.median(on)), "min": float(np.min(on)), "max": float(np.max(on))},
            "clean": {"median": float(np.median(off)), "max": float(np.max(off))},
            "scores": {"harmful": [round(x, 6) for x in on], "clean": [round(x, 6) for x in off]},
            "guided_share": {
                "harmful": float(np.mean(np.asarray(on) > tau)),
                "clean": float(np.mean(np.asarray(off) > tau)),
            },
        }
        if key != "harm_text":
            guided[key] = np.asarray(scores) > tau
        options_out[tau_name], options_out[sat_name] = round(tau, 5), round(h_sat, 5)
    if len(guided) > 1:  # the noise judge with presence or windows: guided when any passes (Eq. c', c''')
        either = np.logical_or.reduce(list(guided.values()))
        result["guided_share"] = {
            "harmful": float(either[:n_harm].mean()),
            "clean": float(either[n_harm:].mean()),
        }
    get_guard(guard, concept=concept, **{**(options or {}), **options_out})  # the options make a valid guard
    result["options"] = options_out
    return result


def write_guard_config(result: dict[str, Any], out: str | Path) -> Path:
    """The calibrated options as a guard config YAML (``--guard-config``), the measurement in comments."""
    import yaml

    from safegen.files import staged

    split, fpr = result.get("budget_split"), result["target_fpr"]
    taus = f"tau at the clean {1 - fpr:.3g} quantile"
    share = result.get("presence_share")
    if split and len(split) == 2 and share is not None:
        taus = (
            f"tau and presence_tau at the clean {1 - (1 - share) * fpr:.4g} and {1 - share * fpr:.4g} "
            f"quantiles (presence share {share})"
        )
    elif split:
        names = {"harm": "tau", "harm_presence": "presence_tau", "harm_window": "window_tau"}
        shares = ", ".join(f"{names[k]} {1 - v * fpr:.4g}" for k, v in split.items())
        taus = f"taus at the clean quantiles {shares} (the clean budget's split)"
    lines = [
        f"# safegen calibrate: guard {result['guard']}, concept {result['concept']}, model {result['model']}",
        f"# judge {result['judge']}: {result['n_prompts']} concept and {result['n_clean']} clean prompts x "
        f"{result['seeds']} seeds, {result['steps']} steps; {taus}, h_sat at the concept prompts' "
        f"{result.get('sat_quantile', 0.1):.2f} quantile",
    ]
    if result.get("statistic"):
        presence = " with presence (Eq. b4, c')" if result["options"].get("presence") else ""
        lines.append(f"# judged statistic: {result['statistic']}{presence} (safegen/guards/judge.py)")
    for key in ("harm", "harm_presence", "harm_window", "harm_text"):
        if key in result:
            m = result[key]
            lines.append(
                f"# {key}: AUROC {m['auroc']:.3f}; guided: concept {m['guided_share']['harmful']:.2f}, "
                f"clean {m['guided_share']['clean']:.2f}"
            )
    if "guided_share" in result:
        share = result["guided_share"]
        lines.append(f"# either judge: guided concept {share['harmful']:.2f}, clean {share['clean']:.2f}")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(result["options"], sort_keys=False)
    path = Path(out).expanduser()
    with staged(path) as tmp:
        tmp.write_text(text)
    return path
