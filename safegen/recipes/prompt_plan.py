"""The prompts an erasure run trains on, decided and accounted for before any model is loaded.

A run's prompts come from the mini world's captions (a mini concept) or from what the user names
(``--prompts``, ``--clean-prompts``: TXT, CSV, JSONL, I2P with a category filter, an attack set); without
``--prompts`` a real concept's registry examples are used. :func:`plan_prompts` reads them once and
returns a :class:`PromptPlan`:

- ``harmful``: the training prompts that show the concept; ``check``: prompts of the same source held out
  for the safety check, never trained on; ``clean``: prompts without the concept (retain / clean pairs);
- ``counterparts``: for each harmful prompt, how its safe side is made. ``rewrite``: the registry's keyword
  rewrite (a different text); ``negative``: the same text and seed, with the concept's ``unsafe_text`` as a
  negative condition at sampling time (a negative prompt in a diffusion model, the CFG null condition in
  an AR model); ``anchor`` (with ``counterpart_anchor``): ``negative`` with the concept's ``safe_text``
  appended to the text as well (``"a heart by mira voss, solid"``, negative ``striped``), for a prompt
  whose other words draw the concept whatever the negative condition says. ``counterpart=auto`` rewrites
  prompts that name the concept and uses the negative condition for the others (most real prompts: of
  I2P's 931 sexual prompts, 4 name nudity by a keyword);
- ``report``: how many prompts were read, used, held out and dropped, and why, for the run's manifest.

Refused with a one-line error: fewer usable prompts than ``min_prompts``, clean prompts that are all
harmful ones, a check set that would overlap training. Fewer prompts than asked for is said in the report's
``notes`` (and printed by ``safegen erase``), never silent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safegen.choices import PROMPT_SETS
from safegen.errors import SafegenError
from safegen.options import option

COUNTERPARTS = ("auto", "rewrite", "negative")
MODES = ("rewrite", "negative", "anchor")  # how a counterpart was made (the plan's report counts each)
ANCHOR_HELP = "a negative counterpart also appends the concept's safe_text to the prompt (', solid')"


@dataclass
class PromptOptions:
    """Where an erasure run's prompts come from (shared by SC-DPO and VCE; stage ``prompts``)."""

    prompts: str = option(
        "", "prompts", help="prompts showing the concept: a file, or an I2P / attack-set file (real concepts)"
    )
    prompt_set: str = option("file", "prompts", choices=PROMPT_SETS, help="how to read --prompts")
    prompt_column: str = option("", "prompts", help="CSV / JSONL column of --prompts (default: prompt)")
    prompt_category: str = option(
        "", "prompts", help="prompt_set=i2p: categories to keep, -name to leave out (e.g. sexual)"
    )
    clean_prompts: str = option("", "prompts", help="prompts without the concept (default: keyword rewrites)")
    clean_prompt_set: str = option("file", "prompts", choices=PROMPT_SETS, help="how to read clean_prompts")
    clean_prompt_column: str = option("", "prompts", help="CSV / JSONL column of clean_prompts")
    clean_prompt_category: str = option("", "prompts", help="clean_prompt_set=i2p: categories (e.g. -sexual)")
    implicit_share: float = option(
        0.25,
        "prompts",
        low=0.0,
        high=0.9,
        help="mini: share of harmful prompts implying the concept by a trigger of the examples split",
    )
    unprompted_share: float = option(
        0.25,
        "prompts",
        low=0.0,
        high=0.9,
        help="mini: share of harmful prompts leaving the concept's axis out (negative counterpart)",
    )
    min_prompts: int = option(
        32, "prompts", low=1, high=1_000_000, help="refuse a run with fewer usable prompts (each set)"
    )
    counterpart: str = option(
        "auto",
        "prompts",
        choices=COUNTERPARTS,
        help="safe side of a pair: rewrite (keywords), negative (same prompt, concept as negative "
        "condition), auto (rewrite when a keyword is named, else negative)",
    )
    counterpart_anchor: bool = option(False, "prompts", help=ANCHOR_HELP)


@dataclass(frozen=True)
class Counterpart:
    """The safe side of a harmful prompt: a text to sample, and a negative condition (or None)."""

    mode: str  # one of MODES
    text: str
    negative: str | None = None


@dataclass
class PromptPlan:
    harmful: list[str]
    clean: list[str]
    check: list[str]
    counterparts: list[Counterpart]
    report: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """A hash of every prompt and counterpart (part of a stage's fingerprint: same files, same data)."""
        body = [
            self.harmful,
            self.clean,
            self.check,
            [(c.mode, c.text, c.negative) for c in self.counterparts],
        ]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def counterpart_of(prompt: str, concept: Any, mode: str, anchor: bool = False) -> Counterpart | None:
    """How the safe side of ``prompt`` is made under ``mode`` (None: ``rewrite`` and no keyword); with
    ``anchor``, a negative counterpart also appends the concept's ``safe_text``."""
    from safegen.concepts import mentions, rewrite

    if mode != "negative" and mentions(prompt, concept):
        return Counterpart("rewrite", rewrite(prompt, concept))
    if mode == "rewrite":
        return None
    return negative_counterpart(prompt, concept, concept.safe_text if anchor else "")


def negative_counterpart(text: str, concept: Any, safe_text: str) -> Counterpart:
    """``text`` sampled with the concept's ``unsafe_text`` as its negative condition; a non-empty
    ``safe_text`` is appended to it (mode ``anchor``)."""
    if safe_text:
        return Counterpart("anchor", f"{text}, {safe_text}", concept.unsafe_text)
    return Counterpart("negative", text, concept.unsafe_text)


def _read(cfg: Any, prefix: str, flag: str) -> tuple[list[str] | None, dict[str, Any]]:
    """The prompts of the ``<prefix>prompts`` source (None when not given) and where they came from."""
    from safegen.promptsets import read_prompt_source

    path = getattr(cfg, f"{prefix}prompts")
    column = getattr(cfg, f"{prefix}prompt_column") or None
    kind, category = getattr(cfg, f"{prefix}prompt_set"), getattr(cfg, f"{prefix}prompt_category")
    if not path and kind == "file":
        if column or category:
            raise SafegenError(f"{prefix}prompt_column / {prefix}prompt_category need {flag} FILE.")
        return None, {}
    return read_prompt_source(path or None, kind, column, category)


def _dedupe(prompts: list[str], dropped: dict[str, int]) -> list[str]:
    out = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if len(out) < len(prompts):
        dropped["duplicate or empty"] = dropped.get("duplicate or empty", 0) + len(prompts) - len(out)
    return out


def plan_prompts(
    cfg: Any, concept: Any, mini: tuple[tuple[str, str], ...] | None, holdout: int = 0
) -> PromptPlan:
    """The run's prompts (see the module docstring).

    Args:
        cfg: the recipe's options (:class:`PromptOptions` fields, ``seed``, ``n_harmful_prompts``,
            ``n_clean_prompts``).
        concept: the Concept. mini: the (axis, value) of each of its parts on the mini world, else None.
        holdout: harmful prompts to hold out for the safety check (0: none).

    Raises:
        SafegenError: see the module docstring; also an unreadable file or unknown column.
    """
    if mini is not None:
        return _mini_plan(cfg, concept, mini, holdout)
    rng = np.random.default_rng(cfg.seed + 31)
    given, source = _read(cfg, "", "--prompts")
    read = list(given) if given is not None else list(concept.examples)
    source = source or {"set": "registry examples", "concept": concept.name}
    dropped: dict[str, int] = {}
    pool = _dedupe(read, dropped)
    pairs = [(p, counterpart_of(p, concept, cfg.counterpart, cfg.counterpart_anchor)) for p in pool]
    if any(c is None for _, c in pairs):
        dropped["no keyword to rewrite (counterpart=rewrite)"] = sum(c is None for _, c in pairs)
    pairs = [(p, c) for p, c in pairs if c is not None]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    where = "--prompts" if given is not None else f"the registry's examples of '{concept.name}'"
    if len(pairs) - holdout < cfg.min_prompts:
        held_text = f"; {holdout} are held out for the safety check" if holdout else ""
        raise SafegenError(
            f"Only {len(pairs)} usable prompts from {where} (read {len(read)}, dropped "
            f"{sum(dropped.values())}){held_text}; min_prompts is {cfg.min_prompts}: give more with "
            "--prompts, or lower --set min_prompts" + (" / holdout_prompts." if holdout else ".")
        )
    held, pairs = pairs[:holdout], pairs[holdout:]
    used = pairs[: cfg.n_harmful_prompts]
    harmful = [p for p, _ in used]
    clean, clean_report = _clean(cfg, concept, harmful, [p for p, _ in held], pool)
    notes = []
    if len(used) < cfg.n_harmful_prompts:
        notes.append(f"{len(used)} harmful prompts, fewer than n_harmful_prompts={cfg.n_harmful_prompts}")
    if len(clean) < cfg.n_clean_prompts:
        notes.append(f"{len(clean)} clean prompts, fewer than n_clean_prompts={cfg.n_clean_prompts}")
    modes = [c.mode for _, c in used]
    report = {
        "source": source,
        "read": len(read),
        "used": len(used),
        "held_out": len(held),
        "dropped": dropped,
        "unused": len(pairs) - len(used),
        "counterparts": {m: modes.count(m) for m in MODES},
        "clean": clean_report,
        "notes": notes,
    }
    return PromptPlan(harmful, clean, [p for p, _ in held], [c for _, c in used], report)


def _clean(
    cfg: Any, concept: Any, harmful: list[str], held: list[str], pool: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """The clean prompts: ``--clean-prompts`` less any harmful or concept-naming one, else the keyword
    rewrites of the harmful prompts that name the concept."""
    from safegen.concepts import mentions, rewrite

    if cfg.n_clean_prompts == 0:
        return [], {"read": 0, "used": 0, "dropped": {}}
    given, source = _read(cfg, "clean_", "--clean-prompts")
    dropped: dict[str, int] = {}
    if given is not None:
        read = list(given)
        clean = _dedupe(read, dropped)
        harmful_set = set(pool)
        overlap = [p for p in clean if p in harmful_set]
        if overlap and len(overlap) == len(clean):
            raise SafegenError("The clean prompts are the harmful prompts; give prompts without the concept.")
        naming = [p for p in clean if p not in harmful_set and mentions(p, concept)]
        for reason, bad in (("also a harmful prompt", overlap), (f"names '{concept.name}'", naming)):
            if bad:
                dropped[reason] = len(bad)
        clean = [p for p in clean if p not in harmful_set and not mentions(p, concept)]
        where = "--clean-prompts"
    else:
        read, source = harmful, {"set": "keyword rewrites of the harmful prompts"}
        rewrites = [rewrite(p, concept) for p in harmful if mentions(p, concept)]
        clean = _dedupe(rewrites, dropped)
        if len(rewrites) < len(harmful):
            dropped["no keyword to rewrite"] = len(harmful) - len(rewrites)
        where = (
            f"keyword rewrites ({len(rewrites)} of {len(harmful)} harmful prompts name '{concept.name}'); "
            "give prompts without the concept with --clean-prompts FILE"
        )
    clean = clean[: cfg.n_clean_prompts]
    if len(clean) < min(cfg.min_prompts, cfg.n_clean_prompts):
        raise SafegenError(
            f"Only {len(clean)} usable clean prompts from {where}; min_prompts is {cfg.min_prompts} "
            "(or --set n_clean_prompts=0 to train without them)."
        )
    return clean, {"source": source, "read": len(read), "used": len(clean), "dropped": dropped}


def _mini_plan(cfg: Any, concept: Any, mini: tuple[tuple[str, str], ...], holdout: int) -> PromptPlan:
    """Mini world: the harmful prompts mix canonical captions naming the concept by its keyword (synonyms
    stay held out for ``bench mini``), captions implying it by a trigger of the world's ``examples`` split
    (``implicit_share``; the held-out triggers are never used) and captions leaving its axis out
    (``unprompted_share``, less the benchmark's own: the base model draws the concept there by its
    prior); the last two have no keyword, so their counterpart is the negative condition. Clean captions
    show none of the concept's parts; the check set (when ``holdout``) is every named caption never
    sampled. Several concepts (``red,circle``): each part gets an equal share of the harmful prompts."""
    from safegen.concepts import concept_parts, mentions

    if cfg.prompts or cfg.clean_prompts:
        raise SafegenError(
            f"'{concept.name}' is a mini-world concept: its prompts are the world's captions; --prompts and "
            "--clean-prompts are for concepts of real models."
        )
    if cfg.implicit_share + cfg.unprompted_share > 0.9:
        raise SafegenError(
            f"implicit_share + unprompted_share must be at most 0.9, got "
            f"{cfg.implicit_share + cfg.unprompted_share:g} (some prompts must name the concept)."
        )
    rng = np.random.default_rng(cfg.seed + 31)
    parts = concept_parts(concept)
    shares = [
        cfg.n_harmful_prompts // len(parts) + (i < cfg.n_harmful_prompts % len(parts))
        for i in range(len(parts))
    ]
    harmful: list[str] = []
    keyword_free: dict[str, Any] = {}  # implicit and unprompted captions (free of their part's keyword): part
    kinds, notes, clean_pool, read = {"named": 0, "implicit": 0, "unprompted": 0}, [], None, 0
    rest: dict[str, list[str]] = {}  # the captions of each kind never sampled: the check's pool
    for part, target, n in zip(parts, mini, shares, strict=True):
        pools = _part_pools(part, target)
        read += sum(len(p) for p in pools.values())
        own_clean = pools.pop("clean")
        clean_pool = own_clean if clean_pool is None else clean_pool  # the first part's; filtered below
        counts = _kind_counts(cfg, n, pools, part.name, notes)
        picked = {kind: _pick(rng, pools[kind], k) for kind, k in counts.items()}
        harmful += [p for kind in ("named", "implicit", "unprompted") for p in picked[kind]]
        keyword_free.update(dict.fromkeys(picked["implicit"] + picked["unprompted"], part))
        for kind, k in counts.items():
            kinds[kind] += k
            if kind == "named" or getattr(cfg, "check_kinds", "named") == "all":
                rest[kind] = rest.get(kind, []) + pools[kind]
    if len(parts) > 1:  # a clean caption shows no part
        clean_pool = [p for p in clean_pool if not mentions(p, concept)]
    clean = _pick(rng, clean_pool, cfg.n_clean_prompts)
    seen = set(harmful)  # a caption is checked once, never one trained on (parts may share captions)
    for kind, pool in rest.items():
        rest[kind] = [p for p in dict.fromkeys(pool) if p not in seen]
        seen.update(rest[kind])
    check = _check_order(rest, kinds, np.random.default_rng(cfg.seed + 577)) if holdout else []
    counterparts = [_mini_counterpart(p, concept, cfg, keyword_free.get(p)) for p in harmful]
    modes = [c.mode for c in counterparts]
    report = {
        "source": {"set": "mini world captions", "concept": concept.name},
        "read": read,
        "used": len(harmful),
        "kinds": kinds,
        "held_out": len(check),
        "dropped": {},
        "unused": sum(len(pool) for pool in rest.values()) - len(check),
        "counterparts": {m: modes.count(m) for m in MODES},
        "clean": {"read": len(clean_pool), "used": len(clean), "dropped": {}},
        "notes": notes,
    }
    return PromptPlan(harmful, clean, check, counterparts, report)


def _check_order(rest: dict[str, list[str]], kinds: dict[str, int], rng: np.random.Generator) -> list[str]:
    """The check set: each kind's unsampled captions shuffled, interleaved in the shares the run trains on
    (so the check's first ``check_prompts`` hold every kind); a kind's leftovers at the end."""
    keyed = []
    for kind, pool in rest.items():
        share = kinds[kind] / max(1, sum(kinds[k] for k in rest))
        order = rng.permutation(len(pool))
        keyed += [((j + 0.5) / share if share else float("inf"), kind, pool[i]) for j, i in enumerate(order)]
    return [p for *_, p in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _mini_counterpart(prompt: str, concept: Any, cfg: Any, part: Any) -> Counterpart:
    """A keyword-free caption of ``part`` (implicit, unprompted; None: a named one) takes the concept as its
    negative condition (any other part it names rewritten: ``a figure, red`` for circle in ``red,circle``;
    with ``counterpart_anchor``, ``part``'s safe text appended); a named one, ``counterpart``'s."""
    from safegen.concepts import rewrite

    if part is not None and cfg.counterpart != "rewrite":
        anchor = part.safe_text if cfg.counterpart_anchor else ""
        return negative_counterpart(rewrite(prompt, concept), concept, anchor)
    return counterpart_of(prompt, concept, cfg.counterpart) or Counterpart("rewrite", prompt)


def _part_pools(part: Any, target: tuple[str, str]) -> dict[str, list[str]]:
    """One concept's caption pools: named (its keyword), implicit (example-split triggers), unprompted
    (its axis left out) and clean (any other value)."""
    from safegen.bench.mini_prompts import target_for, trigger_captions, unprompted_captions
    from safegen.mini.world import World
    from safegen.recipes.prompts import mini_prompt_pools

    named, clean = mini_prompt_pools(target, part.detector["mini"].get("artist"))
    world, found = World.load(), target_for(part)
    return {
        "named": named,
        "implicit": trigger_captions(world, found),
        "unprompted": unprompted_captions(world, found.axis),
        "clean": clean,
    }


def _kind_counts(
    cfg: Any, n: int, pools: dict[str, list[str]], name: str, notes: list[str]
) -> dict[str, int]:
    n_implicit = round(n * cfg.implicit_share) if pools["implicit"] else 0
    if cfg.implicit_share and not pools["implicit"]:
        notes.append(f"'{name}' has no trigger of the examples split: its implicit share is named")
    n_unprompted = round(n * cfg.unprompted_share)
    return {"named": n - n_implicit - n_unprompted, "implicit": n_implicit, "unprompted": n_unprompted}


def _pick(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), n, replace=n > len(pool))] if n else []
