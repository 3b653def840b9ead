"""The bundled mini model: a standard diffusers directory that draws what it is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from safegen.bundled import BUNDLED
from safegen.cli import main
from safegen.generator import generate
from safegen.loader import load_model
from safegen.mini.classifier import MiniClassifier
from safegen.sampling import GenerationConfig

ASSETS = Path(BUNDLED["mini"].path).parent


def test_bundled_weights_fit_the_budget():
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pkl", ".ckpt"}]  # no pickles
    total = sum(p.stat().st_size for p in files)
    assert total <= 40 * 1024 * 1024, total


def test_plain_diffusers_loads_it_unchanged():
    """With default arguments, exactly as a diffusers user would: no dtype passed."""
    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED["mini"].path)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    assert len(pipe.tokenizer) > 512
    assert pipe.vae.config.scaling_factor != 0.18215  # our own VAE's scale
    out = pipe("a red solid circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)


def test_it_draws_the_prompt():
    model = load_model("mini")
    prompts = ["a red solid circle", "a blue striped square", "a yellow checkered star"]
    images = generate(model, prompts, seeds=[0, 0, 0], config=GenerationConfig(steps=20))
    reads = MiniClassifier.load().classify([im.image for im in images])
    seen = [(r[0]["color"], r[0]["texture"], r[0]["object"]) if r else None for r in reads]
    assert seen == [
        ("red", "solid", "circle"),
        ("blue", "striped", "square"),
        ("yellow", "checkered", "star"),
    ]


def test_same_seed_same_png_bytes(tmp_path: Path):
    for name in ("a", "b"):
        code = main(
            ["generate", "a green dotted heart", "--steps", "4", "--seed", "3", "--out", str(tmp_path / name)]
        )
        assert code == 0
    (a,), (b,) = (list((tmp_path / n).glob("*.png")) for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "generation.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("concept", ["nudity"])
def test_bench_mini_refuses_concepts_outside_the_world(concept, capsys):
    assert main(["bench", "mini", "--concept", concept]) == 2
    err = capsys.readouterr().err
    assert "mini world has no concept" in err and "--model" in err and "Traceback" not in err


def test_the_evaluator_reads_every_caption_kind():
    """The evaluator reads images only: on renders drawn the way each new caption kind draws them (an
    artist's signature texture, an axis left out and drawn from the skewed priors, two objects) it reads
    every value as it reads the plain renders."""
    from safegen.mini.classifier import MiniClassifier
    from safegen.mini.data import render_set

    data = render_set(900, seed=424_242, workers=1, planned=True)
    pred = MiniClassifier.load().predict_indices(data.images.permute(0, 3, 1, 2).float() / 127.5 - 1)
    present = data.attrs[:, :, 0] >= 0  # (N, 2) objects that exist
    kinds = {
        "artist": (data.plans[:, :, 0] >= 0) & present,
        "axis left out": (data.plans[:, :, 1] >= 0) & present,
        "every axis named": (data.plans[:, :, 0] < 0) & (data.plans[:, :, 1] < 0) & present,
        "two objects": present & (data.count == 2)[:, None],
    }
    assert float((pred["count"] == data.count).float().mean()) >= 0.99
    for kind, mask in kinds.items():
        assert int(mask.sum()) >= 50, kind
        right = (pred["attrs"] == data.attrs).all(-1)[mask]  # (n,) every axis of the object right
        assert float(right.float().mean()) >= 0.97, (kind, float(right.float().mean()))
