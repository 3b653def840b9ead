"""`safegen export`: LoRAs in kohya's layout, merged single-file checkpoints and merged folders that plain
diffusers and the AR loader read back to the same outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from safegen.adapters import add_peft_lora, save_adapter, save_peft_adapter, use_adapter
from safegen.cli import main
from safegen.ldm_layout import pipeline_to_ldm
from safegen.loader import load_model


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    cond = torch.randn(1, 32, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), cond, return_dict=False)[0]


def randomise_lora(module: torch.nn.Module, seed: int) -> None:
    """LoRA's up projections start at zero (a no-op); give them values so a wrong merge shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def sd_run(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SC-DPO-shaped adapter folder on the tiny SD model: rank 4, alpha 8 (scale 2), attention layers."""
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    randomise_lora(pipe.unet, 0)
    record = {"method": "scdpo", "concept": "red", "base_model": {"name": "tiny", "source": str(tiny_sd_dir)}}
    return save_adapter(pipe.unet, tmp_path_factory.mktemp("sd-run") / "run", record)


@pytest.fixture(scope="module")
def with_adapter(sd_run: Path, tiny_sd_dir: Path) -> torch.Tensor:
    model = load_model(str(tiny_sd_dir), device="cpu", dtype="fp32")
    with use_adapter(model, sd_run):
        return unet_output(model.unet)


def export(*args: str) -> int:
    return main(["export", *args])


def test_kohya_lora_loads_in_plain_diffusers_to_the_same_outputs(sd_run, tiny_sd_dir, with_adapter, tmp_path):
    from safetensors import safe_open

    file = tmp_path / "lora.safetensors"
    assert export(str(sd_run), "--format", "kohya", "--out", str(file)) == 0
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        alpha = f.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha")
    assert all(k.startswith("lora_unet_") for k in keys) and alpha.item() == 8.0
    assert {k.rsplit(".", 2)[-2] if k.endswith("weight") else "alpha" for k in keys} == {
        "lora_down",
        "lora_up",
        "alpha",
    }
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(str(file))  # diffusers' own kohya reader
    ours = unet_output(pipe.unet)
    assert not torch.allclose(ours, base, atol=1e-4)  # the LoRA does something
    assert (ours - with_adapter).abs().max().item() <= 1e-5


def test_single_file_checkpoint_reloads_to_the_same_outputs(sd_run, tiny_sd_dir, with_adapter, tmp_path):
    file = tmp_path / "merged.safetensors"
    assert export(str(sd_run), "--format", "single-file", "--out", str(file)) == 0
    loaded = StableDiffusionPipeline.from_single_file(str(file), config=str(tiny_sd_dir))
    assert (unet_output(loaded.unet) - with_adapter).abs().max().item() <= 1e-5
    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    for part in ("vae", "text_encoder"):  # untouched by the LoRA, renamed and back
        ours, theirs = getattr(loaded, part).state_dict(), getattr(base, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs if not k.endswith("position_ids"))
    image = loaded("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape[-1] == 3


def test_original_layout_round_trips_an_sd15_shaped_unet(tiny_sd_dir, tmp_path):
    """Four blocks, two layers each, attention in the first three down / last three up blocks: SD-1.5's
    structure at tiny width, renamed to the original layout and read back by diffusers' converter."""
    folder = tmp_path / "sd15-shaped"
    shutil.copytree(tiny_sd_dir, folder)
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=4,
    )
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    state = pipeline_to_ldm(pipe, torch.float32)
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in state  # first up block's upsampler
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in state  # first down block's downsampler
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "sd15.safetensors"))
    loaded = StableDiffusionPipeline.from_single_file(str(tmp_path / "sd15.safetensors"), config=str(folder))
    ours, theirs = loaded.unet.state_dict(), pipe.unet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_merged_folder_runs_in_plain_diffusers_with_default_arguments(sd_run, with_adapter, tmp_path, dtype):
    out = tmp_path / "merged"
    assert export(str(sd_run), "--format", "diffusers", "--merge", "--dtype", dtype, "--out", str(out)) == 0
    pipe = StableDiffusionPipeline.from_pretrained(str(out))  # no dtype: exactly as a user would
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape[-1] == 3
    tolerance = 1e-5 if dtype == "fp32" else 5e-2
    assert (unet_output(pipe.unet) - with_adapter).abs().max().item() <= tolerance
    assert json.loads((out / "export.json").read_text())["adapter"]["method"] == "scdpo"


def test_lora_folder_export_is_the_adapter_unchanged(sd_run, tmp_path):
    out = tmp_path / "lora"
    assert export(str(sd_run), "--format", "diffusers", "--out", str(out)) == 0
    for name in ("pytorch_lora_weights.safetensors", "adapter.json"):
        assert (out / name).read_bytes() == (sd_run / name).read_bytes()


# --------------------------------------------------------------------------- autoregressive models
@pytest.mark.parametrize("family", ["llamagen", "janus"])
def test_merged_vce_folder_generates_the_same_tokens(family, tiny_ar_dir, tiny_janus_dir, tmp_path):
    from peft import LoraConfig

    base_dir = tiny_ar_dir if family == "llamagen" else tiny_janus_dir
    model = load_model(str(base_dir), device="cpu", dtype="fp32")
    targets = ["q_proj", "v_proj"] if family == "janus" else ["wqkv", "wo"]
    peft_model = add_peft_lora(model, LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    randomise_lora(peft_model, 1)
    run = save_peft_adapter(
        peft_model, tmp_path / "run", {"method": "vce", "base_model": {"source": str(base_dir)}}
    )
    peft_model.unload()
    fresh = load_model(str(base_dir), device="cpu", dtype="fp32")
    prompts, seeds = ["a red circle", "a blue star"], [0, 1]
    plain = fresh.generate_tokens(prompts, seeds)
    with use_adapter(fresh, run):
        adapted = fresh.generate_tokens(prompts, seeds)
    assert not torch.equal(adapted, plain)  # the adapter changes what is drawn
    out = tmp_path / "merged"
    assert export(str(run), "--format", "diffusers", "--merge", "--out", str(out)) == 0
    merged = load_model(str(out), device="cpu", dtype="fp32")
    assert merged.family == family
    assert torch.equal(merged.generate_tokens(prompts, seeds), adapted)


# --------------------------------------------------------------------------- refusals
def test_refusals_are_one_line_and_write_nothing(sd_run, tiny_ar_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    cases = [
        ["--format", "kohya", "--out", str(tmp_path / "lora.bin")],  # not a .safetensors name
        ["--format", "kohya", "--merge", "--out", str(tmp_path / "k.safetensors")],
        ["--format", "diffusers", "--out", str(tmp_path / "taken")],  # exists
        ["--format", "onnx", "--out", str(tmp_path / "x")],
        ["--format", "diffusers", "--merge", "--dtype", "fp8", "--out", str(tmp_path / "y")],
    ]
    for args in cases:
        assert export(str(sd_run), *args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
    assert (
        export(str(tmp_path / "nothing"), "--format", "kohya", "--out", str(tmp_path / "z.safetensors")) == 2
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_lora_for_other_layers_is_refused_by_name(tiny_sd_dir, tmp_path):
    from safetensors.torch import save_file

    from safegen.adapters import attach_adapter
    from safegen.errors import SafegenError

    folder = tmp_path / "other"
    folder.mkdir()
    save_file(
        {
            "unet.nothing.here.lora.down.weight": torch.zeros(2, 8),
            "unet.nothing.here.lora.up.weight": torch.zeros(8, 2),
        },
        str(folder / "pytorch_lora_weights.safetensors"),
    )
    model = load_model(str(tiny_sd_dir), device="cpu", dtype="fp32")
    with pytest.raises(
        SafegenError, match="1 of its 1 UNet LoRA layers are not layers of this UNet.*nothing.here"
    ):
        attach_adapter(model, folder)


def test_the_base_model_is_found_by_name_when_its_folder_moved():
    from safegen.export import trained_on

    assert trained_on({"name": "mini", "source": "/elsewhere/safegen/assets/mini-sd"}) == "mini"
    assert trained_on({"name": "x", "source": "org/model"}) == "org/model"  # a hub id: as recorded
    assert trained_on({"source": "org/model"}) == "org/model"
    here = str(Path(__file__).parent)
    assert trained_on({"name": "mine", "source": here}) == here
