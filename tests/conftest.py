"""Shared fixtures: tiny random models built from configs, offline, once per session.

``tiny_sd_dir`` is a diffusers folder (saved with safetensors); load it with ``load_model(str(tiny_sd_dir))``
when a test changes the model (e.g. swaps its scheduler), or use the shared, read-only ``tiny_sd`` model.
``tiny_ar_dir`` is a LlamaGen folder in safegen's layout with the shapes of ``safegen.mini.train_ar``'s
``tiny`` preset (64 px, 16 tokens of a 16-code VQ, a 1-layer CLIP text encoder on the mini tokenizer);
``tiny_janus_dir`` a random ``JanusForConditionalGeneration`` (16 tokens, 8 px).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: never wait on the network

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import save_tiny_sd  # noqa: E402

from safegen.loader import LoadedModel, load_model  # noqa: E402

# Tiny models run fastest on one thread, and several OpenMP threads thrash when other jobs share the cores
# (measured: the generator tests take 13 s on 1 thread, over 2 min on 2 threads under load).
torch.set_num_threads(int(os.environ.get("SAFEGEN_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SD 1.x-layout folder: 8/16-channel UNet, 2-layer CLIP, byte-level tokenizer, 32 px images."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_dir: Path) -> LoadedModel:
    """The tiny model loaded on CPU in fp32. Shared: do not modify it (load your own copy instead)."""
    return load_model(str(tiny_sd_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_ar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LlamaGen folder (fp32 safetensors, ``llamagen.json``) that ``load_model`` reads as mini-ar."""
    from tiny_models import save_random_llamagen

    return save_random_llamagen(tmp_path_factory.mktemp("tiny-ar") / "model", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Janus with a word-level tokenizer (``tiny_models.save_tiny_janus``)."""
    from tiny_models import save_tiny_janus

    return save_tiny_janus(tmp_path_factory.mktemp("tiny-janus") / "model", grid=4)


@pytest.fixture
def nan_loss(monkeypatch: pytest.MonkeyPatch):
    """``nan_loss(module, "name")``: the loss function ``module.name`` returns its result with a NaN loss."""

    def patch(module: object, name: str) -> None:
        real = getattr(module, name)

        def poisoned(*args, **kwargs):
            out = real(*args, **kwargs)
            out.loss = out.loss * float("nan")
            return out

        monkeypatch.setattr(module, name, poisoned)

    return patch
