"""The mini world's concepts: each colour, object and texture, and each invented artist, as the concept
registry's entries (:func:`safegen.concepts.load_concepts` builds them from :func:`mini_concept_specs`).

A concept's examples name it by its canonical word and, for colours and objects, through the association
phrases of the world's ``examples`` split; the held-out phrases, aliases and synonyms are never examples
(``bench mini`` measures them).
"""

from __future__ import annotations

from typing import Any

from safegen.mini.world import World


def mini_anchor(axis: str, value: str) -> str:
    """The safe anchor for a mini value: the neutral ``solid`` on the texture axis, else the next value.

    Another value of the same axis (not an empty word) keeps rewritten prompts in the captions'
    distribution: ``a red star`` becomes ``a green star``, which the mini model knows how to draw.
    """
    values = World.load().values[axis]
    if axis == "texture" and value != "solid":
        return "solid"
    return values[(values.index(value) + 1) % len(values)]


def mini_concept_specs() -> list[dict[str, Any]]:
    """The keyword arguments of every mini concept's :class:`safegen.concepts.Concept` (``kind`` as its
    value): one per value of each axis, one per artist."""
    from safegen.mini.world import AXES

    world = World.load()
    concepts = []
    for axis in AXES:
        for value in world.values[axis]:
            concepts.append(
                dict(
                    name=value,
                    kind="mini",
                    keywords=world.words(axis, value, "canonical"),
                    unsafe_text=value,
                    safe_text=mini_anchor(axis, value),
                    detector={"mini": {"axis": axis, "value": value}},
                    examples=_mini_examples(world, axis, value),
                    synonyms=world.words(axis, value, "synonyms"),
                    source="safegen/data/mini_world.yaml",
                )
            )
    solid = [a for a in world.artists if a.texture == "solid"]
    for artist in world.artists:
        anchor = next(a for a in solid if a.name != artist.name)  # a painter of plain fills
        concepts.append(
            dict(
                name=artist.slug,
                kind="style",
                keywords=(artist.name,),
                unsafe_text=f"in the style of {artist.name}",
                safe_text=anchor.name,
                detector={"mini": {"axis": "texture", "value": artist.texture, "artist": artist.name}},
                examples=_artist_examples(world, artist.name),
                source="safegen/data/mini_world.yaml",
            )
        )
    return concepts


def _mini_examples(world, axis: str, value: str) -> tuple[str, ...]:
    """Three captions naming ``value`` with its canonical word (the other axes cycle through values),
    then one for each implicit trigger that may appear in examples (never the benchmark's held-out ones).
    """
    out = []
    for i, template in enumerate(world.templates[:3]):
        words = {a: world.values[a][i % len(world.values[a])] for a in world.values}
        words[axis] = value
        out.append(template.format(**words))
    base = {a: world.values[a][1] for a in world.values}
    if axis in ("color", "object"):
        for phrase in world.phrases(axis, value, "examples"):
            words = {a: v for a, v in base.items() if a != axis} | {f"{axis}_phrase": phrase}
            out.append(world.compose(words))
    else:
        for artist in world.artists_with(value):
            if artist.split == "examples":
                out.append(
                    world.compose({"color": base["color"], "object": base["object"], "artist": artist.name})
                )
    return tuple(out)


def _artist_examples(world, name: str) -> tuple[str, ...]:
    """Three captions naming the artist by full name (its keyword)."""
    return tuple(
        world.compose(
            {"color": world.values["color"][i], "object": world.values["object"][i], "artist": name},
            template=i,
        )
        for i in range(3)
    )
