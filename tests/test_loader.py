"""Loader: local folders (the hub code path), bundled models, errors, device and dtype resolution."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import tiny_models
import torch

from safegen.bundled import BUNDLED, BundledModel, list_models
from safegen.errors import SafegenError
from safegen.files import check_safetensors
from safegen.loader import load_model, resolve_device, resolve_dtype


@pytest.fixture
def model_copy(tiny_sd_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model folder that a test may break."""
    return Path(shutil.copytree(tiny_sd_dir, tmp_path / "model"))


def test_load_local_folder(tiny_sd_dir: Path) -> None:
    model = load_model(str(tiny_sd_dir), device="cpu")
    assert (model.name, model.kind, model.source) == ("model", "sd", str(tiny_sd_dir.resolve()))
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.pipe.safety_checker is None
    assert model.unet is model.pipe.unet and model.scheduler is model.pipe.scheduler
    assert len(model.tokenizer) == 514 and model.tokenizer.model_max_length == 32
    assert model.vae_scale_factor == 4
    assert next(model.unet.parameters()).dtype == torch.float32


def test_fp16_weights_load_as_fp32_on_cpu(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """Bundled weights are stored in fp16; on CPU ``auto`` loads them in fp32."""
    fp16 = load_model(str(tiny_sd_dir), device="cpu", dtype="fp16")
    assert next(fp16.unet.parameters()).dtype == torch.float16
    fp16.pipe.save_pretrained(str(tmp_path / "fp16"), safe_serialization=True)
    model = load_model(str(tmp_path / "fp16"), device="cpu")
    assert model.dtype == torch.float32
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}


def test_list_models_has_mini() -> None:
    (mini,) = [m for m in list_models() if m["name"] == "mini"]
    assert mini["kind"] == "sd" and mini["path"].endswith("mini-sd")
    assert mini["available"] == (Path(mini["path"]) / "model_index.json").is_file()


def test_bundled_weights_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUNDLED, "mini", BundledModel("mini", "sd", "no-such-folder", "test"))
    with pytest.raises(SafegenError, match="bundled weights of 'mini' are missing"):
        load_model("mini")


def test_unknown_short_name_suggests() -> None:
    with pytest.raises(SafegenError, match="Unknown model 'minii'. Did you mean 'mini'"):
        load_model("minii")


def test_missing_folder() -> None:
    with pytest.raises(SafegenError, match="Model folder not found"):
        load_model("./no/such/model")


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(SafegenError, match="no model_index.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("component", ["vae", "tokenizer", "scheduler"])
def test_missing_component(model_copy: Path, component: str) -> None:
    shutil.rmtree(model_copy / component)
    with pytest.raises(SafegenError, match=f"no '{component}/' component"):
        load_model(str(model_copy))


def test_truncated_weights(model_copy: Path) -> None:
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(SafegenError, match=r"Corrupt weights file .*unet.*truncated"):
        load_model(str(model_copy))


def test_garbage_weights(model_copy: Path) -> None:
    (model_copy / "text_encoder" / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"
    )
    with pytest.raises(SafegenError, match=r"Corrupt weights file .*text_encoder"):
        load_model(str(model_copy))


def test_pickle_only_weights_refused(model_copy: Path) -> None:
    weights = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(SafegenError, match="only pickle weights .* safetensors only"):
        load_model(str(model_copy))


def test_empty_tokenizer(model_copy: Path) -> None:
    for file in (model_copy / "tokenizer").iterdir():
        file.unlink()
    with pytest.raises(SafegenError, match="tokenizer"):
        load_model(str(model_copy))


def test_check_safetensors_accepts_good_file(tiny_sd_dir: Path) -> None:
    check_safetensors(tiny_sd_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_hub_id_offline_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(SafegenError, match="not in the local Hugging Face cache and the hub is offline"):
        load_model("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SafegenError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(SafegenError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(SafegenError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_resolve_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("fp32", cuda) == torch.float32
    with pytest.raises(SafegenError, match="Unknown dtype 'fp8'"):
        resolve_dtype("fp8", cpu)


def test_offload_needs_cuda(tiny_sd_dir: Path) -> None:
    with pytest.raises(SafegenError, match="needs a CUDA device"):
        load_model(str(tiny_sd_dir), device="cpu", offload=True)


def test_byte_level_vocab_covers_all_bytes() -> None:
    vocab = tiny_models.byte_level_vocab()
    assert len(vocab) == 2 * 256 + 2 and len(set(vocab.values())) == len(vocab)
    assert vocab["<|endoftext|>"] == len(vocab) - 1
