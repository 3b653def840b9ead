"""VCE end to end on tiny random autoregressive models: losses, pairs, training, adapters, resume, CLI.

One small run (``run``) on a tiny LlamaGen is built once per module and inspected by several tests; the
others reuse its ``pairs/`` folder (``pairs_dir=``), so the whole file stays fast.
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from safegen.cli import main
from safegen.concepts import get_concept, mentions, rewrite
from safegen.errors import SafegenError
from safegen.loader import load_model
from safegen.options import describe, load
from safegen.recipes import vce
from safegen.recipes.losses import average_logprob, corrupt_tokens, dpo_loss, token_keep_mask, vce_loss
from safegen.recipes.training import adapters_disabled
from safegen.recipes.vce import add_ar_lora, run_vce
from safegen.recipes.vce_config import VCEConfig

TRL_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
TINY = dict(
    n_harmful_prompts=3,
    seeds_per_prompt=2,
    n_clean_prompts=3,
    steps=4,
    batch_size=4,
    retain_batch_size=2,
    retain_weight=1.0,  # ten times the default, so that four steps show it
    save_every=2,
    keep_checkpoints=0,
    lr=1e-2,
    warmup_steps=1,
    lora_rank=2,
    lora_alpha=4.0,
)


def tiny_config(**overrides) -> VCEConfig:
    return VCEConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def run(tiny_ar_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vce") / "run"
    result = run_vce("red", model=str(tiny_ar_dir), config=tiny_config(), out=out, device="cpu")
    return out, result


@pytest.fixture(scope="module")
def model(tiny_ar_dir):
    """The tiny LlamaGen, loaded once; tests that attach an adapter detach it again."""
    return load_model(str(tiny_ar_dir), device="cpu")


def reuse(run_dir: Path, **overrides) -> VCEConfig:
    return tiny_config(pairs_dir=str(run_dir / "pairs"), **overrides)


def pair_margin(model, folder: Path) -> float:
    """Mean over the training pairs of a(y_s | p) - a(y_u | p) under ``model`` as it is."""
    from safegen.recipes.vce_pairs import TokenPairs

    data = TokenPairs(folder / "pairs", model)
    with torch.no_grad():
        safe = average_logprob(model.token_logprobs(data.prompts, data.safe))
        unsafe = average_logprob(model.token_logprobs(data.prompts, data.unsafe))
    return float((safe - unsafe).mean())


# --------------------------------------------------------------------------- losses, by hand
def test_dpo_loss_by_hand():
    # beta 2, log-ratios 0.5 and -0.5: z = 2 * (0.5 + 0.5) = 2, loss = log(1 + e^-2)
    assert dpo_loss(torch.tensor([0.5]), torch.tensor([-0.5]), beta=2.0).item() == pytest.approx(0.1269280110)
    assert dpo_loss(torch.tensor([0.5]), torch.tensor([-0.5]), 2.0, margin=1.0).item() == pytest.approx(
        math.log(1 + math.exp(-1))
    )
    assert dpo_loss(torch.zeros(3), torch.zeros(3), beta=7.0).tolist() == pytest.approx([math.log(2)] * 3)


def test_vce_loss_by_hand():
    # pair 0: the policy likes the safe image more than the reference does (z = +2); pair 1: the reverse
    out = vce_loss(
        avg_chosen=torch.tensor([-1.0, -2.0]),
        avg_rejected=torch.tensor([-2.0, -1.0]),
        ref_chosen=torch.tensor([-1.5, -1.5]),
        ref_rejected=torch.tensor([-1.5, -1.5]),
        beta=2.0,
    )
    assert out.logits.tolist() == pytest.approx([2.0, -2.0])
    assert out.rewards_chosen.tolist() == pytest.approx([1.0, -1.0])
    assert out.rewards_rejected.tolist() == pytest.approx([-1.0, 1.0])
    # (log(1 + e^-2) + log(1 + e^2)) / 2
    assert out.loss.item() == pytest.approx((0.1269280110 + 2.1269280110) / 2)


def test_token_level_average_and_token_drop_exclude_positions():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    assert average_logprob(logp).item() == pytest.approx(-2.5)
    assert average_logprob(logp, torch.tensor([[True, False, True, False]])).item() == pytest.approx(-2.0)
    gen = torch.Generator().manual_seed(0)
    keep = token_keep_mask(64, 20, 0.25, gen)
    assert keep.shape == (64, 20) and (keep.sum(1) == 15).all()  # exactly 5 of 20 dropped, per row
    assert len({tuple(row.tolist()) for row in keep}) > 1  # a different subset per row
    assert token_keep_mask(2, 4, 0.99, gen).sum(1).tolist() == [1, 1]  # never an empty average
    assert token_keep_mask(2, 4, 0.0, gen).all()
    # a dropped position does not move the average, whatever its log-probability
    spoiled = torch.randn(64, 20).where(keep, torch.full((64, 20), -1e9))
    assert torch.allclose(average_logprob(spoiled, keep), average_logprob(spoiled.where(keep, 0.0), keep))
    tokens = torch.randint(16, (8, 20), generator=gen)
    corrupted = corrupt_tokens(tokens, 0.5, 10_000, gen)
    changed = (corrupted != tokens).sum(1)
    assert (changed <= 10).all() and changed.sum() > 60  # 10 positions redrawn per row (rarely the same code)


# --------------------------------------------------------------------------- config and inputs
def test_config_layers_and_validation(tmp_path):
    file = tmp_path / "v.yaml"
    file.write_text("beta: 10\ntoken_drop: 0\n")
    cfg = load(VCEConfig, "VCE", file, ["token_drop_mode=corrupt", "retain_weight=0"], {"steps": 7})
    assert (cfg.beta, cfg.token_drop, cfg.token_drop_mode, cfg.retain_weight, cfg.steps) == (
        10.0,
        0.0,
        "corrupt",
        0.0,
        7,
    )
    for bad, words in [
        (["token_drop=1.5"], "token_drop must be in"),
        (["betta=1"], "Did you mean 'beta'"),
        (["rewriter=llm"], "must be one of rule, caption, file"),
        (["lora_rank=two"], "lora_rank must be an integer"),
    ]:
        with pytest.raises(SafegenError, match=words):
            load(VCEConfig, "VCE", None, bad)
    assert {r["name"] for r in describe(VCEConfig)} >= {"beta", "token_drop", "rewriter", "pair_filter"}


def test_reference_is_the_model_with_adapters_disabled(tiny_ar_dir):
    model = load_model(str(tiny_ar_dir), device="cpu")
    tokens = model.generate_tokens(["a red circle", "a blue star"], [0, 1])
    prompts = ["a red circle", "a blue star"]
    with torch.no_grad():
        base = model.token_logprobs(prompts, tokens)
    peft_model, params = add_ar_lora(model, rank=2, alpha=2.0, targets="attn", seed=0)
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    with torch.no_grad():
        assert torch.equal(model.token_logprobs(prompts, tokens), base)  # LoRA B = 0: zero log-ratio at init
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p)
        trained = model.token_logprobs(prompts, tokens)
        assert not torch.allclose(trained, base)
        with pytest.raises(RuntimeError), adapters_disabled(peft_model):
            assert torch.allclose(model.token_logprobs(prompts, tokens), base)  # the reference, no copy
            raise RuntimeError("boom")
        assert torch.allclose(model.token_logprobs(prompts, tokens), trained)  # back on after the error


# --------------------------------------------------------------------------- the run
def test_pairs_differ_only_in_the_concept_under_the_same_seed(run, model):
    out, result = run
    rows = [json.loads(r) for r in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    red = get_concept("red")
    assert len(rows) == 6 and all(r["kept"] for r in rows)
    named = [mentions(r["prompt"], red) for r in rows]
    assert any(named) and not all(named)  # keyword captions, and keyword-free ones (implicit, unprompted)
    for r, says_red in zip(rows, named, strict=True):
        if says_red:  # the keyword rewritten
            assert r["safe_prompt"] == rewrite(r["prompt"], red) and "green" in r["safe_prompt"]
        else:  # the same caption, the concept as its negative condition
            assert r["safe_prompt"] == r["prompt"] and r["negative"] == "red"
    tokens = load_file(str(out / "pairs" / "tokens.safetensors"))
    assert tokens["unsafe"].shape == tokens["safe"].shape == (6, 16)
    assert tokens["retain"].shape == (3 * 2, 16)  # 3 clean prompts x retain_seeds (2 by default)
    seeds = [r["seed"] for r in rows]
    assert torch.equal(model.generate_tokens([r["prompt"] for r in rows], seeds), tokens["unsafe"])
    for negative in ("red", None):
        idx = [i for i, r in enumerate(rows) if r.get("negative") == negative]
        negatives = [negative] * len(idx) if negative else None
        safe = model.generate_tokens([rows[i]["safe_prompt"] for i in idx], [seeds[i] for i in idx],
                                     negative_prompts=negatives)  # fmt: skip
        assert torch.equal(safe, tokens["safe"][idx])
    retain = [json.loads(r) for r in (out / "pairs" / "retain.jsonl").read_text().splitlines()]
    assert (
        len(retain) == 6 and len({r["prompt"] for r in retain}) == 3 and len({r["seed"] for r in retain}) == 6
    )
    assert not any(" red" in r["prompt"] for r in retain)
    base = model.generate_tokens([r["prompt"] for r in retain], [r["seed"] for r in retain])
    assert torch.equal(base, tokens["retain"])  # the base model's own samples, one per prompt and seed
    manifest = json.loads((out / "pairs" / "manifest.json").read_text())
    assert (
        manifest["n_pairs"] == 6
        and manifest["rewriter"] == "rule"
        and result["stages"]["pairs"]["n_pairs"] == 6
    )


def test_run_writes_log_checkpoints_and_a_peft_adapter(run):
    out, result = run
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(n in log[0] for n in (*TRL_NAMES, "logps/chosen", "logps/rejected", "nll_loss", "grad_norm"))
    # LoRA B starts at 0: policy == reference, so the DPO term is log 2 at step 1 (plus the retain NLL)
    assert log[0]["nll_loss"] > 0  # the retain term ran
    assert log[0]["loss"] - log[0]["nll_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert log[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    dpo = [r["loss"] - r["nll_loss"] for r in log]  # the retain NLL is read on a new random batch each step
    assert dpo[-1] < dpo[0] and log[-1]["rewards/margins"] > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["method"] == "vce" and manifest["family"] == "llamagen"
    record = json.loads((out / "adapter.json").read_text())
    assert record["method"] == "vce" and record["concept"] == "red" and record["steps"] == 4
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_dropout"] == 0.0
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # training moved the LoRA
    last = load_file(str(out / "checkpoints" / "step-0000004" / "adapter_model.safetensors"))
    assert weights.keys() == last.keys() and all(torch.equal(weights[k], last[k]) for k in weights)


def test_training_moves_log_probs_toward_the_safe_image(run, model):
    from safegen.adapters import use_adapter

    out, _ = run
    before = pair_margin(model, out)
    with use_adapter(model, out) as record:
        after = pair_margin(model, out)
    assert record["method"] == "vce"
    assert after > before + 0.05  # a(y_s | p) - a(y_u | p) grew: the unsafe prompt now prefers the safe image
    assert pair_margin(model, out) == pytest.approx(before, abs=1e-6)  # detached again


def test_plain_peft_loads_the_adapter(run, tiny_ar_dir):
    from peft import PeftModel

    from safegen.adapters import use_adapter

    out, _ = run
    fresh = load_model(str(tiny_ar_dir), device="cpu")
    tokens = fresh.generate_tokens(["a red square"], [3])
    with torch.no_grad():
        prefix = fresh.encode_prompts(["a red square"])
        base_logits = fresh.backbone.gpt(prefix.embeds, prefix.mask, tokens[:, :-1])
        peft_model = PeftModel.from_pretrained(fresh.backbone.gpt, str(out))  # plain peft, nothing of safegen
        peft_logits = peft_model(prefix.embeds, prefix.mask, tokens[:, :-1])
    assert not torch.allclose(peft_logits, base_logits)
    other = load_model(str(tiny_ar_dir), device="cpu")
    with torch.no_grad(), use_adapter(other, out):
        ours = other.backbone.gpt(prefix.embeds, prefix.mask, tokens[:, :-1])
    assert torch.allclose(ours, peft_logits, atol=1e-5)


def test_resume_is_exact(run, tiny_ar_dir, tmp_path):
    first, _ = run
    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    model = str(tiny_ar_dir)
    result = run_vce("red", model=model, config=tiny_config(steps=6), out=resumed, resume=True, device="cpu")
    assert result["stages"]["train"]["resumed_from"] == 4 and result["stages"]["pairs"]["reused"]
    steps = [json.loads(r)["step"] for r in (resumed / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    fresh = tmp_path / "fresh"
    run_vce("red", model=model, config=reuse(first, steps=6), out=fresh, device="cpu")
    a, b = (load_file(str(f / "adapter_model.safetensors")) for f in (resumed, fresh))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_run_folder_rules(run, tiny_ar_dir, tmp_path):
    first, _ = run
    model = str(tiny_ar_dir)
    with pytest.raises(SafegenError, match="not empty"):
        run_vce("red", model=model, config=tiny_config(), out=first, device="cpu")
    with pytest.raises(SafegenError, match="other settings for beta"):
        run_vce("red", model=model, config=tiny_config(beta=1.0), out=first, resume=True, device="cpu")
    with pytest.raises(SafegenError, match="is for 'red', not 'blue'"):
        run_vce("blue", model=model, config=reuse(first), out=tmp_path / "y", device="cpu")
    assert not (tmp_path / "y").exists()


def test_nan_loss_stops_with_a_clear_error(run, tiny_ar_dir, tmp_path, nan_loss):
    first, _ = run
    nan_loss(vce, "vce_loss")
    with pytest.raises(SafegenError, match="VCE loss is NaN or infinite at step 1.*lower lr or beta"):
        run_vce("red", model=str(tiny_ar_dir), config=reuse(first), out=tmp_path / "n", device="cpu")
    assert not (tmp_path / "n" / "adapter_model.safetensors").exists()


def test_corrupt_mode_and_no_retain_train(run, tiny_ar_dir, tmp_path):
    first, _ = run
    cfg = reuse(first, steps=2, token_drop_mode="corrupt", token_drop=0.3, retain_weight=0.0)
    result = run_vce("red", model=str(tiny_ar_dir), config=cfg, out=tmp_path / "c", device="cpu")
    final = result["stages"]["train"]["final"]
    assert final["nll_loss"] == 0.0 and math.isfinite(final["loss"])


def test_rpo_alpha_adds_the_chosen_nll(run, tiny_ar_dir, tmp_path):
    first, _ = run
    cfg = reuse(first, steps=1, rpo_alpha=0.5)
    run_vce("red", model=str(tiny_ar_dir), config=cfg, out=tmp_path / "r", device="cpu")
    row = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])
    # step 1: policy == reference, so L = log 2 + retain_weight * L_retain - rpo_alpha * a_th(y_s | p)
    expected = math.log(2) + row["nll_loss"] - 0.5 * row["logps/chosen"]
    assert row["logps/chosen"] < 0 and row["loss"] == pytest.approx(expected, abs=1e-5)


def test_prefix_attack_stays_in_its_radius_and_raises_the_unsafe_image(model):
    """vce_adversarial.py (A1)-(A3): the shift is within eps x RMS per position, zero at padding, the same
    for chosen and rejected rows, and raises a(y_u) - a(y_s) over the unshifted prompt."""
    from safegen.recipes.losses import average_logprob
    from safegen.recipes.vce_adversarial import prefix_attack, prefix_radius

    prompts = ["a red circle", "a striped red square"]
    targets = model.generate_tokens(prompts * 2, [0, 1, 2, 3])  # rows 0-1 "safe", 2-3 "unsafe"
    shift = prefix_attack(model, prompts, targets, None, None, eps=0.5, steps=3, lr=0.5)
    radius = prefix_radius(model, prompts, 0.5)
    assert shift.shape[0] == 4 and torch.equal(shift[:2], shift[2:])
    assert (shift[:2].abs() <= radius + 1e-6).all() and shift.abs().sum() > 0
    assert (shift[:2][(radius == 0).expand_as(shift[:2])] == 0).all()

    def gain(s):
        with torch.no_grad():
            avg = average_logprob(model.token_logprobs(prompts * 2, targets, shift=s))
        return float((avg[2:] - avg[:2]).mean())

    assert gain(shift) > gain(None)
    with pytest.raises(SafegenError, match="does not fit"):
        model.token_logprobs(prompts, targets[:2], shift=torch.zeros(3, 1, shift.shape[2]))


def test_adversarial_training_runs_and_is_recorded(run, tiny_ar_dir, tmp_path):
    first, _ = run
    cfg = reuse(first, steps=2, adv_steps=2, adv_eps=0.5)
    result = run_vce("red", model=str(tiny_ar_dir), config=cfg, out=tmp_path / "adv", device="cpu")
    assert math.isfinite(result["stages"]["train"]["final"]["loss"])
    plain = run_vce(
        "red", model=str(tiny_ar_dir), config=reuse(first, steps=2), out=tmp_path / "p", device="cpu"
    )
    assert result["stages"]["train"]["final"]["loss"] != plain["stages"]["train"]["final"]["loss"]
    manifest = json.loads((tmp_path / "adv" / "manifest.json").read_text())
    assert '"adv_steps": 2' in json.dumps(manifest)


# --------------------------------------------------------------------------- rewriters and filter
def test_pairs_file_rows_and_image_pairs(tiny_ar_dir, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("u.png", "s.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    rows = [
        {"prompt": "a red star", "safe_prompt": "a blue star", "seed": 5},
        {"prompt": "a red heart", "safe_prompt": "a yellow heart"},
        {"prompt": "a red cross", "unsafe_image": "u.png", "safe_image": "s.png"},
    ]
    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(rewriter="file", pairs_file=str(file), seeds_per_prompt=2, n_clean_prompts=1)
    result = run_vce(
        "red", model=str(tiny_ar_dir), config=cfg, out=tmp_path / "f", stage="pairs", device="cpu"
    )
    assert result["stages"]["pairs"]["n_pairs"] == 4 and "train" not in result["stages"]
    written = [json.loads(r) for r in (tmp_path / "f" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["safe_prompt"]) for r in written][:3] == [
        ("a red star", "a blue star"),
        ("a red heart", "a yellow heart"),
        ("a red heart", "a yellow heart"),
    ]
    assert written[0]["seed"] == 5 and written[3]["unsafe_image"].endswith("u.png")
    model = load_model(str(tiny_ar_dir), device="cpu")
    tokens = load_file(str(tmp_path / "f" / "pairs" / "tokens.safetensors"))
    assert torch.equal(tokens["unsafe"][3], model.encode_images([Image.open(tmp_path / "u.png")])[0])
    assert not (tmp_path / "f" / "adapter_model.safetensors").exists()


def test_caption_rewriter_through_clip_interrogator(tiny_ar_dir, tmp_path, monkeypatch):
    captions = []

    class Interrogator:
        def __init__(self, config):
            self.config = config

        def generate_caption(self, image):
            captions.append(image.size)
            return "a red square on a table"

    fake = types.ModuleType("clip_interrogator")
    fake.__spec__ = importlib.machinery.ModuleSpec("clip_interrogator", None)
    fake.Config = lambda **kw: kw
    fake.Interrogator = Interrogator
    monkeypatch.setitem(sys.modules, "clip_interrogator", fake)
    cfg = tiny_config(rewriter="caption", n_harmful_prompts=1, n_clean_prompts=0, save_pair_images=True)
    run_vce("red", model=str(tiny_ar_dir), config=cfg, out=tmp_path / "cap", stage="pairs", device="cpu")
    rows = [json.loads(r) for r in (tmp_path / "cap" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert [r["safe_prompt"] for r in rows] == ["a green square on a table"] * 2 and captions == [
        (64, 64)
    ] * 2
    assert len(list((tmp_path / "cap" / "pairs" / "images").glob("*.png"))) == 2


def test_colour_filter_is_a_pixel_heuristic_not_the_evaluator(tiny_ar_dir, tmp_path):
    from safegen.recipes.prompts import StageContext, resolve_target
    from safegen.recipes.vce_pairs import make_filter

    concept, mini = resolve_target("red", "mini-ar")
    detect = make_filter(StageContext(tiny_config(pair_filter="colour"), concept, mini, model=None))
    red, green = np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 220
    green[..., 1] = 200
    scores, shows = detect(np.concatenate([red, green]))
    assert shows.tolist() == [True, False] and scores[0] == 1.0
    cfg = tiny_config(pair_filter="colour", filter_threshold=0.0)  # every image "shows" red: no pair kept
    with pytest.raises(SafegenError, match="No pair passed pair_filter=colour"):
        run_vce("red", model=str(tiny_ar_dir), config=cfg, out=tmp_path / "flt", stage="pairs", device="cpu")


def test_the_evaluator_is_never_imported_by_the_method():
    import ast

    root = Path(__file__).parents[1] / "safegen"
    for name in ("vce.py", "vce_pairs.py", "vce_config.py", "prompts.py", "training.py"):
        tree = ast.parse((root / "recipes" / name).read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not any("mini.classifier" in (m or "") for m in imported), name


# --------------------------------------------------------------------------- Janus
def test_janus_tiny_config_trains_and_loads(tiny_janus_dir, tmp_path):
    from safegen.adapters import use_adapter

    out = tmp_path / "janus"
    cfg = tiny_config(steps=2, n_harmful_prompts=2, n_clean_prompts=2, lora_targets="attn-ff")
    result = run_vce("red", model=str(tiny_janus_dir), config=cfg, out=out, device="cpu")
    assert result["stages"]["train"]["steps"] == 2
    keys = load_file(str(out / "adapter_model.safetensors")).keys()
    assert any("language_model.layers.0.self_attn.q_proj.lora_A" in k for k in keys)
    assert any("mlp.down_proj.lora_B" in k for k in keys) and not any("vision" in k for k in keys)
    model = load_model(str(tiny_janus_dir), device="cpu")
    tokens = model.generate_tokens(["a red circle"], [0])
    with torch.no_grad():
        base = model.token_logprobs(["a red circle"], tokens)
        with use_adapter(model, out):
            adapted = model.token_logprobs(["a red circle"], tokens)
        assert not torch.allclose(adapted, base)
        assert torch.equal(model.token_logprobs(["a red circle"], tokens), base)


# --------------------------------------------------------------------------- CLI
def test_cli_erase_generate_and_bench(run, tiny_ar_dir, tmp_path, capsys):
    first, _ = run
    out = tmp_path / "cli-run"
    args = ["erase", "--method", "vce", "--concept", "red", "--model", str(tiny_ar_dir), "--steps", "1"]
    args += ["--set", f"pairs_dir={first / 'pairs'}", "--set", "lora_rank=2", "--out", str(out)]
    assert main([*args, "--device", "cpu", "--json"]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["stages"]["train"]["steps"] == 1 and result["adapter"] == str(out)
    images = tmp_path / "images"
    args = ["generate", "a red circle", "--model", str(tiny_ar_dir), "--adapter", str(out)]
    assert main([*args, "--out", str(images), "--device", "cpu"]) == 0, capsys.readouterr().err
    record = json.loads((images / "generation.jsonl").read_text().splitlines()[0])
    assert record["adapter"] == str(out)
    args = ["generate", "a red circle", "--model", str(tiny_ar_dir), "--adapter", str(first)]
    assert main([*args, "--out", str(tmp_path / "again"), "--device", "cpu"]) == 0
    assert (images / "00000_seed0.png").read_bytes() != (tmp_path / "again" / "00000_seed0.png").read_bytes()
    from safegen.bench.mini import run_bench_mini

    bench = run_bench_mini(
        model=str(tiny_ar_dir), concept="red", adapter=str(first), images_per_prompt=1, device="cpu"
    )
    assert bench["adapter"] == str(first) and set(bench["erasure"]) >= {
        "ua",
        "ira",
        "cra",
        "synonym_ua",
        "base",
    }


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--concept", "nudity", "--model", "mini-ar"], "mini world has no concept 'nudity'"),
        (["--concept", "red", "--set", "beta=-1"], "VCE option beta must be in"),
        (["--concept", "red", "--set", "rewriter=caption"], "optional extra.*safegen\\[caption\\]"),
        (["--concept", "red", "--set", "rewriter=file"], "needs --set pairs_file"),
        (["--concept", "red", "--set", "pairs_file=x.jsonl"], "add --set rewriter=file"),
        (["--concept", "red", "--stage", "cost"], "--stage cost is not a stage of vce"),
        (["--concept", "red", "--merge"], "--merge is not available for vce"),
        (["--concept", "circle", "--set", "pair_filter=colour"], "mini-world colours only"),
        (["--concept", "red", "--set", "pair_filter=nudenet"], "judges nudity.*'red' is another"),
        (["--concept", "red", "--set", "pair_filter=opennsfw"], "judges nudity.*'red' is another"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(extra, words, tiny_ar_dir, tmp_path, capsys):
    out = tmp_path / "never"
    args = ["erase", "--method", "vce", "--model", str(tiny_ar_dir), "--out", str(out), "--device", "cpu"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err), err
    assert not out.exists()


def test_vce_refuses_diffusion_models_and_lists_options(tiny_sd_dir, tmp_path, capsys):
    args = ["erase", "--method", "vce", "--concept", "red", "--model", str(tiny_sd_dir)]
    assert main([*args, "--out", str(tmp_path / "sd"), "--device", "cpu"]) == 2
    assert "autoregressive models" in capsys.readouterr().err and not (tmp_path / "sd").exists()
    assert main(["erase", "--method", "vce", "--options"]) == 0
    text = capsys.readouterr().out
    assert "token_drop" in text and "VCE options" in text


def test_memory_script_loads():
    import importlib.util
    import sys

    folder = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("bench_vce_memory", folder / "bench_vce_memory.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    assert callable(module.child)


# --------------------------------------------------------------------------- accelerate
@pytest.mark.slow
def test_accelerate_launch_two_processes(run, tiny_ar_dir, tmp_path):
    """``accelerate launch`` with two CPU processes: sharded pairs, data-parallel training, one adapter.

    Slow-marked (``pytest -m slow tests/test_vce.py``): two fresh interpreters on busy cores.
    """
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += [
        "--main_process_port",
        "29547",
        "-m",
        "safegen",
        "erase",
        "--method",
        "vce",
        "--concept",
        "red",
    ]
    sets = ["n_harmful_prompts=3", "n_clean_prompts=3", "batch_size=2", "save_every=1", "lora_rank=2"]
    args = ["--model", str(tiny_ar_dir), "--steps", "2", "--out", str(out), "--device", "cpu"]
    args += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["status"] == "done"
    pairs = json.loads((out / "pairs" / "manifest.json").read_text())
    assert pairs["processes"] == 2 and pairs["n_pairs"] == 12  # 3 prompts x 4 seeds, built in two shards
    single = tmp_path / "single"  # the sharded pair set equals a one-process one
    cfg = VCEConfig(n_harmful_prompts=3, n_clean_prompts=3)
    run_vce("red", model=str(tiny_ar_dir), config=cfg, out=single, stage="pairs", device="cpu")
    a, b = (load_file(str(f / "pairs" / "tokens.safetensors")) for f in (out, single))
    assert all(torch.equal(a[k], b[k]) for k in ("unsafe", "safe", "retain"))
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[-1]["epoch"] > 0
    from peft import PeftModel

    model = load_model(str(tiny_ar_dir), device="cpu")
    tokens = model.generate_tokens(["a red circle"], [0])
    with torch.no_grad():
        prefix = model.encode_prompts(["a red circle"])
        base = model.backbone.gpt(prefix.embeds, prefix.mask, tokens[:, :-1])
        adapted = PeftModel.from_pretrained(model.backbone.gpt, str(out))(
            prefix.embeds, prefix.mask, tokens[:, :-1]
        )
    assert not torch.allclose(adapted, base)


def test_bf16_trains_on_cpu(tiny_ar_dir, tmp_path):
    """Frozen weights in bf16 (pair sampling included), LoRA in fp32: the run finishes with a finite loss."""
    out = tmp_path / "bf16"
    result = run_vce(
        "red", model=str(tiny_ar_dir), config=tiny_config(mixed_precision="bf16"), out=out, device="cpu"
    )
    assert math.isfinite(result["stages"]["train"]["final"]["loss"])
    assert result["stages"]["pairs"]["n_pairs"] > 0 and (out / "adapter_config.json").is_file()
