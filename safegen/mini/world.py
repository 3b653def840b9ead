"""The mini world: a procedural scene renderer, its captions and the ways a concept reaches an image.

Scenes are 64x64 images of one or two objects. Each object has a kind (circle, square, ...), a colour
and a texture. The vocabulary lives in ``safegen/data/mini_world.yaml``; a concept reaches an image the
four ways it does on real models:

- **named**: its word, or a synonym or misspelling (held out from methods);
- **artist**: a texture invoked by an invented artist's name (or a held-out alias), the texture word
  left out, as real prompts invoke a style by naming a painter;
- **association**: a phrase that implies a colour or an object ("the colour of a ripe tomato");
- **unprompted**: a caption leaves an axis out and the renderer draws it from a skewed prior tied to
  the other values (hearts mostly red), as real models draw unasked-for content.

A :class:`Plan` says, per object, which artist invokes its texture and which axis the caption leaves out;
training sets store it with each image so captions re-drawn with fresh words stay true to the pixels.

    >>> world = World.load()
    >>> thing, plan = world.sample_planned(np.random.default_rng(0))
    >>> image = world.render(Scene((thing,), (plan,)), np.random.default_rng(0))   # (64, 64, 3) uint8
    >>> world.caption(Scene((thing,), (plan,)), np.random.default_rng(0))
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

from safegen.mini.render import SIZE, render_scene

__all__ = ["AXES", "SIZE", "SLOTS", "Artist", "Plan", "Scene", "Thing", "World"]

AXES = ("object", "color", "texture")
SLOTS = ("object", "color", "texture", "artist", "color_phrase", "object_phrase")
FIGURE = "figure"  # the noun of a caption that leaves the object out


@dataclass(frozen=True)
class Thing:
    """One object of a scene: its value on each axis."""

    object: str
    color: str
    texture: str

    def value(self, axis: str) -> str:
        return getattr(self, axis)


@dataclass(frozen=True)
class Plan:
    """How an object's caption reaches its values: through an artist, and/or leaving one axis out."""

    artist: str | None = None  # the artist whose signature is the object's texture
    omit: str | None = None  # the axis the caption does not name ("object", "color" or "texture")


@dataclass(frozen=True)
class Scene:
    """One or two things, left to right, each with its caption plan (empty: every axis named)."""

    things: tuple[Thing, ...]
    plans: tuple[Plan, ...] = ()

    def plan(self, i: int) -> Plan:
        return self.plans[i] if self.plans else Plan()


@dataclass(frozen=True)
class Artist:
    """An invented artist: a signature texture, an optional favoured colour and held-out aliases."""

    name: str
    texture: str
    color: str | None
    split: str  # "examples" (may appear in example prompts) or "heldout" (benchmark only)
    aliases: tuple[str, ...]

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")


@dataclass(frozen=True)
class World:
    """The vocabulary of the mini world (read from ``mini_world.yaml``)."""

    values: dict[str, tuple[str, ...]]  # axis -> canonical values
    synonyms: dict[str, dict[str, tuple[str, ...]]]  # axis -> value -> synonyms
    misspellings: dict[str, dict[str, tuple[str, ...]]]
    rgb: dict[str, tuple[int, int, int]]
    all_templates: tuple[str, ...]
    pair_templates: tuple[str, ...]
    associations: dict[str, dict[str, dict[str, tuple[str, ...]]]] = field(default_factory=dict)
    artists: tuple[Artist, ...] = ()
    priors: dict[str, Any] = field(default_factory=dict)
    mix: dict[str, float] = field(default_factory=dict)

    @staticmethod
    @lru_cache(maxsize=1)
    def load() -> World:
        text = resources.files("safegen.data").joinpath("mini_world.yaml").read_text()
        raw = yaml.safe_load(text)
        values, syn, mis, assoc = {}, {}, {}, {}
        for axis in AXES:
            entries = raw["axes"][axis]
            values[axis] = tuple(entries)
            syn[axis] = {v: tuple(e.get("synonyms", ())) for v, e in entries.items()}
            mis[axis] = {v: tuple(e.get("misspellings", ())) for v, e in entries.items()}
            assoc[axis] = {
                v: {k: tuple(e["associations"][k]) for k in ("examples", "heldout")}
                for v, e in entries.items()
                if "associations" in e
            }
        rgb = {v: tuple(e["rgb"]) for v, e in raw["axes"]["color"].items()}
        artists = tuple(
            Artist(a["name"], a["texture"], a.get("color"), a["split"], tuple(a["aliases"]))
            for a in raw["artists"]
        )
        return World(
            values, syn, mis, rgb, tuple(raw["templates"]), tuple(raw["pair_templates"]),
            assoc, artists, raw["priors"], raw["caption_mix"],
        )  # fmt: skip

    # ----------------------------------------------------------------- vocabulary
    def words(self, axis: str, value: str, kind: str = "all") -> tuple[str, ...]:
        """Words naming ``value``: ``canonical``, ``synonyms`` (synonyms + misspellings) or ``all``."""
        alt = self.synonyms[axis][value] + self.misspellings[axis][value]
        if kind == "canonical":
            return (value,)
        if kind == "synonyms":
            return alt
        return (value, *alt)

    def axis_of(self, value: str) -> str:
        for axis in AXES:
            if value in self.values[axis]:
                return axis
        raise KeyError(value)

    def artist(self, name: str) -> Artist:
        """The artist called ``name`` (full name or slug)."""
        for a in self.artists:
            if name in (a.name, a.slug):
                return a
        raise KeyError(name)

    def artists_with(self, texture: str) -> tuple[Artist, ...]:
        return tuple(a for a in self.artists if a.texture == texture)

    def phrases(self, axis: str, value: str, split: str = "all") -> tuple[str, ...]:
        """Association phrases implying ``value``: ``examples``, ``heldout`` or ``all``."""
        parts = self.associations.get(axis, {}).get(value, {})
        if split == "all":
            return parts.get("examples", ()) + parts.get("heldout", ())
        return parts.get(split, ())

    @property
    def templates(self) -> tuple[str, ...]:
        """The templates that name every axis by its word (the benchmark's grid)."""
        return self.templates_for({"object", "color", "texture"})

    def templates_for(self, slots: set[str] | frozenset[str]) -> tuple[str, ...]:
        """The caption templates holding exactly ``slots``."""
        return tuple(t for t in self.all_templates if _slots(t) == set(slots))

    # ----------------------------------------------------------------- priors and sampling
    def prior(self, axis: str, given: Thing | dict[str, str], artist: str | None = None) -> dict[str, float]:
        """The distribution of ``axis`` when a caption leaves it out, given the other values."""
        values = self.values[axis]
        spec = self.priors[axis]
        named = given.value(spec["given"]) if isinstance(given, Thing) else given[spec["given"]]
        favourite = spec["favourite"][named]
        if axis == "color" and artist is not None and self.artist(artist).color:
            favourite = self.artist(artist).color
        strength = float(self.priors["strength"])
        rest = (1 - strength) / (len(values) - 1)
        return {v: strength if v == favourite else rest for v in values}

    def sample_thing(self, rng: np.random.Generator) -> Thing:
        """A thing with every value drawn uniformly (every axis named)."""
        return Thing(*(str(rng.choice(self.values[a])) for a in AXES))

    def sample_scene(self, rng: np.random.Generator, n_objects: int = 1) -> Scene:
        return Scene(tuple(self.sample_thing(rng) for _ in range(n_objects)))

    def sample_planned(self, rng: np.random.Generator) -> tuple[Thing, Plan]:
        """A thing and its caption plan from the training mix: named values uniform, left-out ones
        drawn from :meth:`prior`."""
        artist = (
            self.artists[int(rng.integers(len(self.artists)))] if rng.random() < self.mix["artist"] else None
        )
        omit = None
        if rng.random() < self.mix["omit"]:
            choices = ["object", "color"] + ([] if artist else ["texture"])
            omit = choices[int(rng.integers(len(choices)))]
        values = {a: str(rng.choice(self.values[a])) for a in AXES}
        if artist:
            values["texture"] = artist.texture
        if omit:
            dist = self.prior(omit, values, artist.name if artist else None)
            values[omit] = str(rng.choice(list(dist), p=list(dist.values())))
        return Thing(**values), Plan(artist.name if artist else None, omit)

    def sample_planned_scene(self, rng: np.random.Generator, n_objects: int = 1) -> Scene:
        parts = [self.sample_planned(rng) for _ in range(n_objects)]
        return Scene(tuple(t for t, _ in parts), tuple(p for _, p in parts))

    # ----------------------------------------------------------------- captions
    def compose(
        self, words: dict[str, str], template: int | None = None, rng: np.random.Generator | None = None
    ) -> str:
        """Fill a template holding exactly the slots of ``words`` (index ``template``, else drawn)."""
        options = self.templates_for(set(words))
        if not options:
            raise KeyError(f"no caption template holds exactly {sorted(words)}")
        if template is None:
            template = int(rng.integers(len(options))) if rng is not None else 0
        return options[template % len(options)].format(**words)

    def describe(
        self,
        thing: Thing,
        rng: np.random.Generator,
        kind: str = "all",
        template: int | None = None,
        plan: Plan | None = None,
    ) -> str:
        """Caption one thing following ``plan``. ``kind`` picks the word lists (see :meth:`words`);
        ``all`` also says a named colour or object through an association phrase now and then, and an
        artist by an alias."""
        return self.compose(self.slot_words(thing, plan or Plan(), rng, kind), template, rng)

    def slot_words(
        self, thing: Thing, plan: Plan, rng: np.random.Generator, kind: str = "all"
    ) -> dict[str, str]:
        """The words of each slot of a caption of ``thing`` under ``plan``."""
        words = {}
        for axis in AXES:
            if axis == plan.omit or (axis == "texture" and plan.artist):
                continue
            words[axis] = str(rng.choice(self.words(axis, thing.value(axis), kind)))
        if plan.artist:
            artist = self.artist(plan.artist)
            alias = kind == "all" and rng.random() < self.mix["artist_alias"]
            words["artist"] = str(rng.choice(artist.aliases)) if alias else artist.name
        named = [a for a in ("color", "object") if a in words and self.phrases(a, thing.value(a))]
        if kind == "all" and named and plan.omit is None and rng.random() < self.mix["association"]:
            axis = named[int(rng.integers(len(named)))]
            del words[axis]
            words[f"{axis}_phrase"] = str(rng.choice(self.phrases(axis, thing.value(axis))))
        return words

    def caption(self, scene: Scene, rng: np.random.Generator, kind: str = "all") -> str:
        if len(scene.things) == 1:
            return self.describe(scene.things[0], rng, kind, plan=scene.plan(0))
        # Pair captions use the short template so both descriptions stay readable.
        left, right = (
            self.describe(t, rng, kind, template=0, plan=scene.plan(i)) for i, t in enumerate(scene.things)
        )
        tpl = self.pair_templates[int(rng.integers(len(self.pair_templates)))]
        return tpl.format(left=left, right=right)

    def caption_words(self) -> list[str]:
        """Every word or phrase a caption can contain (templates, values, artists, associations)."""
        out = [*self.all_templates, *self.pair_templates, FIGURE]
        for axis in AXES:
            for value in self.values[axis]:
                out += [*self.words(axis, value, "all"), *self.phrases(axis, value)]
        for a in self.artists:
            out += [a.name, *a.aliases]
        return out

    # ----------------------------------------------------------------- rendering
    def render(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """Render a scene as a (64, 64, 3) uint8 array."""
        return render_scene(scene.things, self.rgb, rng)


def _slots(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}
