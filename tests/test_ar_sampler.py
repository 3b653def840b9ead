"""The AR sampler: hand-computed guidance, filtering and inverse-CDF draws; cache parity; per-image seeds."""

from __future__ import annotations

import math

import pytest
import torch

from safegen.ar.llamagen import GPTConfig, LlamaGenBackbone, LlamaGenGPT
from safegen.ar.protocols import Prefix
from safegen.ar.sampler import SamplingConfig, draw, filter_logits, guide, sample_tokens, uniforms
from safegen.errors import SafegenError

NEG = float("-inf")


@pytest.fixture(scope="module")
def backbone() -> LlamaGenBackbone:
    """A random 2-layer GPT: 6 caption positions, 4x4 image tokens, 32 codes; output layer not zeroed."""
    torch.manual_seed(0)
    config = GPTConfig(
        dim=32,
        n_layer=2,
        n_head=4,
        multiple_of=16,
        caption_dim=8,
        vocab_size=32,
        cls_token_num=6,
        block_size=16,
    )
    gpt = LlamaGenGPT(config).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    return LlamaGenBackbone(gpt, None)


@pytest.fixture(scope="module")
def prefix() -> Prefix:
    """Three captions, left-padded by 0, 2 and 5 positions."""
    torch.manual_seed(1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, :2] = False
    mask[2, :5] = False
    return Prefix(torch.randn(3, 6, 8) * mask[..., None], mask)


def test_guide_is_uncond_plus_scaled_difference() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # rows: [cond; uncond]
    assert guide(logits, 3.0).tolist() == [[4.0, -2.0]]  # 1 + 3 (2 - 1), 1 + 3 (0 - 1)


def test_top_k_keeps_the_k_largest() -> None:
    out = filter_logits(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), top_k=2)
    assert out.tolist() == [[NEG, 3.0, 2.0, NEG]]


@pytest.mark.parametrize(("top_p", "kept"), [(0.4, 1), (0.5, 2), (0.6, 2), (0.85, 3)])
def test_top_p_keeps_the_token_that_crosses_p(top_p: float, kept: int) -> None:
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()  # cumulative mass 0.5, 0.8, 1.0
    out = filter_logits(logits, top_p=top_p)
    assert torch.isfinite(out).sum().item() == kept
    assert torch.isfinite(out[0, :kept]).all()


@pytest.mark.parametrize(("u", "token"), [(0.0, 0), (0.49, 0), (0.51, 1), (0.79, 1), (0.81, 2), (0.999, 2)])
def test_draw_is_inverse_cdf(u: float, token: int) -> None:
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()  # cdf 0.5, 0.8, 1.0
    assert draw(logits, torch.tensor([u])).item() == token


def test_draw_never_picks_a_filtered_token() -> None:
    logits = torch.tensor([[math.log(0.5), NEG, math.log(0.2)]])  # cdf 5/7, 5/7, 1
    picks = {draw(logits, torch.tensor([u])).item() for u in torch.linspace(0, 0.999, 200).tolist()}
    assert picks == {0, 2}


def test_uniforms_are_per_seed() -> None:
    both = uniforms([3, 4], 5)
    assert both.shape == (2, 5) and both.dtype == torch.float64
    assert torch.equal(both[1], uniforms([4], 5)[0])


def test_cache_gives_the_same_logits_as_full_forward(backbone: LlamaGenBackbone, prefix: Prefix) -> None:
    tokens = torch.randint(0, 32, (3, 5))
    with torch.no_grad():
        full = backbone.logits(prefix, tokens)  # (3, 6, 32)
        cache = backbone.new_cache(3)
        first = backbone.prefill(prefix, cache)
        rest = backbone.extend(tokens[:, :2], cache)  # two tokens at once
        last = torch.cat([backbone.extend(tokens[:, i : i + 1], cache) for i in range(2, 5)], dim=1)
    assert torch.allclose(first, full[:, 0], atol=1e-5)
    assert torch.allclose(torch.cat([rest, last], dim=1), full[:, 1:], atol=1e-5)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_cache_and_no_cache_sample_the_same_tokens(backbone, prefix: Prefix, cfg: float) -> None:
    config = dict(cfg=cfg, temperature=1.0, top_k=20, top_p=0.95)
    with torch.no_grad():
        cached = sample_tokens(backbone, prefix, [0, 1, 2], SamplingConfig(**config))
        full = sample_tokens(backbone, prefix, [0, 1, 2], SamplingConfig(**config, use_cache=False))
    assert cached.shape == (3, 16) and cached.dtype == torch.long
    assert torch.equal(cached, full)
    assert int(cached.max()) < 32


def test_tokens_do_not_depend_on_the_batch(backbone: LlamaGenBackbone, prefix: Prefix) -> None:
    config = SamplingConfig(cfg=3.0)
    with torch.no_grad():
        together = sample_tokens(backbone, prefix, [7, 8, 9], config)
        rows = [Prefix(prefix.embeds[i : i + 1], prefix.mask[i : i + 1]) for i in range(3)]
        alone = [sample_tokens(backbone, row, [s], config) for row, s in zip(rows, [7, 8, 9], strict=True)]
        other_seed = sample_tokens(backbone, rows[0], [70], config)
    assert torch.equal(together, torch.cat(alone))
    assert not torch.equal(together[:1], other_seed)


def test_zero_temperature_is_greedy_on_guided_logits(backbone, prefix: Prefix) -> None:
    with torch.no_grad():
        tokens = sample_tokens(backbone, prefix, [0, 1, 2], SamplingConfig(cfg=2.0, temperature=0.0, top_k=0))
        both = Prefix.cat([prefix, backbone.null_prefix(prefix)])
        first = guide(backbone.logits(both, torch.zeros(6, 0, dtype=torch.long))[:, 0], 2.0)
    assert torch.equal(tokens[:, 0], first.argmax(-1))


def test_no_guidance_runs_no_unconditional_rows(backbone, prefix: Prefix, monkeypatch) -> None:
    def refuse(cond: Prefix) -> Prefix:
        raise AssertionError("null_prefix called with cfg <= 1")

    monkeypatch.setattr(backbone, "null_prefix", refuse)
    with torch.no_grad():
        assert sample_tokens(backbone, prefix, [0, 1, 2], SamplingConfig(cfg=1.0)).shape == (3, 16)


def test_progress_counts_images_per_step(backbone, prefix: Prefix) -> None:
    calls: list[int] = []
    with torch.no_grad():
        sample_tokens(backbone, prefix, [0, 1, 2], SamplingConfig(), calls.append)
    assert calls == [3] * 16


@pytest.mark.parametrize(
    "bad", [{"cfg": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"temperature": "hot"}, {"batch_size": 0}]
)
def test_bad_settings_are_errors(bad: dict) -> None:
    with pytest.raises(SafegenError, match=next(iter(bad))):
        SamplingConfig(**bad)


def test_wrong_number_of_seeds(backbone, prefix: Prefix) -> None:
    with pytest.raises(SafegenError, match="2 seeds for 3 prompts"):
        sample_tokens(backbone, prefix, [0, 1], SamplingConfig())
