"""LlamaGen in safegen: key layout, 2D RoPE, official checkpoints, the AR interface, bad input, mini-ar.

The tiny checkpoint is written as LlamaGen's trainers write theirs: ``{"model": state_dict, "steps": ...,
"args": argparse.Namespace(...)}`` for the GPT, ``{"model": state_dict}`` with the ``codebook_used`` buffer
for the VQ, under LlamaGen's file names, with a T5 encoder in ``flan-t5-xl/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from safegen.ar import ARModel, detect_ar_folder, read_state_dict
from safegen.ar import llamagen_spec as spec_of
from safegen.ar.generate import generate
from safegen.ar.llamagen import GPTConfig, LlamaGenGPT, attention_mask, left_pad, rope_table_2d
from safegen.ar.vq import VQConfig, VQModel
from safegen.bundled import BUNDLED, list_models
from safegen.errors import SafegenError
from safegen.loader import load_model
from safegen.mini.tokenizer import build_tokenizer_files
from safegen.outputs import save_images
from safegen.sampling import GenerationConfig

TINY_GPT = dict(
    dim=32,
    n_layer=1,
    n_head=4,
    multiple_of=16,
    caption_dim=16,
    vocab_size=16,
    cls_token_num=12,
    block_size=16,
)
TINY_VQ = dict(
    codebook_size=16,
    codebook_embed_dim=4,
    encoder_ch_mult=[1, 1, 1],
    decoder_ch_mult=[1, 1, 1],
    z_channels=8,
    ch=8,
    num_res_blocks=1,
    norm_groups=4,
)
IMAGE = 16  # 4 x 4 tokens; the VQ downsamples 4x
PROMPTS = ["a red striped circle", "a blue square"]


@pytest.fixture(scope="module")
def sources() -> tuple[LlamaGenGPT, VQModel]:
    torch.manual_seed(0)
    gpt = LlamaGenGPT(GPTConfig.from_dict(TINY_GPT)).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.5)  # LlamaGen zeroes it at init
    return gpt, VQModel(VQConfig.from_dict(TINY_VQ)).eval()


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory: pytest.TempPathFactory, sources) -> Path:
    """LlamaGen's file names and nesting; a tiny T5 in flan-t5-xl/ with the mini-world tokenizer."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("llamagen") / "tiny"
    t5_dir = folder / "flan-t5-xl"
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer_files(t5_dir))
    torch.manual_seed(1)
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    )
    t5.save_pretrained(t5_dir)
    write_official(folder, *(m.state_dict() for m in sources))
    return folder


def write_official(folder: Path, gpt_state: dict, vq_state: dict, spec: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(gpt_model="GPT-tiny", lr=1e-4, image_size=IMAGE)
    torch.save({"model": gpt_state, "steps": 7, "args": args}, folder / "t2i_tiny_stage1_16.pt")
    torch.save(
        {"model": {**vq_state, "quantize.codebook_used": torch.zeros(65536)}}, folder / "vq_ds4_t2i.pt"
    )
    spec = spec or {"image_size": IMAGE, "gpt": TINY_GPT, "vq": TINY_VQ}
    (folder / "llamagen.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def model(official_dir: Path) -> ARModel:
    return load_model(str(official_dir), device="cpu")


def _copy(official_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(official_dir, tmp_path / "copy"))


# --------------------------------------------------------------------------- architecture
def test_state_dict_keys_follow_llamagen(sources) -> None:
    gpt, vq = sources
    layer = [
        "attention.wqkv",
        "attention.wo",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
        "attention_norm",
        "ffn_norm",
    ]
    expected_gpt = {
        "cls_embedding.cap_proj.fc1.weight",
        "cls_embedding.cap_proj.fc2.weight",
        "cls_embedding.uncond_embedding",
        "tok_embeddings.weight",
        "norm.weight",
        "output.weight",
        *(f"layers.0.{name}.weight" for name in layer),
    }
    assert set(gpt.state_dict()) == expected_gpt
    assert gpt.state_dict()["cls_embedding.uncond_embedding"].shape == (120, 16)  # LlamaGen keeps 120 rows

    def conv(p):
        return {f"{p}.weight", f"{p}.bias"}

    def res(p):
        return set().union(*(conv(f"{p}.{n}") for n in ("norm1", "conv1", "norm2", "conv2")))

    def attn(p):
        return set().union(*(conv(f"{p}.{n}") for n in ("norm", "q", "k", "v", "proj_out")))

    def mid(p):
        return res(f"{p}.mid.0") | attn(f"{p}.mid.1") | res(f"{p}.mid.2")

    enc = "encoder.conv_blocks"
    expected_vq = (
        conv("encoder.conv_in") | conv("encoder.norm_out") | conv("encoder.conv_out") | mid("encoder")
    )
    for i in range(3):
        expected_vq |= res(f"{enc}.{i}.res.0") | (conv(f"{enc}.{i}.downsample.conv") if i < 2 else set())
    expected_vq |= attn(f"{enc}.2.attn.0")  # attention only at the lowest resolution
    dec = "decoder.conv_blocks"
    for i in range(3):
        expected_vq |= res(f"{dec}.{i}.res.0") | res(f"{dec}.{i}.res.1")
        expected_vq |= conv(f"{dec}.{i}.upsample.conv") if i < 2 else set()
    expected_vq |= attn(f"{dec}.0.attn.0") | attn(f"{dec}.0.attn.1") | mid("decoder")
    expected_vq |= conv("decoder.conv_in") | conv("decoder.norm_out") | conv("decoder.conv_out")
    expected_vq |= {"quantize.embedding.weight"} | conv("quant_conv") | conv("post_quant_conv")
    assert set(vq.state_dict()) == expected_vq


def test_rope_table_turns_rows_then_columns() -> None:
    # head size 4: one frequency (1.0) for the row and one for the column; one caption position of zeros
    table = rope_table_2d(GPTConfig(dim=8, n_head=2, cls_token_num=1, block_size=4, multiple_of=8, n_layer=1))
    assert table.shape == (5, 2, 2)
    assert torch.equal(table[0], torch.zeros(2, 2))
    cells = {(0, 0): (0.0, 0.0), (0, 1): (0.0, 1.0), (1, 0): (1.0, 0.0), (1, 1): (1.0, 1.0)}
    for k, (r, c) in enumerate(cells.values()):
        expected = torch.tensor([[np.cos(r), np.sin(r)], [np.cos(c), np.sin(c)]], dtype=torch.float32)
        assert torch.allclose(table[1 + k], expected, atol=1e-6)


def test_left_pad_moves_valid_positions_last() -> None:
    features = torch.tensor([[[1.0], [2.0], [3.0], [9.0]], [[5.0], [9.0], [9.0], [9.0]]])  # 9 = padding
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    moved, new_mask = left_pad(features, mask)
    assert moved.squeeze(-1).tolist() == [[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 5.0]]
    assert new_mask.tolist() == [[False, True, True, True], [False, False, False, True]]


def test_attention_mask_hides_padding_but_not_self() -> None:
    mask = attention_mask(torch.tensor([[False, True, True]]), torch.arange(3))[0, 0]
    assert mask.int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


# --------------------------------------------------------------------------- official-format checkpoint
def test_official_checkpoint_loads_unchanged(model: ARModel, sources, official_dir: Path) -> None:
    gpt, vq = sources
    assert detect_ar_folder(official_dir) == "llamagen"
    assert model.kind == "ar" and model.family == "llamagen" and model.name == "tiny"
    assert (model.n_tokens, model.image_size) == (16, IMAGE)
    for mine, theirs in ((model.backbone.gpt, gpt), (model.vq, vq)):
        loaded = mine.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in theirs.state_dict().items())
    assert type(model.backbone.text.encoder).__name__ == "T5EncoderModel"  # from flan-t5-xl/


def test_official_names_give_llamagen_defaults(tmp_path: Path) -> None:
    for name in ("t2i_XL_stage1_256.pt", "vq_ds16_t2i.pt"):
        (tmp_path / name).write_bytes(b"")
    assert detect_ar_folder(tmp_path) == "llamagen"
    spec = spec_of(tmp_path)
    gpt, vq = spec["gpt_config"], spec["vq_config"]
    assert (gpt.n_layer, gpt.n_head, gpt.dim, gpt.block_size, gpt.cls_token_num, gpt.caption_dim) == (
        36,
        20,
        1280,
        256,
        120,
        2048,
    )
    assert gpt.ffn_hidden == 3584  # 2/3 * 4 * 1280 rounded up to 256
    assert (vq.codebook_size, vq.codebook_embed_dim, vq.downsample) == (16384, 8, 16)
    assert spec["text"] == {"kind": "t5", "max_length": 120, "path": "google/flan-t5-xl"}
    (tmp_path / "t5-ckpt" / "flan-t5-xl").mkdir(parents=True)
    assert spec_of(tmp_path)["text"]["path"] == str(tmp_path / "t5-ckpt" / "flan-t5-xl")


def test_state_dict_nesting_and_prefixes(tmp_path: Path) -> None:
    weight = torch.ones(2)
    torch.save({"state_dict": {"_orig_mod.norm.weight": weight, "freqs_cis": weight}}, tmp_path / "a.pt")
    assert list(read_state_dict(tmp_path / "a.pt")) == ["norm.weight"]
    torch.save({"optimizer": {}, "steps": 3}, tmp_path / "b.pt")
    with pytest.raises(SafegenError, match="no state dict under model, module, state_dict"):
        read_state_dict(tmp_path / "b.pt")


# --------------------------------------------------------------------------- bad input
def test_missing_and_unexpected_keys_are_named(official_dir: Path, tmp_path: Path, sources, capsys) -> None:
    from safegen.cli import main

    folder = _copy(official_dir, tmp_path)
    state = dict(sources[0].state_dict())
    state.pop("norm.weight")
    state["layers.0.extra.weight"] = torch.zeros(1)
    write_official(folder, state, sources[1].state_dict())
    with pytest.raises(
        SafegenError, match=r"missing keys norm.weight; unexpected keys layers.0.extra.weight"
    ):
        load_model(str(folder), device="cpu")
    assert main(["generate", "a red circle", "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing keys norm.weight" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_is_named(official_dir: Path, tmp_path: Path, sources) -> None:
    folder = _copy(official_dir, tmp_path)
    state = {**sources[0].state_dict(), "norm.weight": torch.ones(7)}
    write_official(folder, state, sources[1].state_dict())
    with pytest.raises(SafegenError, match=r"norm.weight has shape \(7,\) in the checkpoint but \(32,\)"):
        load_model(str(folder), device="cpu")


def test_pickled_objects_are_refused(official_dir: Path, tmp_path: Path) -> None:
    folder = _copy(official_dir, tmp_path)
    torch.save({"model": torch.nn.Linear(2, 2)}, folder / "t2i_tiny_stage1_16.pt")
    with pytest.raises(
        SafegenError, match=r"not a plain state dict \(it pickles torch.nn.modules.linear.Linear\)"
    ):
        load_model(str(folder), device="cpu")


def test_codebook_size_mismatch_is_an_error(official_dir: Path, tmp_path: Path, sources) -> None:
    folder = _copy(official_dir, tmp_path)
    spec = {"image_size": IMAGE, "gpt": TINY_GPT, "vq": {**TINY_VQ, "codebook_size": 8}}
    (folder / "llamagen.json").write_text(json.dumps(spec))
    with pytest.raises(SafegenError, match="GPT predicts 16 image codes but the VQ tokenizer has 8"):
        load_model(str(folder), device="cpu")


def test_unknown_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(SafegenError, match="not a model folder safegen knows.*LlamaGen.*janus"):
        load_model(str(tmp_path))


def test_mini_ar_is_listed_and_explains_missing_weights() -> None:
    (row,) = [m for m in list_models() if m["name"] == "mini-ar"]
    assert row["kind"] == "ar" and row["available"] == (Path(row["path"]) / "llamagen.json").is_file()
    if not BUNDLED["mini-ar"].available:
        with pytest.raises(SafegenError, match="'mini-ar' are not trained yet"):
            load_model("mini-ar")


# --------------------------------------------------------------------------- the AR interface
def test_generate_returns_records_the_outputs_module_saves(model: ARModel, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    images = generate(model, PROMPTS, seeds=[5, 6], progress=lambda d, t: seen.append((d, t)))
    assert [(im.prompt, im.seed, im.image.size) for im in images] == [
        (PROMPTS[0], 5, (16, 16)),
        (PROMPTS[1], 6, (16, 16)),
    ]
    assert seen[-1] == (32, 32) and images[0].info["sampling"]["top_k"] == 1000
    again = generate(model, PROMPTS[1:], seeds=[6], output_type="np")[0].image
    assert np.array_equal(np.asarray(images[1].image), again)  # same prompt and seed, other batch
    paths = save_images(images, tmp_path, {"model": model.name})
    assert [p.name for p in paths] == ["00000_seed5.png", "00001_seed6.png"]


def test_generate_refuses_what_ar_models_cannot_do(model: ARModel) -> None:
    with pytest.raises(SafegenError, match="Guard 'sp' acts inside a diffusion loop"):
        generate(model, PROMPTS, guard="sp")
    with pytest.raises(SafegenError, match="generates 16 px images; got height=64"):
        generate(model, PROMPTS, config=GenerationConfig(height=64))
    with pytest.raises(SafegenError, match="Prompt 1 is empty"):
        generate(model, ["a", " "])


def test_token_logprobs_teacher_forced_without_dropout(model: ARModel) -> None:
    gpt = model.backbone.gpt
    tokens = torch.randint(0, 16, (2, 16))
    with torch.no_grad():
        prefix = model.encode_prompts(PROMPTS)
        expected = torch.log_softmax(gpt(prefix.embeds, prefix.mask, tokens[:, :-1]), -1)
    expected = expected.gather(-1, tokens[..., None]).squeeze(-1)
    gpt.train()
    for module in gpt.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    try:
        first = model.token_logprobs(PROMPTS, tokens)
        second = model.token_logprobs(PROMPTS, tokens)
        assert gpt.training and gpt.tok_dropout.training  # modes restored
        assert first.shape == (2, 16) and torch.equal(first, second)
        assert torch.allclose(first, expected, atol=1e-5)
        first.mean().backward()
        assert gpt.output.weight.grad is not None and gpt.output.weight.grad.abs().sum() > 0
    finally:
        gpt.zero_grad(set_to_none=True)
        gpt.eval()
        for module in gpt.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0


def test_encode_images_round_trip_shapes(model: ARModel) -> None:
    tokens = model.generate_tokens(PROMPTS, [0, 1])
    images = model.decode(tokens)
    assert images.shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.uint8
    assert model.encode_images(list(images)).shape == (2, 16)
    with pytest.raises(SafegenError, match="takes 16x16 RGB images"):
        model.encode_images([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(SafegenError, match=r"shape \(B, 16\)"):
        model.decode(tokens[:, :3])


# --------------------------------------------------------------------------- mini-ar training script
def test_train_ar_runs_resumes_and_exports(tmp_path: Path) -> None:
    from safegen.mini import train_ar
    from safegen.mini.data import render_set

    data = render_set(8, seed=0, workers=1)
    train_ar.train_vq(data, tmp_path, "tiny", minutes=5, steps=2, batch=4)
    train_ar.train_gpt(data, tmp_path, "tiny", minutes=5, steps=2, batch=4)
    train_ar.train_gpt(data, tmp_path, "tiny", minutes=5, steps=1, batch=4, resume=True)
    assert json.loads((tmp_path / "gpt" / "state.json").read_text()) == {"step": 3}
    codes = train_ar.load_file(str(tmp_path / "codes.safetensors"))  # cached for the VQ of step 2
    assert int(codes["vq_step"]) == 2 and codes["codes"].shape == (8, 16)
    train_ar.train_vq(data, tmp_path, "tiny", minutes=5, steps=1, batch=4, resume=True)
    vq = train_ar.VQModel(train_ar.VQConfig.from_dict(train_ar.PRESETS["tiny"]["vq"]))
    train_ar.load_modules(tmp_path / "vq", vq=vq)
    fresh = train_ar.cached_codes(vq, data, tmp_path, 3)  # a new VQ checkpoint: codes made again
    assert torch.equal(fresh, train_ar.tokenize_set(vq, data).long())
    assert int(train_ar.load_file(str(tmp_path / "codes.safetensors"))["vq_step"]) == 3
    folder = train_ar.export(tmp_path, "tiny", tmp_path / "export")
    loaded = load_model(str(folder), device="cpu")
    assert (loaded.image_size, loaded.n_tokens) == (64, 16)
    assert loaded.backbone.gpt.tok_embeddings.weight.dtype == torch.float32  # fp16 on disk, fp32 on CPU
    assert read_state_dict(folder / "gpt.safetensors")["output.weight"].dtype == torch.float16
    assert generate(loaded, ["a red circle"])[0].image.size == (64, 64)
