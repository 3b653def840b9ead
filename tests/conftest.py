"""Shared fixtures: a tiny random Stable Diffusion model built from configs, offline.

``tiny_sd_dir`` is a diffusers folder (saved with safetensors) built once per session; load it with
``load_model(str(tiny_sd_dir))`` when a test changes the model (e.g. swaps its scheduler), or use the
shared, read-only ``tiny_sd`` model.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: never wait on the network

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from safegen.loader import LoadedModel, load_model, save_tiny_sd  # noqa: E402

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
