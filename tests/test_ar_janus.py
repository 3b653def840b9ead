"""Janus through transformers: a tiny random JanusForConditionalGeneration saved to disk and loaded back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from safegen.ar import ARModel, detect_ar_folder
from safegen.ar.generate import generate
from safegen.ar.sampler import SamplingConfig
from safegen.errors import SafegenError
from safegen.loader import load_model

PROMPTS = ["a red circle", "a blue striped square on the green star"]  # different lengths: left padding


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import save_tiny_janus

    return save_tiny_janus(tmp_path_factory.mktemp("janus") / "tiny-janus", grid=4)


@pytest.fixture(scope="module")
def janus(janus_dir: Path) -> ARModel:
    return load_model(str(janus_dir), device="cpu")


def test_folder_is_detected_and_loaded(janus: ARModel, janus_dir: Path) -> None:
    assert detect_ar_folder(janus_dir) == "janus"
    assert type(janus.backbone.model).__name__ == "JanusForConditionalGeneration"
    assert (janus.kind, janus.family, janus.name) == ("ar", "janus", "tiny-janus")
    assert (janus.n_tokens, janus.image_size, janus.vq.codebook_size) == (16, 8, 64)
    assert janus.defaults["cfg"] == 5.0


def test_prompt_format_and_unconditional_rows(janus: ARModel) -> None:
    backbone = janus.backbone
    cond = backbone.encode_prompts(PROMPTS)
    words = backbone.tokenizer.convert_ids_to_tokens(cond.ids[0][cond.mask[0]].tolist())
    assert words == ["<bos>", "<|User|>:", "a", "red", "circle", "<|Assistant|>:", "<begin_of_image>"]
    assert not cond.mask[0, 0] and cond.mask[1].all()  # the short prompt is left-padded
    null = backbone.null_prefix(cond)
    kept = backbone.tokenizer.convert_ids_to_tokens(null.ids[1].tolist())
    assert kept[0] == "<bos>" and kept[-1] == "<begin_of_image>" and set(kept[1:-1]) == {"<pad>"}
    assert torch.equal(null.mask, cond.mask)


def test_greedy_tokens_match_transformers_generate(janus: ARModel) -> None:
    backbone = janus.backbone
    prefix = backbone.encode_prompts(PROMPTS[:1])
    with torch.no_grad():
        theirs = backbone.model.generate(
            input_ids=prefix.ids,
            attention_mask=prefix.mask.long(),
            generation_mode="image",
            do_sample=False,
            guidance_scale=3.0,
        )
    ours = janus.generate_tokens(PROMPTS[:1], [0], SamplingConfig(cfg=3.0, temperature=0.0, top_k=1))
    assert torch.equal(theirs.long(), ours)
    assert len(set(ours[0].tolist())) > 1


def test_cache_batch_and_seed_invariance(janus: ARModel) -> None:
    config = dict(cfg=4.0, top_k=20)
    cached = janus.generate_tokens(PROMPTS, [0, 1], SamplingConfig(**config))
    full = janus.generate_tokens(PROMPTS, [0, 1], SamplingConfig(**config, use_cache=False))
    alone = janus.generate_tokens(PROMPTS[:1], [0], SamplingConfig(**config))
    assert cached.shape == (2, 16) and torch.equal(cached, full)
    assert torch.equal(cached[:1], alone)  # left padding does not change a prompt's tokens


def test_token_logprobs_match_the_sampler_logits(janus: ARModel) -> None:
    tokens = janus.generate_tokens(PROMPTS, [3, 4], SamplingConfig(cfg=1.0))
    logp = janus.token_logprobs(PROMPTS, tokens)
    assert logp.shape == (2, 16) and logp.requires_grad and bool((logp <= 0).all())
    with torch.no_grad():
        backbone = janus.backbone
        cache = backbone.new_cache(2)
        first = torch.log_softmax(backbone.prefill(backbone.encode_prompts(PROMPTS), cache), -1)
    assert torch.allclose(logp[:, 0], first.gather(-1, tokens[:, :1]).squeeze(-1), atol=1e-5)


def test_decode_encode_and_generate(janus: ARModel) -> None:
    images = generate(janus, PROMPTS, n=1, output_type="np")
    assert [im.image.shape for im in images] == [(8, 8, 3), (8, 8, 3)]
    assert images[0].image.dtype == np.uint8 and images[0].info["family"] == "janus"
    assert janus.encode_images([im.image for im in images]).shape == (2, 16)


def test_hub_id_offline_is_one_line() -> None:
    with pytest.raises(SafegenError, match="Could not load deepseek-community/Janus-Pro-1B"):
        load_model("deepseek-community/Janus-Pro-1B", device="cpu")
