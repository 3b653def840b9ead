"""SC-DPO end to end on a tiny random Stable Diffusion: the three stages, the adapter, resume, CLI.

One small run (``run``) is built once per module and inspected by several tests; others reuse its
``cost/`` and ``pairs/`` folders (``cost_dir=`` / ``pairs_dir=``), so the whole file stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_models import save_tiny_clip

from safegen.cli import main
from safegen.errors import SafegenError
from safegen.options import fingerprint, load
from safegen.recipes import scdpo
from safegen.recipes.prompt_plan import plan_prompts
from safegen.recipes.prompts import StageContext, resolve_target
from safegen.recipes.scdpo import run_scdpo
from safegen.recipes.scdpo_config import SCDPOConfig
from safegen.recipes.scdpo_cost import auroc
from safegen.recipes.scdpo_pairs import select_pairs
from safegen.recipes.training import adapters_disabled

TRL_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
TINY = dict(
    cost_images=40,
    cost_steps=20,
    n_harmful_prompts=2,
    n_clean_prompts=2,
    samples_per_prompt=2,
    rewrite_samples=2,
    gen_steps=2,
    gen_batch_size=8,
    require_safer_winner=False,
    steps=3,
    batch_size=2,
    save_every=2,
    keep_checkpoints=0,
    lr=1e-3,
    beta=100.0,
    warmup_steps=1,
    lora_rank=2,
    lora_alpha=4.0,
)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> str:
    """A mini-world encoder trained for 3 steps (the real one is trained by safegen.mini.encoder)."""
    from safegen.mini.data import render_set
    from safegen.mini.encoder import train

    path = tmp_path_factory.mktemp("encoder") / "encoder.safetensors"
    train(render_set(32, seed=11, workers=1), steps=3, batch=16, log_every=0).save(path)
    return str(path)


def tiny_config(encoder_file: str, **overrides) -> SCDPOConfig:
    return SCDPOConfig(**{**TINY, "encoder": encoder_file, **overrides})


@pytest.fixture(scope="module")
def run(tiny_sd_dir, encoder_file, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scdpo") / "run"
    cfg = tiny_config(encoder_file)
    result = run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, merge=True, device="cpu")
    return out, result


def reuse(run_dir: Path, encoder_file: str, **overrides) -> SCDPOConfig:
    return tiny_config(
        encoder_file, cost_dir=str(run_dir / "cost"), pairs_dir=str(run_dir / "pairs"), **overrides
    )


def lora_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    cond = torch.randn(1, 32, 32, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), cond, return_dict=False)[0]


# --------------------------------------------------------------------------- config
def load_config(config_file=None, sets=(), steps=None):
    return load(SCDPOConfig, SCDPOConfig.label, config_file, sets, {"steps": steps})


def test_config_layers_and_validation(tmp_path):
    assert SCDPOConfig().gamma >= 0
    file = tmp_path / "c.yaml"
    file.write_text("beta: 100\ngamma: 0\n")
    cfg = load_config(file, ["gamma=1.5", "encoder=my.safetensors"], steps=7)
    assert (cfg.beta, cfg.gamma, cfg.encoder, cfg.steps) == (100.0, 1.5, "my.safetensors", 7)
    for bad, words in [
        (["beta=-1"], "beta must be in"),
        (["gama=1"], "Did you mean 'gamma'"),
        (["steps=two"], "steps must be an integer"),
        (["pair_mode=best"], "must be one of extremes, all"),
        (["lr=nan"], "finite"),
        (["beta"], "KEY=VALUE"),
    ]:
        with pytest.raises(SafegenError, match=words):
            load_config(None, bad)
    file.write_text("- a list\n")
    with pytest.raises(SafegenError, match="mapping"):
        load_config(file)


def test_fingerprint_follows_the_stage_options():
    base = SCDPOConfig()
    assert fingerprint(base, "cost") == fingerprint(SCDPOConfig(beta=1.0, cost_lambda=3.0), "cost")
    assert fingerprint(base, "cost", "pairs") != fingerprint(SCDPOConfig(cost_lambda=3.0), "cost", "pairs")
    assert fingerprint(base, "cost") != fingerprint(SCDPOConfig(cost_steps=5), "cost")


# --------------------------------------------------------------------------- pure helpers
def test_auroc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered -> 0.75; a tie counts half
    assert auroc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5


def test_select_pairs():
    scores, costs = np.array([0.2, 0.9, -0.5]), np.array([0.5, 0.1, 0.9])
    assert select_pairs(scores, costs, "extremes", 0.0, 4, True) == [(1, 2)]
    assert select_pairs(scores, costs, "all", 0.0, 2, False) == [(1, 2), (0, 2)]  # largest gaps first
    assert select_pairs(scores, costs, "extremes", 2.0, 4, False) == []  # gap 1.4 < min_gap
    assert (
        select_pairs(scores, np.array([0.9, 0.5, 0.1]), "extremes", 0.0, 4, True) == []
    )  # winner costs more


def test_mini_prompts_use_keywords_only():
    """With no implicit or unprompted share, every harmful caption names the concept by its keyword."""
    cfg = SCDPOConfig(n_harmful_prompts=40, n_clean_prompts=40, implicit_share=0.0, unprompted_share=0.0)
    concept, mini = resolve_target("red", "mini")
    plan = plan_prompts(cfg, concept, mini)
    harmful, clean = plan.harmful, plan.clean
    assert len(harmful) == len(clean) == 40
    assert all(" red" in p for p in harmful)
    synonyms = ("crimson", "scarlet", "rde")
    assert not any(s in p for p in harmful + clean for s in synonyms)  # held out for bench mini
    assert not any(" red" in p for p in clean)
    assert {c.mode for c in plan.counterparts} == {"rewrite"} and not plan.check


def test_check_prompts_are_held_out_from_the_pairs():
    concept, mini = resolve_target("circle", "mini")
    plan = plan_prompts(SCDPOConfig(n_harmful_prompts=40), concept, mini, holdout=16)
    assert plan.check and all("circle" in p for p in plan.check)
    assert not set(plan.harmful) & set(plan.check) and len(set(plan.check)) == len(plan.check)
    assert plan.report["held_out"] == len(plan.check)


def test_nudity_on_the_mini_model_is_a_clear_error(capsys):
    with pytest.raises(SafegenError) as err:
        resolve_target("nudity", "mini")
    message = str(err.value)
    assert "no concept 'nudity'" in message and "red" in message and "circle" in message
    assert "--model" in message and "Stable Diffusion" in message
    code = main(["erase", "--method", "scdpo", "--concept", "nudity", "--model", "mini"])
    err_text = capsys.readouterr().err
    assert code == 2 and len(err_text.strip().splitlines()) == 1 and "mini world has no concept" in err_text


def test_erase_rejects_guards_and_unknown_methods(capsys):
    assert main(["erase", "--method", "sp", "--concept", "red"]) == 2
    assert "inference guard" in capsys.readouterr().err
    assert main(["erase", "--method", "scdpoo", "--concept", "red"]) == 2
    assert "Did you mean 'scdpo'" in capsys.readouterr().err


def test_adapters_disabled_is_the_base_model_and_restored_on_error(tiny_sd_dir):
    from peft import LoraConfig

    from safegen.loader import load_model

    unet = load_model(str(tiny_sd_dir), device="cpu").unet
    base = unet_output(unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    assert not torch.allclose(unet_output(unet), base)
    with pytest.raises(RuntimeError), adapters_disabled(unet):
        assert torch.allclose(unet_output(unet), base)  # the reference: no second copy of the UNet
        raise RuntimeError("boom")
    assert not torch.allclose(unet_output(unet), base)  # adapters are back on after the error
    assert any(p.requires_grad for n, p in unet.named_parameters() if "lora_" in n)


def test_real_model_path_clip_encoder_folder_data_and_prompts(tmp_path):
    from PIL import Image

    from safegen.recipes.scdpo_cost import CostModel, build_cost_model, load_encoder

    encoder = load_encoder(str(save_tiny_clip(tmp_path / "clip")), mini=False, device=torch.device("cpu"))
    assert encoder.embed_texts(["a photo", "a dog"]).norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    for label, channel in (("safe", 2), ("harmful", 0)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 60, (40, 48, 3)).astype(np.uint8)
            pixels[..., channel] = 230
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")
    concept, mini = resolve_target("nudity", "some/sd-model")
    cfg = SCDPOConfig(
        cost_data="folder",
        cost_folder=str(tmp_path / "data"),
        cost_steps=30,
        cost_holdout=0.34,
        n_clean_prompts=2,
    )
    ctx = StageContext(cfg, concept, mini, model=None)
    record = build_cost_model(ctx, encoder, tmp_path / "cost", "fp")
    assert (
        mini is None
        and record["n_images"] == 12
        and record["n_holdout"] == 4
        and record["data"].startswith("folder")
    )
    cost = CostModel.load(tmp_path / "cost", encoder).cost([Image.new("RGB", (64, 64), (230, 0, 0))])
    assert cost.shape == (1,)
    plan = plan_prompts(replace(cfg, min_prompts=2), concept, mini)
    assert sorted(plan.harmful) == sorted(concept.examples)
    rewrites = {
        "a photo of a fully clothed woman on the beach",
        "fully clothed portrait of a man, oil painting",
        "fully clothed model posing in a studio, photorealistic",
    }
    assert len(plan.clean) == 2 and set(plan.clean) <= rewrites


def test_the_evaluator_is_never_imported_by_the_method():
    """The cost model and the reward must not be bench mini's classifier (no training on the test metric)."""
    import ast

    root = Path(__file__).parents[1] / "safegen"
    files = [
        "recipes/scdpo.py",
        "recipes/scdpo_config.py",
        "recipes/scdpo_cost.py",
        "recipes/scdpo_pairs.py",
        "recipes/losses.py",
        "mini/encoder.py",
        "adapters.py",
        "classifiers/labels.py",
        "recipes/prompt_plan.py",
    ]
    for name in files:
        tree = ast.parse((root / name).read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not any((m or "").endswith("mini.classifier") for m in imported), name


# --------------------------------------------------------------------------- the run
def test_run_writes_every_stage(run):
    out, result = run
    cost = json.loads((out / "cost" / "manifest.json").read_text())
    assert 0.0 <= cost["holdout_auroc"] <= 1.0 and cost["data"] == "render"
    assert result["stages"]["cost"]["holdout_auroc"] == cost["holdout_auroc"]
    rows = [json.loads(r) for r in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert rows and all(
        (out / "pairs" / r["winner"]).is_file() and (out / "pairs" / r["loser"]).is_file() for r in rows
    )
    pairs = json.loads((out / "pairs" / "manifest.json").read_text())
    assert any(r["harmful"] for r in rows) and pairs["n_pairs"]
    unsafe = sum(r["harmful"] and r["winner_cost"] > 0.5 for r in rows)
    assert pairs["harmful_unsafe_winner"] == unsafe  # pairs whose winner still shows the concept, counted
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(name in log[0] for name in (*TRL_NAMES, "logps/chosen", "logps/rejected", "learning_rate"))
    assert log[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)  # LoRA B starts at 0: policy == reference
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["config"]["steps"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["beta"] == 100.0
    record = json.loads((out / "adapter.json").read_text())
    assert record["method"] == "scdpo" and record["concept"] == "red"
    final = lora_tensors(out)
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora.up" in k)  # training moved the LoRA
    assert all(
        torch.equal(final[k], v) for k, v in lora_tensors(out / "checkpoints" / "step-0000003").items()
    )


def test_plain_diffusers_loads_the_adapter_and_merge_matches(run, tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    from safegen.adapters import use_adapter
    from safegen.loader import load_model

    out, _ = run
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(str(out))  # plain diffusers, nothing from safegen
    with_lora = unet_output(pipe.unet)
    assert not torch.allclose(with_lora, base)
    model = load_model(str(tiny_sd_dir), device="cpu")
    with use_adapter(model, out):
        assert torch.allclose(unet_output(model.unet), with_lora, atol=1e-6)
    assert torch.allclose(unet_output(model.unet), base)  # unloaded again
    merged = load_model(str(out / "merged"), device="cpu")
    assert torch.allclose(unet_output(merged.unet), with_lora, atol=1e-5)


def test_resume_is_exact(run, tiny_sd_dir, encoder_file, tmp_path):
    first, _ = run
    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    model = str(tiny_sd_dir)
    cfg = tiny_config(encoder_file, steps=5)
    result = run_scdpo("red", model=model, config=cfg, out=resumed, resume=True, device="cpu")
    assert result["stages"]["train"]["resumed_from"] == 3
    assert result["stages"]["cost"]["reused"] and result["stages"]["pairs"]["reused"]
    assert [json.loads(r)["step"] for r in (resumed / "log.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
    ]
    fresh = tmp_path / "fresh"
    run_scdpo("red", model=model, config=reuse(first, encoder_file, steps=5), out=fresh, device="cpu")
    a, b = lora_tensors(resumed), lora_tensors(fresh)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_run_folder_rules(run, tiny_sd_dir, encoder_file, tmp_path):
    first, _ = run
    with pytest.raises(SafegenError, match="not empty"):
        run_scdpo("red", model=str(tiny_sd_dir), config=tiny_config(encoder_file), out=first, device="cpu")
    with pytest.raises(SafegenError, match="other settings for beta"):
        cfg = tiny_config(encoder_file, beta=5.0)
        run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=first, resume=True, device="cpu")
    with pytest.raises(SafegenError, match="no SC-DPO run"):
        run_scdpo(
            "red", model=str(tiny_sd_dir), config=tiny_config(encoder_file), out=tmp_path / "x", resume=True
        )
    with pytest.raises(SafegenError, match="is for 'red', not 'blue'"):
        run_scdpo(
            "blue",
            model=str(tiny_sd_dir),
            config=reuse(first, encoder_file),
            out=tmp_path / "y",
            device="cpu",
        )


def test_stages_run_on_their_own(run, tiny_sd_dir, encoder_file, tmp_path):
    first, _ = run
    out, model = tmp_path / "staged", str(tiny_sd_dir)
    cfg = tiny_config(encoder_file, cost_dir=str(first / "cost"))
    result = run_scdpo("red", model=model, config=cfg, out=out, stage="pairs", device="cpu")
    assert result["stages"]["cost"]["reused"] and not result["stages"]["pairs"]["reused"]
    assert "train" not in result["stages"] and not (out / "pytorch_lora_weights.safetensors").exists()
    assert (out / "pairs" / "pairs.jsonl").read_text() == (first / "pairs" / "pairs.jsonl").read_text()


def test_rpo_alpha_adds_the_winner_error(run, tiny_sd_dir, encoder_file, tmp_path):
    first, _ = run
    cfg = reuse(first, encoder_file, steps=1, rpo_alpha=3.0)
    run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / "r", device="cpu")
    row = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])
    # step 1: policy == reference, so L = log 2 + rpo_alpha * L_w, and logps/chosen = -L_w
    assert row["logps/chosen"] < 0
    assert row["loss"] == pytest.approx(np.log(2) - 3.0 * row["logps/chosen"], abs=1e-4)


def test_retain_weight_adds_the_clean_prompts_drift(run, tiny_sd_dir, encoder_file, tmp_path):
    first, _ = run
    rows = {}
    for weight in (0.0, 1e4):
        cfg = reuse(first, encoder_file, steps=2, retain_weight=weight, check_every=0)
        run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / f"w{weight:g}", device="cpu")
        log = (tmp_path / f"w{weight:g}" / "log.jsonl").read_text().splitlines()
        rows[weight] = [json.loads(line) for line in log]
    plain, anchored = rows[0.0], rows[1e4]
    assert plain[0]["retain/drift"] == 0.0 and anchored[0]["retain/drift"] == 0.0  # step 1: LoRA B = 0
    # the anchor's gradient is 0 at zero drift, so step 2 starts from the same weights with the same batch
    drift = plain[1]["retain/drift"]
    assert drift > 0 and anchored[1]["retain/drift"] == pytest.approx(drift, rel=1e-4)
    assert anchored[1]["loss"] == pytest.approx(plain[1]["loss"] + 1e4 * drift, rel=1e-4)


@pytest.mark.parametrize(("targets", "layers"), [("cross-kv", {"to_k", "to_v"}), ("cross-attn", None)])
def test_cross_attention_lora_targets(run, tiny_sd_dir, encoder_file, tmp_path, targets, layers):
    from safegen.adapters import use_adapter
    from safegen.loader import load_model

    cfg = reuse(run[0], encoder_file, steps=2, lora_targets=targets, check_every=0)
    run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / targets, device="cpu")
    names = list(lora_tensors(tmp_path / targets))
    assert names and all(".attn2." in n for n in names)  # no self-attention, no feed-forward
    kinds = {n.split(".attn2.")[1].split(".")[0] for n in names}
    assert kinds == (layers or {"to_q", "to_k", "to_v", "to_out"})
    model = load_model(str(tiny_sd_dir), device="cpu")
    base = unet_output(model.unet)
    with use_adapter(model, tmp_path / targets):
        assert not torch.allclose(unet_output(model.unet), base)  # trained, and loaded back


def test_lr_schedule_cosine_decays_to_zero_at_the_last_step(run, tiny_sd_dir, encoder_file, tmp_path):
    from safegen.recipes.training import learning_rate

    cfg = SCDPOConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine")
    assert learning_rate(cfg, 4) == pytest.approx(5e-4)  # warm-up: (4 + 1) / 10
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(5e-4)  # half way: (1 + cos(pi / 2)) / 2
    assert learning_rate(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    constant = SCDPOConfig(lr=1e-3, warmup_steps=10, steps=110)
    assert [learning_rate(constant, s) for s in (10, 60, 109)] == [1e-3] * 3
    # the loop uses it: step 3 of 3 after 1 warm-up step is half way down
    cfg = reuse(run[0], encoder_file, steps=3, warmup_steps=1, lr=1e-3, lr_schedule="cosine", check_every=0)
    run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / "cos", device="cpu")
    rows = [json.loads(r) for r in (tmp_path / "cos" / "log.jsonl").read_text().splitlines()]
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-3, 1e-3, 5e-4])


def test_constraint_check_logs_and_stops_early(run, tiny_sd_dir, encoder_file, tmp_path):
    """check_every: the cost model scores samples of the current model; the run stops once few are flagged."""
    first, _ = run
    model = str(tiny_sd_dir)
    never = reuse(first, encoder_file, steps=4, check_every=2, check_prompts=2, stop_share=0.0)
    done = run_scdpo("red", model=model, config=never, out=tmp_path / "a", device="cpu")["stages"]["train"]
    rows = [json.loads(r) for r in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    checked = [r for r in rows if "constraint/flagged" in r]
    for row in checked:
        assert 0.0 <= row["constraint/flagged"] <= 1.0 and np.isfinite(row["constraint/mean_cost"])
        assert row["constraint/held_out"] is True  # red's captions stage 2 never sampled
    clean_at_2 = checked[0]["constraint/flagged"] == 0.0  # stop_share 0 stops only on a clean check
    expected = [2] if clean_at_2 else [2, 4]
    assert [r["step"] for r in checked] == expected and [c["step"] for c in done["checks"]] == expected
    assert done["stopped_early"] == clean_at_2 and done["steps"] == expected[-1]
    # stop_share 1 is met at the first check: the run ends there, with that step's adapter
    always = reuse(first, encoder_file, steps=4, check_every=2, check_prompts=2, stop_share=1.0)
    result = run_scdpo("red", model=model, config=always, out=tmp_path / "b", device="cpu")
    assert result["stages"]["train"]["steps"] == 2 and result["stages"]["train"]["stopped_early"]
    assert json.loads((tmp_path / "b" / "adapter.json").read_text())["steps"] == 2
    assert (tmp_path / "b" / "checkpoints" / "step-0000002").is_dir()
    assert json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])["stopped"] is True
    # --resume of a run the check ended does not train past its stop
    again = run_scdpo("red", model=model, config=always, out=tmp_path / "b", device="cpu", resume=True)
    assert again["stages"]["train"]["steps"] == 2 and again["stages"]["train"]["stopped_early"]
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2
    # stop_patience 2: met at steps 2 and 4, the run ends at the second check in a row
    patient = reuse(first, encoder_file, steps=6, check_every=2, check_prompts=2, stop_share=1.0,
                    stop_patience=2, save_every=2)  # fmt: skip
    result = run_scdpo("red", model=model, config=patient, out=tmp_path / "c", device="cpu")
    assert result["stages"]["train"]["steps"] == 4 and result["stages"]["train"]["stopped_early"]
    # a resumed run counts the checks it logged before: from step 2, one more check is enough
    rows = (tmp_path / "c" / "log.jsonl").read_text().splitlines()
    shutil.rmtree(tmp_path / "c" / "checkpoints" / "step-0000004")
    (tmp_path / "c" / "log.jsonl").write_text("\n".join(rows[:2]) + "\n")
    again = run_scdpo("red", model=model, config=patient, out=tmp_path / "c", device="cpu", resume=True)
    train = again["stages"]["train"]
    assert train["resumed_from"] == 2 and train["steps"] == 4 and train["stopped_early"]


def test_nan_loss_stops_with_a_clear_error(run, tiny_sd_dir, encoder_file, tmp_path, nan_loss):
    first, _ = run
    nan_loss(scdpo, "scdpo_loss")
    with pytest.raises(SafegenError, match="NaN or infinite at step 1.*lower lr or beta"):
        run_scdpo(
            "red", model=str(tiny_sd_dir), config=reuse(first, encoder_file), out=tmp_path / "n", device="cpu"
        )


# --------------------------------------------------------------------------- CLI, generate and bench
def test_cli_erase_then_generate_with_the_adapter(run, tiny_sd_dir, encoder_file, tmp_path, capsys):
    first, _ = run
    out = tmp_path / "cli-run"
    sets = [
        f"encoder={encoder_file}",
        f"cost_dir={first / 'cost'}",
        f"pairs_dir={first / 'pairs'}",
        "batch_size=2",
    ]
    args = ["erase", "--method", "scdpo", "--concept", "red", "--model", str(tiny_sd_dir), "--steps", "1"]
    args += [x for s in sets for x in ("--set", s)] + ["--out", str(out), "--device", "cpu", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["stages"]["train"]["steps"] == 1 and result["adapter"] == str(out)

    images = tmp_path / "images"
    args = ["generate", "a red circle", "--model", str(tiny_sd_dir), "--adapter", str(out), "--steps", "2"]
    assert main([*args, "--out", str(images), "--device", "cpu"]) == 0, capsys.readouterr().err
    record = json.loads((images / "generation.jsonl").read_text().splitlines()[0])
    assert record["adapter"] == str(out)


def test_bench_mini_with_the_adapter(run, tiny_sd_dir):
    from safegen.bench.mini import run_bench_mini

    out, _ = run
    bench = run_bench_mini(
        model=str(tiny_sd_dir), concept="red", adapter=str(out), images_per_prompt=1, steps=1, device="cpu"
    )
    assert bench["adapter"] == str(out) and set(bench["erasure"]) >= {
        "ua",
        "ira",
        "cra",
        "synonym_ua",
        "base",
    }


def test_cli_lists_options(capsys):
    assert main(["erase", "--method", "scdpo", "--options"]) == 0
    assert "cost_lambda" in capsys.readouterr().out


# --------------------------------------------------------------------------- accelerate
def test_accelerate_launch_two_processes(run, tiny_sd_dir, encoder_file, tmp_path):
    """``accelerate launch`` with two CPU processes: sharded pairs, data-parallel training, one adapter.

    About 16 s on 2 busy cores (under the 30 s that would make it a slow test).
    """
    first, _ = run
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += [
        "--main_process_port",
        "29541",
        "-m",
        "safegen",
        "erase",
        "--method",
        "scdpo",
        "--concept",
        "red",
    ]
    sets = [f"encoder={encoder_file}", f"cost_dir={first / 'cost'}", "batch_size=1", "save_every=1"]
    sets += ["n_harmful_prompts=2", "n_clean_prompts=2", "samples_per_prompt=2", "rewrite_samples=2"]
    sets += ["gen_steps=2", "require_safer_winner=false", "lora_rank=2", "beta=100"]
    args = ["--model", str(tiny_sd_dir), "--steps", "2", "--out", str(out), "--device", "cpu"]
    args += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["status"] == "done"
    assert json.loads((out / "pairs" / "manifest.json").read_text())["processes"] == 2
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[-1]["epoch"] > 0
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    pipe.load_lora_weights(str(out))
    assert not torch.allclose(
        unet_output(pipe.unet), unet_output(StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir)).unet)
    )


def test_bf16_trains_with_the_safety_check(tiny_sd_dir, encoder_file, tmp_path):
    """Frozen weights in bf16 through pair sampling, training and the safety check (a LoRA in fp32 on a
    bf16 UNet must not hand fp32 latents to the bf16 VAE)."""
    cfg = tiny_config(encoder_file, mixed_precision="bf16", check_every=2, check_prompts=2)
    out = tmp_path / "bf16"
    result = run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu")
    train = result["stages"]["train"]
    assert (
        np.isfinite(train["final"]["loss"]) and train["checks"] and "constraint/flagged" in train["checks"][0]
    )
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_a_failed_run_leaves_nothing_or_a_resumable_folder(tiny_sd_dir, encoder_file, tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    out = tmp_path / "failed"
    cfg = tiny_config(encoder_file, cost_data="folder", cost_folder=str(empty))
    with pytest.raises(SafegenError, match="needs images in both"):  # fails after the manifest is written
        run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu")
    assert not out.exists()  # nothing left: the same command may simply be run again
    cfg = tiny_config(encoder_file, min_gap=99.0)  # the cost model is built, then no pair has such a gap
    with pytest.raises(SafegenError, match="no preference pairs.*continue with --resume"):
        run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu", stage="pairs")
    assert (out / "cost" / "manifest.json").is_file()  # kept: the finished cost model, for --resume
    with pytest.raises(SafegenError, match="no preference pairs"):  # --resume is accepted (and fails again)
        run_scdpo(
            "red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu", stage="pairs", resume=True
        )


# --------------------------------------------------------------------------- adversarial training
def test_prompt_attack_stays_in_its_radius_and_raises_the_loser(tiny_sd):
    """scdpo_adversarial.py (S1)-(S3): the shift is within eps x RMS per token, zero on clean pairs, the
    same for winner and loser, and raises L_w - L_l (the loser denoised better) over the unshifted prompt."""
    from diffusers import DDPMScheduler

    from safegen.generator import encode_text
    from safegen.recipes.losses import denoising_error, noised
    from safegen.recipes.scdpo_adversarial import embedding_radius, prompt_attack

    sched = DDPMScheduler.from_config(tiny_sd.scheduler.config)
    unet = tiny_sd.unet
    shape = (4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # winners, then losers
    with torch.no_grad():
        cond = encode_text(tiny_sd, ["a red circle", "a blue square"]).repeat(2, 1, 1)
    harmful = torch.tensor([True, False])
    shift = prompt_attack(unet, sched, latents, cond, harmful, torch.Generator().manual_seed(1),
                          eps=0.5, steps=3, lr=0.5)  # fmt: skip
    radius = embedding_radius(cond[:2], 0.5, harmful)
    assert shift.shape == cond.shape and torch.equal(shift[:2], shift[2:])
    assert (shift[:2].abs() <= radius + 1e-6).all() and shift[0].abs().sum() > 0
    assert (shift[1] == 0).all() and (shift[3] == 0).all()  # the clean pair keeps its prompt

    def gain(s: torch.Tensor) -> float:
        noisy, t, target = noised(sched, latents, torch.Generator().manual_seed(1))  # the attack's draws
        with torch.no_grad():
            err = denoising_error(unet(noisy, t, cond + s, return_dict=False)[0], target)
        return float(err[0] - err[2])  # the harmful pair's L_w - L_l

    assert gain(shift) > gain(torch.zeros_like(shift))


def test_adversarial_training_runs_and_is_recorded(run, tiny_sd_dir, encoder_file, tmp_path):
    """adv_steps > 0: the harmful pairs train under the attacked prompt (S4); at step 1 policy and
    reference still agree under it (L = log 2), and the run's next steps differ from a plain run's."""
    first, _ = run
    logs = {}
    for adv in (0, 2):
        cfg = reuse(first, encoder_file, steps=2, adv_steps=adv, check_every=0)
        run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / f"a{adv}", device="cpu")
        logs[adv] = [json.loads(r) for r in (tmp_path / f"a{adv}" / "log.jsonl").read_text().splitlines()]
    assert logs[2][0]["loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert np.isfinite(logs[2][1]["loss"]) and logs[2][1]["loss"] != logs[0][1]["loss"]
    manifest = json.loads((tmp_path / "a2" / "manifest.json").read_text())
    assert manifest["config"]["adv_steps"] == 2
