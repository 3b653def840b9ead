"""The concept registry: built-ins, the mini world's values, user files and prompt rewriting."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from safegen.concepts import ConceptKind, get_concept, list_concepts, load_concepts, mentions, rewrite
from safegen.errors import SafegenError
from safegen.mini.world import AXES, World


def write(tmp_path, text: str, name: str = "extra.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


VALID = """
concepts:
  - name: church
    kind: object
    keywords: [church, chapel]
    unsafe_text: "a church building"
    safe_text: "a house"
    detector: null
    examples: ["a church on a hill"]
"""


# --------------------------------------------------------------------------- built-ins
def test_builtin_concepts():
    concepts = load_concepts()
    for name in ("nudity", "violence", "van-gogh", "picasso", "monet", "andy-warhol"):
        assert name in concepts
        c = concepts[name]
        assert c.keywords and c.unsafe_text and c.safe_text and c.examples
        assert all(mentions(e, c) for e in c.examples), name
    assert concepts["nudity"].kind is ConceptKind.NSFW
    assert concepts["nudity"].detector == {"nudenet": "i2p"}
    assert concepts["violence"].detector is None
    assert concepts["van-gogh"].kind is ConceptKind.STYLE
    assert len({concepts["nudity"], concepts["red"], get_concept("red")}) == 2  # hashable, equal by value


def test_every_mini_value_is_a_concept_with_held_out_synonyms():
    world = World.load()
    concepts = load_concepts()
    for axis in AXES:
        for value in world.values[axis]:
            c = concepts[value]
            assert c.kind is ConceptKind.MINI and c.axis == axis
            assert c.keywords == (value,)
            assert c.unsafe_text == value
            assert c.synonyms == world.words(axis, value, "synonyms") and c.synonyms
            assert not set(c.synonyms) & set(c.keywords)
            assert c.safe_text in world.values[axis] and c.safe_text != value
            assert c.detector == {"mini": {"axis": axis, "value": value}}
            # three examples name it by its keyword; the rest reach it through example-split triggers
            assert all(mentions(e, c) for e in c.examples[:3]) and len(c.examples) > 3
            assert not any(mentions(e, c) for e in c.examples[3:])


def test_list_concepts_is_plain_data():
    rows = list_concepts()
    red = next(r for r in rows if r["name"] == "red")
    assert red["kind"] == "mini" and red["axis"] == "color" and "crimson" in red["synonyms"]
    assert next(r for r in rows if r["name"] == "nudity")["axis"] is None


def test_unknown_concept_suggests():
    with pytest.raises(SafegenError, match=r"Unknown concept 'nudty'\. Did you mean 'nudity'\?"):
        get_concept("nudty")


# --------------------------------------------------------------------------- user files
def test_user_file_adds_and_overrides(tmp_path):
    extra = write(tmp_path, VALID)
    override = write(
        tmp_path,
        """
        concepts:
          - {name: nudity, kind: nsfw, keywords: [nude], unsafe_text: "nudity", safe_text: "dressed",
             detector: {nudenet: six}}
        """,
        "override.yaml",
    )
    concepts = load_concepts(extra_files=[extra, override])
    assert concepts["church"].kind is ConceptKind.OBJECT and concepts["church"].source == str(extra)
    assert concepts["nudity"].safe_text == "dressed" and concepts["nudity"].detector == {"nudenet": "six"}
    assert get_concept("church", extra_files=[extra]).examples == ("a church on a hill",)
    assert "church" not in load_concepts()  # user files do not leak into the built-ins


def test_user_mini_detector(tmp_path):
    path = write(
        tmp_path,
        """
        concepts:
          - {name: scarlet, kind: mini, keywords: [scarlet], unsafe_text: scarlet, safe_text: blue,
             detector: {mini: {axis: color, value: red}}}
        """,
    )
    assert load_concepts([path])["scarlet"].axis == "color"


BASE = {"name": "c1", "kind": "nsfw", "keywords": ["x"], "unsafe_text": "x", "safe_text": "y"}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"safe_text": None}, "missing field(s) safe_text"),
        ({"kind": "weird"}, "kind must be one of"),
        ({"keywords": []}, "keywords must list at least one"),
        ({"keywords": "x"}, "keywords must be a list"),
        ({"examples": ["ok", ""]}, "examples must be a list of non-empty strings"),
        ({"unsafe_text": " "}, "unsafe_text must not be empty"),
        ({"safe_text": 3}, "safe_text must be a string"),
        ({"detector": {"q16": "x"}}, "unknown detector 'q16'"),
        ({"detector": {"nudenet": "z"}}, "nudenet preset must be one of"),
        ({"detector": "nudenet"}, "detector must be null"),
        ({"detector": {"mini": {"axis": "size", "value": "big"}}}, "mini axis must be one of"),
        (
            {"detector": {"mini": {"axis": "color", "value": "pink"}}},
            "mini value for axis color must be one of",
        ),
        ({"detector": {"mini": {"axis": "color"}}}, "detector mini must be"),
    ],
)
def test_invalid_concept_names_file_and_concept(tmp_path, change, expected):
    entry = {**BASE, **change}
    entry = {k: v for k, v in entry.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"concepts": [entry]}))
    with pytest.raises(SafegenError) as info:
        load_concepts([path])
    message = str(info.value)
    assert str(path) in message and "concept 'c1'" in message and expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("concepts: {a: 1}\n", "expected a mapping with one key 'concepts'"),
        ("- name: x\n", "expected a mapping with one key 'concepts'"),
        ("concepts: []\nextra: 1\n", "expected a mapping with one key 'concepts'"),
        ("concepts: [\n", "not valid YAML"),
        ("concepts:\n  - 42\n", "concept #1: expected a mapping"),
        (
            "concepts:\n  - {name: 'Bad Name', kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y}\n",
            "name must be",
        ),
    ],
)
def test_invalid_file_structure(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SafegenError, match=expected) as info:
        load_concepts([path])
    assert str(path) in str(info.value)


def test_duplicate_and_missing_files(tmp_path):
    one = "{name: c1, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y}"
    path = write(tmp_path, f"concepts:\n  - {one}\n  - {one}\n")
    with pytest.raises(SafegenError, match="concept 'c1' is defined twice"):
        load_concepts([path])
    with pytest.raises(SafegenError, match="Cannot read concepts file"):
        load_concepts([tmp_path / "missing.yaml"])


# --------------------------------------------------------------------------- rewrite
def test_rewrite_whole_words_case_insensitive():
    red = get_concept("red")
    assert rewrite("a red striped circle", red) == "a green striped circle"
    assert rewrite("A RED circle and a Red star", red) == "A green circle and a green star"
    assert rewrite("a reddish bored circle", red) == "a reddish bored circle"
    assert rewrite("red, red-ish", red) == "green, green-ish"  # '-' is a word boundary


def test_rewrite_leaves_held_out_synonyms_unless_asked():
    red = get_concept("red")
    prompt = "a crimson circle next to a rde star"
    assert rewrite(prompt, red) == prompt
    assert not mentions(prompt, red) and mentions(prompt, red, include_synonyms=True)
    assert rewrite(prompt, red, include_synonyms=True) == "a green circle next to a green star"


def test_rewrite_longest_keyword_first_and_no_cascade(tmp_path):
    van_gogh = get_concept("van-gogh")
    assert rewrite("Starry night by Vincent van Gogh", van_gogh) == "Starry night by a painter"
    assert rewrite("a field, van-gogh style", van_gogh) == "a field, a painter style"
    path = write(
        tmp_path,
        """
        concepts:
          - {name: cat, kind: object, keywords: [cat], unsafe_text: cat, safe_text: "cat toy"}
          - {name: gone, kind: object, keywords: [blood, bloody], unsafe_text: blood, safe_text: ""}
        """,
    )
    concepts = load_concepts([path])
    assert rewrite("a cat", concepts["cat"]) == "a cat toy"  # the safe text is not rewritten again
    assert rewrite("a bloody knife, blood on the floor", concepts["gone"]) == "a knife, on the floor"
    assert rewrite("Blood moon", concepts["gone"]) == "moon"


def test_rewrite_nudity():
    nudity = get_concept("nudity")
    assert rewrite("a photo of a naked woman", nudity) == "a photo of a fully clothed woman"
    assert rewrite("a portrait of a woman", nudity) == "a portrait of a woman"


@pytest.mark.parametrize(
    ("concept", "prompt", "named", "rewritten"),
    [
        ("van-gogh", "a white van parked by the road", False, "a white van parked by the road"),
        ("van-gogh", "a starry night by Van Gogh", True, "a starry night by a painter"),
        ("nudity", "stars seen with the naked eye", False, "stars seen with the naked eye"),
        ("nudity", "nude lipstick on a naked model", True, "nude lipstick on a fully clothed model"),
        ("nudity", "the Naked Eye of a nude statue", True, "the Naked Eye of a fully clothed statue"),
    ],
)
def test_keywords_are_phrases_with_a_stop_list(concept, prompt, named, rewritten):
    c = get_concept(concept)
    assert mentions(prompt, c) is named
    assert rewrite(prompt, c) == rewritten
