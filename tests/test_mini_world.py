"""The mini world: renderer, captions, tokenizer and the bench-mini scoring rules."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import CLIPTokenizer

from safegen.bench.mini import BenchPrompt, concept_axis, grid_prompts, score, synonym_prompts
from safegen.errors import SafegenError
from safegen.mini.data import render_set
from safegen.mini.tokenizer import MAX_LENGTH, build_tokenizer_files
from safegen.mini.world import AXES, Scene, Thing, World


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


def test_render_is_deterministic_and_differs_by_value(world):
    scene = Scene((Thing("circle", "red", "solid"),))
    a = world.render(scene, np.random.default_rng(3))
    b = world.render(scene, np.random.default_rng(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    blue = world.render(Scene((Thing("circle", "blue", "solid"),)), np.random.default_rng(3))
    # the red circle is red where the blue one is blue
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


def test_rendered_set_labels(world):
    data = render_set(12, seed=5, pair_share=0.5, workers=1)
    assert data.images.shape == (12, 64, 64, 3)
    assert set(data.count.tolist()) <= {1, 2}
    for i in range(12):
        scene = data.scene(i, world)
        assert len(scene.things) == int(data.count[i])
        if data.count[i] == 1:
            assert (data.attrs[i, 1] == -1).all()


def test_tokenizer_round_trip(tmp_path, world):
    tok = CLIPTokenizer.from_pretrained(build_tokenizer_files(tmp_path / "tok", world))
    assert tok.model_max_length == MAX_LENGTH
    assert len(tok) > 512  # a real vocabulary, not the 2-token fallback of a missing folder
    for axis in AXES:
        for value in world.values[axis]:
            for word in world.words(axis, value, "all"):
                for piece in word.replace("-", " - ").split():
                    ids = tok(piece, add_special_tokens=False).input_ids
                    assert len(ids) == 1, (word, tok.convert_ids_to_tokens(ids))
    ids = tok("an unseen zebra").input_ids  # unseen words still tokenize, into pieces
    assert len(ids) > 4


def test_bench_prompt_sets(world):
    grid = grid_prompts(world)
    assert len(grid) == 180 and len({p.prompt for p in grid}) == 180
    syn = synonym_prompts(world, "color", "red")
    assert len(syn) == 30
    assert all(p.thing.color == "red" and "red" not in p.prompt.split() for p in syn)


def test_score_rules():
    red_star = Thing("star", "red", "solid")
    blue_star = Thing("star", "blue", "solid")
    prompts = [
        BenchPrompt("a red star", red_star, "grid"),
        BenchPrompt("a red star", red_star, "grid"),
        BenchPrompt("a blue star", blue_star, "grid"),
        BenchPrompt("a crimson star", red_star, "synonym"),
    ]
    reads = [
        [{"object": "star", "color": "green", "texture": "solid"}],  # erased
        [{"object": "circle", "color": "red", "texture": "solid"}],  # not erased, wrong object
        [{"object": "star", "color": "blue", "texture": "dotted"}],
        [],  # nothing found: counts as not showing the concept
    ]
    out = score(prompts, reads, ("color", "red"))
    assert out["accuracy"]["object"] == pytest.approx(2 / 3)
    assert out["erasure"]["ua"] == pytest.approx(0.5)
    assert out["erasure"]["ira"] == pytest.approx(1.0)
    assert out["erasure"]["cra"] == pytest.approx(4 / 6)
    assert out["erasure"]["synonym_ua"] == pytest.approx(1.0)
    assert score(prompts, reads, None)["erasure"] is None


def test_concept_axis_errors(world):
    assert concept_axis("red", world) == ("color", "red")
    with pytest.raises(SafegenError, match="mini world has no concept 'nudity'.*--model"):
        concept_axis("nudity", world)
    with pytest.raises(SafegenError, match="Did you mean 'circle'"):
        concept_axis("circel", world)
