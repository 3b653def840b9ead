"""What the fine-tuning recipes share: options, targets and prompts, stage folders.

SC-DPO (:mod:`safegen.methods.scdpo`) and VCE (:mod:`safegen.methods.vce`) are each one recipe class,
``setup()`` / ``train()`` / ``save()``, that *composes* the pieces below and those of
:mod:`safegen.methods.training`; nothing here knows a method's loss or data:

- :class:`OptionSet`: a method's settings as a dataclass, every field an :func:`option` with its stage,
  range or choices and help text, layered ``defaults < --config FILE.yaml < --set KEY=VALUE < --steps``
  and checked strictly (one-line :class:`~safegen.errors.SafegenError`, never silently corrected);
- :func:`resolve_target` and :func:`concept_prompts`: which concept, and the prompts that name it and
  those that do not (the mini world's captions, or a real concept's examples and files);
- :class:`StageContext` and :func:`reusable_stage`: what a data stage (pairs, cost model) is given, and
  when its folder from an earlier run may be reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from safegen.errors import SafegenError, unknown

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)
NOISY_KEYS = frozenset({"steps", "save_every", "keep_checkpoints", "log_every"})  # may change on --resume
# bundled mini models -> what to point --model at instead, for a concept outside the mini world
MINI_MODELS = {
    "mini": "a real Stable Diffusion: a hub id (e.g. --model CompVis/stable-diffusion-v1-4) or a local "
    "diffusers folder",
    "mini-ar": "a real autoregressive model: a LlamaGen folder (t2i_XL_stage1_256.pt + vq_ds16_t2i.pt) or "
    "a Janus hub id or folder (e.g. --model deepseek-community/Janus-Pro-1B)",
}


# --------------------------------------------------------------------------- options
def option(default: Any, stage: str, *, low=None, high=None, choices=None, help: str = "") -> Any:  # noqa: A002
    """A config field with its stage, valid range or choices, and help text."""
    meta = {"stage": stage, "low": low, "high": high, "choices": choices, "help": help}
    return field(default=default, metadata=meta)


class OptionSet:
    """Behaviour shared by the methods' option dataclasses (``label`` names the method in errors)."""

    label: ClassVar[str] = "method"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f, getattr(self, f.name), self.label))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, *stages: str) -> str:
        """A short hash of the options of the given stages (what a stage's output depends on)."""
        keys = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["stage"] in stages
        }
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, sets: Iterable[str] = (), steps: int | None = None
    ) -> Any:
        """Defaults < YAML file (a mapping of option names) < ``--set KEY=VALUE`` < ``--steps``.

        Raises:
            SafegenError: unreadable or invalid YAML, unknown option, wrong type, out of range.
        """
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                raw = yaml.safe_load(Path(config_file).read_text())
            except OSError as exc:
                raise SafegenError(f"Cannot read config {config_file}: {exc.strerror or exc}") from None
            except yaml.YAMLError:
                raise SafegenError(f"{config_file}: not valid YAML.") from None
            if raw is not None and not isinstance(raw, dict):
                raise SafegenError(
                    f"{config_file}: the {cls.label} config must be a mapping of option names to values."
                )
            values.update(raw or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        for item in sets:
            key, sep, text = (part.strip() for part in item.partition("="))
            if not sep or not key:
                raise SafegenError(f"--set takes KEY=VALUE, got {item!r}.")
            values[key] = parse_text(names[key], text) if key in names else text
        if steps is not None:
            values["steps"] = steps
        for key in values:
            if key not in names:
                raise unknown(f"{cls.label} option", str(key), names)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per option (name, stage, default, allowed, help) for documentation and ``--options``."""
        rows = []
        for f in dataclasses.fields(cls):
            m = f.metadata
            allowed = ", ".join(m["choices"]) if m["choices"] else ""
            if not allowed and m["low"] is not None:
                allowed = f"{m['low']}..{m['high']}"
            rows.append(
                {
                    "name": f.name,
                    "stage": m["stage"],
                    "default": f.default,
                    "allowed": allowed,
                    "help": m["help"],
                }
            )
        return rows


def check_value(f: dataclasses.Field, value: Any, label: str) -> Any:
    """Check one option's type and range (ints are accepted for floats); raise a one-line SafegenError."""
    kind, meta, where = type(f.default), f.metadata, f"{label} option {f.name}"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SafegenError(f"{where} must be of type {kind.__name__}, got {value!r}.")
    if kind is float and not math.isfinite(value):
        raise SafegenError(f"{where} must be a finite number, got {value!r}.")
    if meta["choices"] and value not in meta["choices"]:
        raise SafegenError(f"{where} must be one of {', '.join(meta['choices'])}, got {value!r}.")
    low, high = meta["low"], meta["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise SafegenError(f"{where} must be in {low}..{high}, got {value!r}.")
    return value


def parse_text(f: dataclasses.Field, text: str) -> Any:
    """A ``--set`` value as the option's type (left as text when it does not parse; checked later)."""
    kind = type(f.default)
    if kind is bool and text.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
        return text.lower() in {"true", "yes", "on", "1"}
    try:
        return int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        return text


# --------------------------------------------------------------------------- targets and prompts
def resolve_target(concept: str, model: str) -> tuple[Any, tuple[str, str] | None]:
    """The concept and, for a mini concept, its (axis, value); other concepts on a mini model are an error."""
    from safegen.concepts import get_concept
    from safegen.mini.world import AXES, World

    values = [v for a in AXES for v in World.load().values[a]]
    if model in MINI_MODELS and concept not in values:
        raise SafegenError(
            f"The mini world has no concept '{concept}'. Mini concepts: {', '.join(values)}. To erase "
            f"'{concept}', point --model at {MINI_MODELS[model]}."
        )
    found = get_concept(concept)
    return found, ((found.axis, found.detector["mini"]["value"]) if found.axis else None)


def concept_prompts(
    concept: Any,
    mini: tuple[str, str] | None,
    *,
    seed: int,
    n_harmful: int,
    n_clean: int,
    prompts_file: str = "",
    clean_prompts_file: str = "",
) -> tuple[list[str], list[str]]:
    """(harmful, clean) prompts: canonical mini-world captions, or the concept's examples and files.

    Mini world: harmful prompts name the concept by its keyword only (its synonyms stay held out for
    ``bench mini``); clean prompts hold any other value of every axis. Real concepts: the registry's
    examples plus ``prompts_file``; clean prompts from ``clean_prompts_file``, else the harmful ones
    rewritten without the concept.
    """
    rng = np.random.default_rng(seed)
    if mini is not None:
        harmful, clean = mini_prompt_pools(mini)
        pick = lambda pool, n: [pool[i] for i in rng.choice(len(pool), n, replace=n > len(pool))]  # noqa: E731
        return pick(harmful, n_harmful), pick(clean, n_clean)
    from safegen.concepts import rewrite

    harmful = list(concept.examples) + read_lines(prompts_file)
    if not harmful:
        raise SafegenError(f"Concept '{concept.name}' has no example prompts; pass --set prompts_file=FILE.")
    harmful = harmful[:n_harmful]
    clean = read_lines(clean_prompts_file) or list(dict.fromkeys(rewrite(p, concept) for p in harmful))
    return harmful, clean[:n_clean]


def mini_prompt_pools(mini: tuple[str, str]) -> tuple[list[str], list[str]]:
    """Every canonical mini-world caption (each template, each combination of values), split into the
    ones whose value on axis ``mini[0]`` is ``mini[1]`` and the rest."""
    from safegen.mini.world import AXES, World

    world = World.load()
    axis, value = mini
    combos = [dict(zip(AXES, c, strict=True)) for c in itertools.product(*(world.values[a] for a in AXES))]
    texts = [(t.format(**c), c[axis] == value) for c in combos for t in world.templates]
    return [t for t, has in texts if has], [t for t, has in texts if not has]


def read_lines(path: str) -> list[str]:
    """The non-empty, non-comment lines of a prompts file ([] for an empty path)."""
    if not path:
        return []
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as exc:
        raise SafegenError(f"Cannot read prompts file {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# --------------------------------------------------------------------------- stages
@dataclass
class StageContext:
    """What a data stage needs: settings, concept, base model and this process's place among the processes."""

    cfg: Any  # the method's OptionSet
    concept: Any  # safegen.concepts.Concept
    mini: tuple[str, str] | None  # (axis, value) on the mini world, None for real models
    model: Any  # LoadedModel or ARModel
    rank: int = 0
    world_size: int = 1
    progress: Progress | None = None

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None and self.rank == 0:
            self.progress(stage, done, total)


def read_manifest(folder: Path, what: str) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise SafegenError(f"{folder} holds no finished {what} (no manifest.json).")
    return json.loads(path.read_text())


def reusable_stage(folder: Path, given: bool, what: str, concept: str, fingerprint: str) -> dict | None:
    """A finished stage folder's manifest, checked against this run, or None when it must be built.

    ``given``: the user named the folder (``cost_dir=``, ``pairs_dir=``): it must exist and be for the
    same concept, but may have been built with other settings. Otherwise (the run's own folder, on
    ``--resume``) its fingerprint must match.
    """
    if not (folder / "manifest.json").is_file():
        if given:
            raise SafegenError(f"{folder} holds no finished {what} (no manifest.json).")
        return None
    record = read_manifest(folder, what)
    if record.get("concept") != concept:
        raise SafegenError(f"The {what} in {folder} is for '{record.get('concept')}', not '{concept}'.")
    if not given and record.get("fingerprint") != fingerprint:
        raise SafegenError(f"The {what} in {folder} was built with other settings; use a new --out.")
    return record
