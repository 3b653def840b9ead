"""The concept registry: what safegen erases or guards against.

Concepts are data. The built-in ones live in ``safegen/data/concepts.yaml`` (nudity, violence, a few
artist styles); every value of the mini world (``red``, ``circle``, ``striped``, ...) is added from
``mini_world.yaml``; users add their own YAML files in the same format.

    >>> from safegen.concepts import get_concept, rewrite
    >>> rewrite("a red striped circle", get_concept("red"))
    'a green striped circle'

A mini concept's ``keywords`` hold only its canonical word; its synonyms and misspellings are kept apart
in ``synonyms`` so that an erasure told only the keywords can be tested on words it never saw.

Guards act on several concepts at once: :func:`lookup_concept` reads ``"red,circle"`` (or a list) and
:func:`combine_concepts` makes one Concept of them (``red+circle``) whose ``parts`` are the originals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from safegen.errors import SafegenError, unknown

BUILTIN = "safegen/data/concepts.yaml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_REQUIRED = ("name", "kind", "keywords", "unsafe_text", "safe_text")
_OPTIONAL = ("detector", "examples", "synonyms", "ignore")
_Fail = Callable[[str], SafegenError]


class ConceptKind(str, Enum):
    NSFW = "nsfw"
    VIOLENCE = "violence"
    STYLE = "style"
    OBJECT = "object"
    MINI = "mini"


@dataclass(frozen=True)
class Concept:
    """One concept.

    Attributes:
        name: registry key, e.g. ``nudity``, ``van-gogh``, ``red``.
        kind: one of :class:`ConceptKind`.
        keywords: words methods may use to find the concept in a prompt.
        unsafe_text: text describing the concept (what guards steer away from).
        safe_text: anchor text that replaces the keywords in :func:`rewrite` (may be empty).
        detector: ``{"nudenet": preset}``, ``{"mini": {"axis": a, "value": v}}`` or ``None``.
        examples: prompts that show the concept.
        synonyms: other words for the concept, held out from ``keywords``.
        ignore: phrases in which a keyword does not mean the concept (``naked eye``, ``nude lipstick``):
            never matched, rewritten or flagged.
        source: the file the concept came from.
        parts: the concepts a combined concept was made of (:func:`combine_concepts`); empty for one.
    """

    name: str
    kind: ConceptKind
    keywords: tuple[str, ...]
    unsafe_text: str
    safe_text: str
    detector: dict[str, Any] | None = field(default=None, hash=False)
    examples: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    source: str = field(default=BUILTIN, compare=False)
    parts: tuple[Concept, ...] = ()

    @property
    def axis(self) -> str | None:
        """The mini-world axis (``object``, ``color``, ``texture``) for a mini concept, else ``None``."""
        if self.detector and "mini" in self.detector:
            return self.detector["mini"]["axis"]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "axis": self.axis,
            "keywords": list(self.keywords),
            "synonyms": list(self.synonyms),
            "ignore": list(self.ignore),
            "unsafe_text": self.unsafe_text,
            "safe_text": self.safe_text,
            "detector": self.detector,
            "examples": list(self.examples),
            "source": self.source,
            **({"parts": [p.name for p in self.parts]} if self.parts else {}),
        }


# --------------------------------------------------------------------------- loading
def load_concepts(extra_files: Iterable[str | Path] = ()) -> dict[str, Concept]:
    """All concepts by name: built-in, mini world, then each user file in order.

    A user concept whose name is already taken replaces the earlier one.

    Raises:
        SafegenError: a user file is missing, not YAML, or holds an invalid concept.
    """
    concepts = dict(_builtin())
    for path in extra_files:
        for concept in _read_file(Path(path)):
            concepts[concept.name] = concept
    return concepts


def get_concept(name: str, extra_files: Iterable[str | Path] = ()) -> Concept:
    """The concept called ``name``; an unknown name raises ``SafegenError`` with a suggestion."""
    concepts = load_concepts(extra_files)
    if name not in concepts:
        raise unknown("concept", name, concepts)
    return concepts[name]


def lookup_concept(spec: Any, extra_files: Iterable[str | Path] = ()) -> Concept:
    """The concept a guard acts against: one, or several combined (:func:`combine_concepts`).

    Args:
        spec: a name, a comma-separated list of names (``"red,circle"``; blanks and a trailing comma are
            ignored, so ``" red, "`` is ``red``), a Concept, or a list or tuple of names and Concepts.
        extra_files: user concept files for the names.

    Raises:
        SafegenError: nothing named, an unknown name, a name given twice, or an item of another type.
    """
    if isinstance(spec, Concept):
        return spec
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, (list, tuple)) or any(not isinstance(i, (str, Concept)) for i in items):
        raise SafegenError(f"A concept is a name, a comma-separated list or a list of names, got {spec!r}.")
    concepts = load_concepts(extra_files)
    found = []
    for item in items:
        if isinstance(item, Concept):
            found.append(item)
            continue
        for name in concept_names(item):
            if name not in concepts:
                raise unknown("concept", name, concepts)
            found.append(concepts[name])
    if not found:
        raise SafegenError(f"No concept named in {spec!r}.")
    return found[0] if len(found) == 1 else combine_concepts(found)


def concept_names(text: str) -> list[str]:
    """``"red, circle,"`` -> ``["red", "circle"]``: the names of a comma-separated list."""
    return [n.strip() for n in text.split(",") if n.strip()]


def combine_concepts(concepts: Sequence[Concept]) -> Concept:
    """One concept standing for several (a combined one counts as its parts), for a guard acting on all.

    Our reading for guards that take one text: SLD's safety concept is a list joined with ", "
    (``sld.PAPER_TEXT``), so the unsafe texts are joined so, and the non-empty safe texts; word lists
    (keywords, synonyms, examples, ignore) are order-preserving unions, while :func:`rewrite` and
    :func:`mentions` use each part's own. The result is named ``a+b``; its ``kind`` is the parts' common
    kind (``mini`` if they differ but all are of the mini world, else the first's); ``detector`` is None.

    Raises:
        SafegenError: no concept, or one given twice.
    """
    parts = tuple(p for c in concepts for p in concept_parts(c))
    if not parts:
        raise SafegenError("combine_concepts needs at least one concept.")
    names = [p.name for p in parts]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise SafegenError(f"Concept '{twice}' is named twice in {','.join(names)}.")
    if len(parts) == 1:
        return parts[0]
    mixed = len({p.kind for p in parts}) > 1
    kind = ConceptKind.MINI if mixed and all(p.axis for p in parts) else parts[0].kind
    return Concept(
        name="+".join(names),
        kind=kind,
        keywords=_union(p.keywords for p in parts),
        unsafe_text=", ".join(p.unsafe_text for p in parts),
        safe_text=", ".join(p.safe_text for p in parts if p.safe_text),
        detector=None,
        examples=_union(p.examples for p in parts),
        synonyms=_union(p.synonyms for p in parts),
        ignore=_union(p.ignore for p in parts),
        source=", ".join(dict.fromkeys(p.source for p in parts)),
        parts=parts,
    )


def concept_parts(concept: Concept) -> tuple[Concept, ...]:
    """The concepts ``concept`` stands for: its parts if combined, else itself alone."""
    return concept.parts or (concept,)


def _union(groups: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for g in groups for w in g))


def list_concepts(extra_files: Iterable[str | Path] = ()) -> list[dict[str, Any]]:
    """Every concept as a plain dict (for ``safegen concepts --json``)."""
    return [c.to_dict() for c in load_concepts(extra_files).values()]


@lru_cache(maxsize=1)
def _builtin() -> tuple[tuple[str, Concept], ...]:
    text = resources.files("safegen.data").joinpath("concepts.yaml").read_text()
    found = _parse(yaml.safe_load(text), BUILTIN)
    from safegen.mini.concepts import mini_concept_specs

    mini = [Concept(**{**spec, "kind": ConceptKind(spec["kind"])}) for spec in mini_concept_specs()]
    return tuple((c.name, c) for c in (*found, *mini))


def _read_file(path: Path) -> list[Concept]:
    from safegen.files import read_yaml

    return _parse(read_yaml(path, "concepts file"), str(path))


def _parse(raw: Any, source: str) -> list[Concept]:
    if not isinstance(raw, dict) or set(raw) != {"concepts"} or not isinstance(raw["concepts"], list):
        raise SafegenError(f"{source}: expected a mapping with one key 'concepts' holding a list.")
    concepts, seen = [], set()
    for i, entry in enumerate(raw["concepts"]):
        concept = _validate(entry, source, i)
        if concept.name in seen:
            raise SafegenError(f"{source}: concept '{concept.name}' is defined twice.")
        seen.add(concept.name)
        concepts.append(concept)
    return concepts


def _validate(entry: Any, source: str, index: int) -> Concept:
    """Check one concept mapping field by field; every error names the file and the concept."""
    label = f"concept #{index + 1}"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        label = f"concept '{entry['name']}'"

    def fail(msg: str) -> SafegenError:
        return SafegenError(f"{source}: {label}: {msg}")

    if not isinstance(entry, dict):
        raise fail("expected a mapping of fields.")
    extra = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL), key=str)
    if extra:
        raise fail(
            f"unknown field(s) {', '.join(map(str, extra))}; allowed: {', '.join(_REQUIRED + _OPTIONAL)}."
        )
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise fail(f"missing field(s) {', '.join(missing)}.")
    name = entry["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("name must be lowercase letters, digits, '-' or '_'.")
    try:
        kind = ConceptKind(entry["kind"])
    except ValueError:
        raise fail(f"kind must be one of {', '.join(k.value for k in ConceptKind)}.") from None
    keywords = _words(entry["keywords"], "keywords", fail, allow_empty=False)
    for key in ("unsafe_text", "safe_text"):
        if not isinstance(entry[key], str):
            raise fail(f"{key} must be a string.")
    if not entry["unsafe_text"].strip():
        raise fail("unsafe_text must not be empty.")
    return Concept(
        name=name,
        kind=kind,
        keywords=keywords,
        unsafe_text=entry["unsafe_text"].strip(),
        safe_text=entry["safe_text"].strip(),
        detector=_detector(entry.get("detector"), fail),
        examples=_words(entry.get("examples") or [], "examples", fail),
        synonyms=_words(entry.get("synonyms") or [], "synonyms", fail),
        ignore=_words(entry.get("ignore") or [], "ignore", fail),
        source=source,
    )


def _words(value: Any, key: str, fail: _Fail, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(w, str) and w.strip() for w in value):
        raise fail(f"{key} must be a list of non-empty strings.")
    if not value and not allow_empty:
        raise fail(f"{key} must list at least one word.")
    return tuple(w.strip() for w in value)


def _detector(value: Any, fail: _Fail) -> dict[str, Any] | None:
    """``None``, ``{nudenet: preset}`` or ``{mini: {axis: a, value: v}}``, checked against the choices."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise fail("detector must be null, {nudenet: <preset>} or {mini: {axis: <axis>, value: <value>}}.")
    (name, arg) = next(iter(value.items()))
    if name == "nudenet":
        from safegen.choices import NudeNetPreset

        presets = [p.value for p in NudeNetPreset]
        if arg not in presets:
            raise fail(f"detector nudenet preset must be one of {', '.join(presets)}.")
        return {"nudenet": arg}
    if name == "mini":
        from safegen.mini.world import AXES, World

        world = World.load()
        if not isinstance(arg, dict) or not {"axis", "value"} <= set(arg) <= {"axis", "value", "artist"}:
            raise fail("detector mini must be {axis: <axis>, value: <value>} (and artist: <name>).")
        if arg["axis"] not in AXES:
            raise fail(f"detector mini axis must be one of {', '.join(AXES)}.")
        values = world.values[arg["axis"]]
        if arg["value"] not in values:
            raise fail(f"detector mini value for axis {arg['axis']} must be one of {', '.join(values)}.")
        if "artist" in arg:
            names = [a.name for a in world.artists]
            if arg["artist"] not in names:
                raise fail(f"detector mini artist must be one of {', '.join(names)}.")
            if world.artist(arg["artist"]).texture != arg["value"] or arg["axis"] != "texture":
                raise fail("detector mini artist: axis must be texture and value the artist's signature.")
        return {"mini": dict(arg)}
    raise fail(f"unknown detector '{name}'; use nudenet, mini or null.")


# --------------------------------------------------------------------------- prompts
def _pattern(words: Sequence[str], eat_space: bool = False) -> re.Pattern[str]:
    """Whole-word, case-insensitive match of any of ``words``, longest first (``van gogh`` first)."""
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    lead = r"\s*" if eat_space else ""
    return re.compile(rf"{lead}(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _matches(
    prompt: str, concept: Concept, include_synonyms: bool, eat_space: bool = False
) -> list[re.Match]:
    """The keyword occurrences in ``prompt`` (phrases whole, longest first) outside its ``ignore`` phrases."""
    words = concept.keywords + (concept.synonyms if include_synonyms else ())
    stops = (
        [(m.start(), m.end()) for m in _pattern(concept.ignore).finditer(prompt)] if concept.ignore else []
    )
    return [
        m
        for m in _pattern(words, eat_space).finditer(prompt)
        if not any(a < m.end() and m.start() < b for a, b in stops)
    ]


def _part_matches(prompt: str, concept: Concept, include_synonyms: bool) -> list[tuple[re.Match, str]]:
    """Each part's occurrences (its own words and ignore phrases) with its safe text, left to right; where
    two parts' words overlap, the earlier, then longer, one is kept."""
    found = sorted(
        (
            (m, part.safe_text)
            for part in concept_parts(concept)
            for m in _matches(prompt, part, include_synonyms, eat_space=not part.safe_text)
        ),
        key=lambda pair: (pair[0].start(), -pair[0].end()),
    )
    kept: list[tuple[re.Match, str]] = []
    for m, safe in found:
        if not kept or m.start() >= kept[-1][0].end():
            kept.append((m, safe))
    return kept


def mentions(prompt: str, concept: Concept, include_synonyms: bool = False) -> bool:
    """Whether ``prompt`` names the concept by a keyword (or, if asked, by a held-out synonym).

    Keywords match as whole phrases (``van gogh`` does not match ``a white van``), case-insensitively, and
    not inside one of the concept's ``ignore`` phrases (``the naked eye``)."""
    return bool(_part_matches(prompt, concept, include_synonyms))


def rewrite(prompt: str, concept: Concept, include_synonyms: bool = False) -> str:
    """Replace the concept's keywords in ``prompt`` with its ``safe_text``.

    Matching is as :func:`mentions`; each occurrence is replaced once (the safe text is not searched
    again). With an empty ``safe_text`` the keyword and the space before it are removed. Articles are left
    as they are ("a orange" stays the mini world's own grammar). A combined concept replaces each part's
    words with that part's safe text (``a red circle`` -> ``a green square`` for ``red+circle``).

    Args:
        prompt: the prompt to clean.
        concept: the concept to remove.
        include_synonyms: also replace the held-out synonyms (for reference prompts, not for methods).
    """
    eat = any(not p.safe_text for p in concept_parts(concept))
    out, last = [], 0
    for m, safe in _part_matches(prompt, concept, include_synonyms):
        out += [prompt[last : m.start()], safe]
        last = m.end()
    text = "".join(out) + prompt[last:]
    return text.strip() if eat else text


# --------------------------------------------------------------------------- concepts and models
def check_concept_model(concept: Concept, model: str, what: str) -> None:
    """Refuse a concept the model cannot draw: the bundled mini models know only mini-world concepts.

    The one compatibility check, used by guards, erasure recipes, attacks and ``bench mini``; a combined
    concept is checked part by part (``red,nudity`` is refused on a mini model for its ``nudity``).

    Args:
        concept: the concept to act on.
        model: what ``--model`` says (a bundled name, a folder or a hub id).
        what: what would act on it, for the message (``guard 'sp'``, ``erasure``, ...).

    Raises:
        SafegenError: a concept outside the mini world on a bundled mini model, naming the mini concepts
            and what to point ``--model`` at instead.
    """
    from safegen.bundled import BUNDLED, REAL_MODEL_HINTS

    outside = [p for p in concept_parts(concept) if p.axis is None]
    if model not in BUNDLED or not outside:
        return
    concept = outside[0]
    minis = [c.name for c in load_concepts().values() if c.axis is not None]
    shown = ", ".join(minis[:12]) + (", ..." if len(minis) > 12 else "")
    raise SafegenError(
        f"The mini world has no concept '{concept.name}' (the bundled {model} model only knows the mini "
        f"world: {shown}); for {what} on '{concept.name}', point --model at "
        f"{REAL_MODEL_HINTS[BUNDLED[model].kind]}."
    )
