"""The token-embedding concept detector and the guard options on it (SP judge=text, DLR detect=embedding).

Hand numbers on a small embedding table; the bundled mini model's own text encoder (synonyms and
misspellings the registry does not list are found, other values are not); the guards in the loop on the
tiny random model: a batch without the concept never runs an extra branch and gives plain CFG's pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_guards import pixels, unet_batches  # the UNet-call counter and pixel reader of the guard tests

from safegen.concepts import get_concept
from safegen.generator import generate, token_vectors
from safegen.guards import get_guard
from safegen.guards.detect import ConceptDetector
from safegen.loader import LoadedModel, load_model
from safegen.sampling import GenerationConfig

TABLE = {
    "red": [1.0, 0.0, 0.0],
    "crimson": [0.8, 0.6, 0.0],  # cos 0.8 with red
    "blue": [0.0, 1.0, 0.0],
    "a": [0.0, 0.0, 1.0],
    "circle": [0.0, 0.6, 0.8],
    "ro": [1.0, 1.0, 0.0],  # a two-token word: "ro" + "se" -> mean (0.5, 0.5, 0.5)
    "se": [0.0, 0.0, 1.0],
}


def table_vectors(word: str) -> torch.Tensor:
    parts = ["ro", "se"] if word == "rose" else [word]
    return torch.tensor([TABLE[p] for p in parts if p in TABLE]).reshape(-1, 3)


def test_word_scores_and_rewrite_on_hand_numbers() -> None:
    det = ConceptDetector(table_vectors, ["red"])
    assert det.word_score("red") == 1.0 and det.word_score("RED") == 1.0
    assert det.word_score("crimson") == pytest.approx(0.8)
    assert det.word_score("blue") == 0.0 and det.word_score("unknownword") == 0.0
    assert det.word_score("rose") == pytest.approx(0.5 / np.sqrt(0.75))  # the mean of its two tokens
    words = det.words("a crimson circle")
    assert [(w.word, w.start, w.end) for w in words] == [("a", 0, 1), ("crimson", 2, 9), ("circle", 10, 16)]
    assert det.score("a crimson circle") == pytest.approx(0.8) and det.score("a blue circle") == 0.0
    assert det.scores(["a red circle", "a blue circle"]).tolist() == pytest.approx([1.0, 0.0])
    assert det.rewrite("a crimson circle", 0.7, "green") == "a green circle"
    assert det.rewrite("a crimson circle", 0.9, "green") == "a crimson circle"  # below tau: kept
    assert det.rewrite("a crimson red circle, red", 0.7, "green") == "a green circle, green"  # runs merge
    assert det.rewrite("a crimson-red circle", 0.7, "green") == "a green circle"
    assert det.rewrite("a crimson circle", 0.7, "") == "a circle"  # deleted, spaces tidied
    with pytest.raises(ValueError, match="no keyword"):
        ConceptDetector(table_vectors, ["?!"])


@pytest.fixture(scope="module")
def mini() -> LoadedModel:
    return load_model("mini", device="cpu")


@pytest.mark.parametrize(
    ("concept", "found", "not_found"),
    [
        (
            "red",
            ["a crimson circle", "a scarlet star", "a rde heart"],
            ["a blue circle", "a green striped star"],
        ),
        ("circle", ["a red disc", "a round shape, dotted", "a circel"], ["a red square", "a striped star"]),
        ("striped", ["a stripy star", "a banded circle"], ["a dotted star", "a solid red heart"]),
    ],
)
def test_mini_text_encoder_finds_unlisted_synonyms(
    mini: LoadedModel, concept: str, found: list[str], not_found: list[str]
) -> None:
    c = get_concept(concept)
    det = ConceptDetector(lambda w: token_vectors(mini, w), c.keywords)
    for prompt in found:
        assert det.score(prompt) >= 0.6, prompt
        assert det.rewrite(prompt, 0.6, c.safe_text) != prompt
    for prompt in not_found:
        assert det.score(prompt) < 0.6, prompt
        assert det.rewrite(prompt, 0.6, c.safe_text) == prompt


def test_mini_rewrite_of_a_synonym(mini: LoadedModel) -> None:
    red = get_concept("red")
    det = ConceptDetector(lambda w: token_vectors(mini, w), red.keywords)
    assert det.rewrite("a crimson striped circle", 0.6, red.safe_text) == f"a {red.safe_text} striped circle"


def test_sp_text_judge_guides_from_step_0_and_skips_benign_batches(tiny_sd: LoadedModel) -> None:
    cfg = GenerationConfig(steps=8)
    benign = ["a blue star", "a green square"]
    plain = pixels(generate(tiny_sd, benign, config=cfg))
    guard = get_guard("sp", concept="red", judge="text", text_tau=0.99, text_h_sat=1.0)
    sizes = unet_batches(tiny_sd, lambda: generate(tiny_sd, benign, config=cfg, guard=guard))
    assert sizes == [4] * 8  # never an extra branch: plain CFG's cost
    images = generate(tiny_sd, benign, config=cfg, guard=guard)
    assert np.array_equal(pixels(images), plain)  # and plain CFG's image, exactly
    assert all(im.info["judged_benign"] and im.info["flagged_words"] == [] for im in images)

    mixed = ["a red circle", "a blue star"]
    sizes = unet_batches(tiny_sd, lambda: generate(tiny_sd, mixed, config=cfg, guard=guard))
    assert sizes == [4] * 2 + [8] * 4 + [4] * 2  # [u, c, s, a] in the window (steps 2-5 of 8), else plain
    images = generate(tiny_sd, mixed, config=cfg, guard=guard)
    red, blue = (im.info for im in images)
    assert red["judge"] == "text" and red["harm"] == pytest.approx(1.0) and red["flagged_words"] == ["red"]
    assert (
        red["strength"] == pytest.approx(guard.opts.lam_max)
        and red["guided_steps"] == [2, 3, 4, 5]
        and red["harm_per_step"] == []
    )
    assert blue["judged_benign"] and blue["guided_steps"] == []
    plain_mixed = pixels(generate(tiny_sd, mixed, config=cfg))
    got = pixels(images)
    assert np.abs(got[0] - plain_mixed[0]).mean() > 0.05
    assert np.abs(got[1] - plain_mixed[1]).max() <= 1  # benign in a guided batch: lam = 0 (batch rounding)


def test_sp_text_judge_options_are_checked() -> None:
    from safegen.errors import SafegenError

    with pytest.raises(SafegenError, match="text_h_sat"):
        get_guard("sp", concept="red", judge="text", text_tau=0.8, text_h_sat=0.7)
    with pytest.raises(SafegenError, match="judge"):
        get_guard("sp", concept="red", judge="clip")


def test_dlr_embedding_rewrite_reaches_synonyms(mini: LoadedModel) -> None:
    cfg = GenerationConfig(steps=2)
    prompts = ["a crimson circle", "a blue star"]
    only = {"concept": "red", "context": "rewrite"}
    keywords = generate(mini, prompts, config=cfg, guard=get_guard("dlr", detect="keywords", **only))
    embedding = generate(mini, prompts, config=cfg, guard=get_guard("dlr", **only))  # detect=embedding
    assert [im.info["context"] for im in keywords] == prompts  # "crimson" is not a registry keyword
    assert [im.info["context"] for im in embedding] == ["a green circle", "a blue star"]


def test_dlr_rewrite_append_names_the_safe_text_where_nothing_is_rewritten(mini: LoadedModel) -> None:
    """context=rewrite-append: a prompt with a concept word is rewritten as with rewrite; an implicit one
    (no word to replace) gets the safe text appended, so stream B still asks for the safe alternative."""
    cfg = GenerationConfig(steps=2)
    prompts = ["a red disc", "a red figure, shaped like a coin"]
    guard = get_guard("dlr", concept="circle")  # context=rewrite-append, the default
    contexts = [im.info["context"] for im in generate(mini, prompts, config=cfg, guard=guard)]
    assert contexts == ["a red square", "a red figure, shaped like a coin, square"]
    plain = get_guard("dlr", concept="circle", context="rewrite")  # the implicit prompt is its own context
    assert generate(mini, prompts[1:], config=cfg, guard=plain)[0].info["context"] == prompts[1]


def test_dlr_runs_one_stream_when_nothing_is_rewritten(tiny_sd: LoadedModel) -> None:
    cfg = GenerationConfig(steps=6)
    benign = ["a blue star", "a green square"]
    plain = pixels(generate(tiny_sd, benign, config=cfg))
    guard = get_guard("dlr", concept="red", context="rewrite", negative="empty", gate="none")
    assert unet_batches(tiny_sd, lambda: generate(tiny_sd, benign, config=cfg, guard=guard)) == [4] * 6
    images = generate(tiny_sd, benign, config=cfg, guard=guard)
    assert np.array_equal(pixels(images), plain) and all(im.info["fork_step"] is None for im in images)
    strong = get_guard("dlr", concept="red", context="rewrite", weight=0.5, gate="none")  # negative=unsafe
    assert unet_batches(tiny_sd, lambda: generate(tiny_sd, benign, config=cfg, guard=strong))[-1] == 8


def test_sp_both_judges_take_the_stronger(tiny_sd: LoadedModel) -> None:
    """judge=both: the noise judge's K steps run; a word the text judge flags guides even if noise says no."""
    cfg = GenerationConfig(steps=8)
    mixed = ["a red circle", "a blue star"]
    opts = dict(
        judge="both", judge_steps=1, tau=0.99, h_sat=1.0, text_tau=0.99, text_h_sat=1.0, presence=False
    )  # noise: benign
    guard = get_guard("sp", concept="red", **opts)
    sizes = unet_batches(tiny_sd, lambda: generate(tiny_sd, mixed, config=cfg, guard=guard))
    assert sizes == [8, 4] + [8] * 4 + [4] * 2  # judge [u, c, s, a] at step 0; guide in steps 2-5
    red, blue = (im.info for im in generate(tiny_sd, mixed, config=cfg, guard=guard))
    assert red["strength"] == pytest.approx(guard.opts.lam_max) and red["guided_steps"] == [2, 3, 4, 5]
    assert red["harm_text"] == pytest.approx(1.0) and len(red["harm_per_step"]) == 1
    assert blue["judged_benign"] and blue["strength"] == 0.0


PHRASES = {
    "van": [1.0, 0.0, 0.0],
    "gogh": [0.0, 1.0, 0.0],
    "white": [0.0, 0.0, 1.0],
    "gough": [0.1, 0.9, 0.1],
}


def phrase_vectors(word: str) -> torch.Tensor:
    parts = ["van", "gogh"] if word == "vangogh" else [word]
    return torch.tensor([PHRASES[p] for p in parts if p in PHRASES]).reshape(-1, 3)


def test_multi_word_keywords_match_as_phrases() -> None:
    """A keyword of two words flags a run of two words that matches it word by word, never one of its
    words alone; a keyword gluing a phrase's words is matched literally; ``ignore`` phrases score 0."""
    det = ConceptDetector(phrase_vectors, ["vincent van gogh", "van gogh", "van-gogh", "vangogh"])
    assert det.score("a white van parked by the road") == 0.0  # "white van", "van parked": not "van gogh"
    assert det.rewrite("a white van parked by the road", 0.6, "a painter") == "a white van parked by the road"
    assert det.score("a starry night by van gogh") == 1.0
    assert det.rewrite("a starry night by Van Gogh", 0.6, "a painter") == "a starry night by a painter"
    gough = det.words("by van gough")[1:]  # a misspelt second word: the least of the two word cosines
    cos = float(
        torch.nn.functional.cosine_similarity(phrase_vectors("gough")[0], phrase_vectors("gogh")[0], 0)
    )
    assert [w.score for w in gough] == pytest.approx([cos, cos]) and cos > 0.9  # both words: the run
    assert det.score("vangogh sunflowers") == 1.0 and det.word_score("van") == 0.0
    nude = ConceptDetector(table_vectors, ["red"], ignore=["red crimson"])
    assert nude.score("a red crimson circle") == 0.0 and nude.score("a crimson red circle") == 1.0
