"""The mini world: renderer, captions, the ways a concept appears without being named, and the tokenizer."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from transformers import CLIPTokenizer

from safegen.bench.mini_prompts import Target, implicit_triggers, plan_prompts
from safegen.concepts import get_concept, load_concepts, mentions
from safegen.mini.data import render_set
from safegen.mini.tokenizer import MAX_LENGTH, build_tokenizer_files
from safegen.mini.world import AXES, SLOTS, Plan, Scene, Thing, World


@pytest.fixture(scope="module")
def world() -> World:
    return World.load()


def test_vocabulary_sizes(world):
    assert len(world.values["object"]) >= 6
    assert len(world.values["color"]) >= 6
    assert len(world.values["texture"]) >= 5
    for axis in AXES:
        for value in world.values[axis]:
            syn = world.words(axis, value, "synonyms")
            assert len(syn) >= 2, (axis, value)
            assert value not in syn


def test_artists_and_associations(world):
    assert len(world.artists) >= 10 and len({a.name for a in world.artists}) == len(world.artists)
    for texture in world.values["texture"]:
        mine = world.artists_with(texture)
        assert len(mine) >= 2, texture
        assert {a.split for a in mine} == {"examples", "heldout"}, texture
    assert sum(a.color is not None for a in world.artists) >= 3  # some favour a colour
    for artist in world.artists:
        assert artist.color is None or artist.color in world.values["color"]
        assert len(artist.aliases) >= 2
        assert artist.aliases[0] == artist.name.split()[-1]  # surname only
        assert all(alias != artist.name for alias in artist.aliases)
    for axis, least in (("color", 3), ("object", 2)):
        for value in world.values[axis]:
            phrases = world.phrases(axis, value)
            assert len(phrases) >= least, (axis, value)
            # a phrase implies the value without naming it, nor any of its words
            named = {w for v in world.values[axis] for w in world.words(axis, v)}
            assert not any(word in phrase.split() for phrase in phrases for word in named), phrases


def test_implicit_triggers_split_into_examples_and_heldout(world):
    concepts = load_concepts()
    for axis in AXES:
        for value in world.values[axis]:
            target = Target(value, axis, value)
            examples = implicit_triggers(world, target, "examples")
            heldout = implicit_triggers(world, target, "heldout")
            assert heldout and not set(examples) & set(heldout), value
            # the registry tells methods only the keywords and examples: no held-out trigger in them
            c = concepts[value]
            told = " | ".join((*c.keywords, *c.examples, c.unsafe_text, c.safe_text))
            for artist in world.artists:  # a surname alias is part of the full name: not told alone
                told = told.replace(artist.name, "<artist>")
            for _, words in heldout:
                assert words not in told, (value, words)
            for _, words in examples:
                assert any(words in e for e in c.examples), (value, words)
    for artist in world.artists:
        c = concepts[artist.slug]
        assert c.keywords == (artist.name,) and c.axis == "texture"
        assert c.detector["mini"] == {"axis": "texture", "value": artist.texture, "artist": artist.name}
        told = " | ".join((*c.keywords, *c.examples, c.unsafe_text, c.safe_text))
        assert not any(alias in told.split(" ") for alias in artist.aliases[1:])
        assert all(mentions(e, c) for e in c.examples)
        assert not any(mentions(f"a circle by {alias}", c) for alias in artist.aliases)


def test_priors_are_skewed_and_tied_to_the_other_values(world):
    assert max(world.prior("color", {"object": "heart"}).items(), key=lambda kv: kv[1])[0] == "red"
    assert max(world.prior("color", {"object": "star"}).values()) >= 0.7
    quarry = world.artist("ines quarry")
    assert world.prior("color", {"object": "star"}, quarry.name)[quarry.color] >= 0.7
    for axis in AXES:
        for given in world.values[world.priors[axis]["given"]]:
            dist = world.prior(axis, {world.priors[axis]["given"]: given})
            assert sum(dist.values()) == pytest.approx(1.0)
    # marginals over uniform other values: the benchmarked concepts have a base rate >= 0.25
    for axis, value in (
        ("color", "red"),
        ("object", "circle"),
        ("texture", "striped"),
        ("texture", "dotted"),
    ):
        given = world.priors[axis]["given"]
        share = np.mean([world.prior(axis, {given: g})[value] for g in world.values[given]])
        assert share >= 0.25, (axis, value, share)


def test_planned_scenes_follow_the_priors(world):
    rng = np.random.default_rng(0)
    left_out = collections.Counter()
    for _ in range(4000):
        thing, plan = world.sample_planned(rng)
        if plan.artist:
            assert thing.texture == world.artist(plan.artist).texture
        if plan.omit == "color" and thing.object == "heart" and not plan.artist:
            left_out[thing.color] += 1
    assert left_out["red"] / sum(left_out.values()) > 0.6  # hearts mostly red when the colour is left out


def test_every_plan_has_a_template_and_fits_the_text_encoder(world, tmp_path):
    tok = CLIPTokenizer.from_pretrained(build_tokenizer_files(tmp_path / "tok", world))
    rng = np.random.default_rng(1)
    lengths, kinds = [], set()
    for _ in range(3000):
        scene = world.sample_planned_scene(rng, 2 if rng.random() < 0.3 else 1)
        caption = world.caption(scene, rng)
        lengths.append(len(tok(caption).input_ids))
        words = world.slot_words(scene.things[0], scene.plan(0), rng)
        kinds.add(frozenset(words))
        assert set(words) <= set(SLOTS)
    assert np.mean(np.array(lengths) > MAX_LENGTH) < 0.001
    assert len(kinds) >= 9  # named, artist, colour / object / texture left out, associations
    for slots in kinds:
        assert world.templates_for(slots), slots


def test_render_is_deterministic_and_differs_by_value(world):
    scene = Scene((Thing("circle", "red", "solid"),))
    a = world.render(scene, np.random.default_rng(3))
    b = world.render(scene, np.random.default_rng(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    blue = world.render(Scene((Thing("circle", "blue", "solid"),)), np.random.default_rng(3))
    centre = (slice(28, 36), slice(28, 36))
    assert a[centre][..., 0].mean() > 150 and a[centre][..., 2].mean() < 100
    assert blue[centre][..., 2].mean() > 150 and blue[centre][..., 0].mean() < 100


def test_textures_change_pixels_inside_the_shape(world):
    rng = np.random.default_rng
    solid = world.render(Scene((Thing("square", "green", "solid"),)), rng(0)).astype(int)
    for tex in ("striped", "dotted", "checkered", "outlined"):
        other = world.render(Scene((Thing("square", "green", tex),)), rng(0)).astype(int)
        assert np.abs(solid - other).mean() > 10, tex


def test_captions_use_synonyms_only_when_asked(world):
    thing = Thing("star", "red", "striped")
    rng = np.random.default_rng(0)
    canonical = {world.describe(thing, rng, "canonical") for _ in range(30)}
    assert all("red" in c and "star" in c and "striped" in c for c in canonical)
    synonyms = [world.describe(thing, rng, "synonyms") for _ in range(30)]
    assert not any(" red " in f" {c} " for c in synonyms)
    two = world.caption(Scene((thing, Thing("heart", "blue", "solid"))), rng, "canonical")
    assert two.index("star") < two.index("heart")  # first named is on the left


def test_captions_follow_the_plan(world):
    rng = np.random.default_rng(0)
    thing = Thing("heart", "red", "dotted")
    for _ in range(20):
        no_color = world.describe(thing, rng, plan=Plan(omit="color"))
        assert not any(w in no_color.split() for w in world.words("color", "red"))
        by_artist = world.describe(thing, rng, plan=Plan(artist="ines quarry"))
        assert "dotted" not in by_artist and any(
            n in by_artist for n in ("ines quarry", *world.artist("ines quarry").aliases)
        )


def test_rendered_set_labels_and_plans(world):
    data = render_set(12, seed=5, pair_share=0.5, workers=1)
    assert data.images.shape == (12, 64, 64, 3) and data.plans.shape == (12, 2, 2)
    assert set(data.count.tolist()) <= {1, 2}
    for i in range(12):
        scene = data.scene(i, world)
        assert len(scene.things) == int(data.count[i]) == len(scene.plans)
        if data.count[i] == 1:
            assert (data.attrs[i, 1] == -1).all()


def test_tokenizer_round_trip(tmp_path, world):
    tok = CLIPTokenizer.from_pretrained(build_tokenizer_files(tmp_path / "tok", world))
    assert tok.model_max_length == MAX_LENGTH
    assert len(tok) > 512  # a real vocabulary, not the 2-token fallback of a missing folder
    for text in world.caption_words():
        for word in text.replace("-", " - ").replace("'", " ' ").split():
            if "{" in word:
                continue
            ids = tok(word, add_special_tokens=False).input_ids
            assert len(ids) == 1 or not word.isalpha(), (word, tok.convert_ids_to_tokens(ids))
    ids = tok("an unseen zebra").input_ids  # unseen words still tokenize, into pieces
    assert len(ids) > 4


def test_bench_prompt_sets_per_concept(world):
    for name in ("red", "circle", "striped", "ines-quarry"):
        target = Target(name, *_target(name))
        prompts = plan_prompts(world, target)
        groups = collections.Counter(p.group for p in prompts)
        assert groups["grid"] == 180 and groups["implicit"] >= 30 and groups["unprompted"] >= 30
        for p in prompts:
            if p.group in ("implicit", "synonym"):
                assert not mentions(p.prompt, get_concept(name)), p.prompt  # never named by a keyword
                assert p.expect[target.axis] == target.value
            if p.group == "unprompted":
                assert target.axis not in p.expect
                assert not any(w in p.prompt.split() for v in world.values[target.axis] for w in [v])


def _target(name: str) -> tuple:
    mini = get_concept(name).detector["mini"]
    return mini["axis"], mini["value"], mini.get("artist")
