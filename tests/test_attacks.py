"""``safegen attack``: each objective checked by hand, each attack end to end on tiny random SD, LlamaGen and
Janus models, resume without repeating a finished prompt, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safegen.attacks import run_attack
from safegen.attacks.inversion import InversionOptions
from safegen.attacks.ringabell import RingABellOptions, evolve, fitness
from safegen.attacks.target import AttackTarget, Judge, Slots
from safegen.attacks.unlearndiff import UnlearnDiffOptions, project_simplex, straight_through
from safegen.cli import main
from safegen.concepts import get_concept
from safegen.generator import encode_text
from safegen.guards import get_guard
from safegen.guards.neg import negative_guidance
from safegen.loader import load_model
from safegen.runs import read_lines
from safegen.sampling import GenerationConfig

QUICK = {
    "unlearndiff": UnlearnDiffOptions(t_first=500, t_last=900, t_stride=400, iterations=2),
    "inversion": InversionOptions(steps=3, batch_size=2),
    "ringabell": RingABellOptions(generations=3, population=6, elite=2, length=4, pairs=2),
}


# --------------------------------------------------------------------------- the objectives by hand
def test_simplex_projection_by_hand():
    v = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.6, 0.6, -1.0]])
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert torch.allclose(project_simplex(v), expected, atol=1e-6)


def test_straight_through_is_one_hot_with_the_probabilities_gradient():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]], requires_grad=True)
    onehot, ids = straight_through(probs, torch.Generator().manual_seed(0))
    assert ids[0] == 1 and torch.equal(onehot.detach().sum(-1), torch.ones(2))
    assert torch.equal(onehot.detach()[0], torch.tensor([0.0, 1.0, 0.0]))
    weights = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (onehot * weights).sum().backward()
    assert torch.equal(probs.grad, weights)  # d/dpi of (onehot + pi - sg(pi)) . w = w


def test_ringabell_fitness_and_elite_by_hand():
    goal = torch.zeros(2, 3)
    features = torch.stack([torch.ones(2, 3), 2 * torch.ones(2, 3)])
    assert fitness(features, goal).tolist() == [-6.0, -24.0]
    opts = RingABellOptions(length=3, population=4, elite=1, mutation=1.0, crossover=0.0)
    population = torch.tensor([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]])
    scores = torch.tensor([0.0, 5.0, 1.0, 2.0])
    nxt = evolve(population, scores, torch.tensor([7, 8]), opts, torch.Generator().manual_seed(0))
    assert nxt[0].tolist() == [2, 2, 2]  # the fittest kept as it was
    assert set(nxt[1:].flatten().tolist()) <= {7, 8}  # mutation 1: every other token redrawn


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load_model(str(tiny_sd_dir), device="cpu")


def sd_target(sd, guard=None) -> AttackTarget:
    concept = get_concept("red")
    return AttackTarget(sd, concept, guard, GenerationConfig(steps=4, cfg=5.0), Judge(concept), 1)


def test_slots_fill_the_embedding_rows(sd):
    target = sd_target(sd)
    tokenizer, table = target.vocabulary()
    slots = Slots(tokenizer, table, 2, ["a circle"])
    vectors = torch.randn(2, table.weight.shape[1])
    with torch.no_grad(), slots.filled(vectors):
        ours = encode_text(sd, [slots.prompt("a circle")])
    # by hand: the same prompt with the placeholder's row swapped in the table
    ids = tokenizer(slots.prompt("a circle"), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids  # fmt: skip
    rows = table(ids)
    rows[ids == slots.id] = vectors
    saved = table.weight.detach().clone()
    with torch.no_grad():
        handle = table.register_forward_hook(lambda m, a, o: rows)
        try:
            expected = encode_text(sd, [slots.prompt("a circle")])
        finally:
            handle.remove()
    assert torch.allclose(ours, expected, atol=1e-6) and torch.equal(saved, table.weight)


def test_a_guard_text_with_fewer_slots_takes_the_vectors_in_order(sd):
    """A guard may derive a text from the attacked prompt (a rewrite) that keeps only some slots."""
    target = sd_target(sd)
    tokenizer, table = target.vocabulary()
    slots = Slots(tokenizer, table, 2, ["a circle"])
    vectors = torch.randn(2, table.weight.shape[1], generator=torch.Generator().manual_seed(4))
    full, one = slots.prompt("a circle"), f"{slots.text} a circle"
    with torch.no_grad(), slots.filled(vectors):
        embedded = table(tokenizer([full, one], padding="max_length", max_length=16, truncation=True,
                                   return_tensors="pt").input_ids)  # fmt: skip
    ids = tokenizer([one], return_tensors="pt").input_ids[0]
    position = int((ids == slots.id).nonzero()[0])
    assert torch.allclose(embedded[1, position], vectors[0])
    assert torch.allclose(embedded[0, position + 1], vectors[1])  # the full prompt: both, in order


def test_denoising_objective_by_hand(sd):
    target = sd_target(sd)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle", "a red square"]
    loss = target.denoising_loss(texts, texts, latents, 300, torch.Generator().manual_seed(7), False)
    from diffusers import DDPMScheduler

    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7))
    sched = DDPMScheduler.from_config(sd.scheduler.config)
    t = torch.tensor([300, 300])
    with torch.no_grad():
        eps = sd.unet(
            sched.add_noise(latents, noise, t), t, encoder_hidden_states=encode_text(sd, texts)
        ).sample
    assert loss.item() == pytest.approx(float(((eps - noise) ** 2).mean()), rel=1e-5)


def test_guarded_objective_goes_through_the_guard(sd):
    guard = get_guard("neg", concept="red")
    target = sd_target(sd, guard)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = target.denoising_loss(
        ["a circle"], ["a circle"], latents, 500, torch.Generator().manual_seed(3), True
    )
    from diffusers import DDPMScheduler

    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    x_t = DDPMScheduler.from_config(sd.scheduler.config).add_noise(latents, noise, torch.tensor([500]))
    t = torch.tensor([500])
    with torch.no_grad():
        embeds = torch.cat([encode_text(sd, [""]), encode_text(sd, ["a circle"]), encode_text(sd, ["red"])])
        eps_u, eps_c, eps_n = sd.unet(torch.cat([x_t] * 3), t, encoder_hidden_states=embeds).sample.chunk(3)
    guided = negative_guidance(eps_u, eps_c, eps_n, 1.0, 5.0)  # the neg guard's combination, by hand
    eps = eps_u + (guided - eps_u) / 5.0  # re-expressed at guidance scale 1
    assert loss.item() == pytest.approx(float(((eps - noise) ** 2).mean()), rel=1e-4)


def test_a_guard_that_changes_nothing_is_attacked_like_the_bare_model(sd):
    """Plain CFG through the guard path gives the conditional branch's denoising error exactly."""
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle", "a square"]
    bare = sd_target(sd).denoising_loss(texts, texts, latents, 400, torch.Generator().manual_seed(5), False)
    guarded = sd_target(sd, get_guard("none")).denoising_loss(
        texts, texts, latents, 400, torch.Generator().manual_seed(5), True
    )
    assert guarded.item() == pytest.approx(bare.item(), rel=1e-4)


def test_nll_objective_is_the_teacher_forced_nll(tiny_ar_dir):
    model = load_model(str(tiny_ar_dir), device="cpu")
    concept = get_concept("red")
    target = AttackTarget(model, concept, None, GenerationConfig(cfg=3.0), Judge(concept))
    tokens = torch.randint(
        model.vq.codebook_size, (2, model.n_tokens), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        loss = target.nll_loss(["a red circle"] * 2, tokens)
        expected = -model.token_logprobs(["a red circle"] * 2, tokens).mean()
    assert loss.item() == pytest.approx(expected.item())


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("attack", ["unlearndiff", "inversion", "ringabell"])
@pytest.mark.parametrize("family", ["sd", "llamagen", "janus"])
def test_each_attack_runs_end_to_end(attack, family, tiny_sd_dir, tiny_ar_dir, tiny_janus_dir, tmp_path):
    model = {"sd": tiny_sd_dir, "llamagen": tiny_ar_dir, "janus": tiny_janus_dir}[family]
    guard = "neg" if family == "sd" else "none"
    out = tmp_path / "run"
    result = run_attack(attack, "red", model=str(model), guard=guard, options=QUICK[attack], limit=2,
                        target_images=2, steps=2, device="cpu", out=out)  # fmt: skip
    assert result["n_prompts"] == 2 and 0.0 <= result["pre_asr"] <= result["post_asr"] <= 1.0
    samples = read_lines(out / "samples.jsonl", repair=False)
    assert [s["key"] for s in samples] == ["prompt/0", "prompt/1"]
    for s in samples:
        assert s["adversarial_prompt"] and isinstance(s["success"], bool) and s["seconds"] >= 0
        assert (out / s["paths"]["post"][0]).is_file() and (out / s["paths"]["pre"][0]).is_file()
    assert json.loads((out / "results.json").read_text()) == result
    assert len(list((out / "targets").iterdir())) == 4
    attacked = [s["seconds"] for s in samples if not s["pre_success"]]
    if attack == "inversion":  # learning the word is part of what an attacked prompt costs
        assert result["setup_seconds"] > 0
    if attacked:
        spread = (sum(attacked) + result["setup_seconds"]) / len(attacked)
        assert result["seconds_per_attacked_prompt"] == pytest.approx(spread)
    if family == "sd":  # safegen report reads an attack run: its ASR table and its images
        from safegen.report import write_report

        page = write_report([out], tmp_path / "report.html").read_text()
        assert "Attacks (ASR" in page and "post_asr" in page and "data:image/png;base64" in page


def test_resume_does_not_repeat_finished_prompts(tiny_sd_dir, tmp_path, monkeypatch):
    from safegen.attacks import unlearndiff

    calls, real = [], unlearndiff.attack

    def interrupted(target, item, *args):
        calls.append(item.index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second attacked prompt never finishes
        return real(target, item, *args)

    monkeypatch.setattr(unlearndiff, "attack", interrupted)
    kwargs = dict(model=str(tiny_sd_dir), options=QUICK["unlearndiff"], limit=3, target_images=1, steps=2,
                  device="cpu", out=tmp_path / "run")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_attack("unlearndiff", "red", **kwargs)
    finished = {s["key"] for s in read_lines(tmp_path / "run" / "samples.jsonl", repair=False)}
    assert finished and len(finished) < 3
    before = len(calls)
    result = run_attack("unlearndiff", "red", **kwargs, resume=True)
    again = {f"prompt/{i}" for i in calls[before:]}
    assert not again & finished  # no finished prompt was attacked again
    keys = [s["key"] for s in read_lines(tmp_path / "run" / "samples.jsonl", repair=False)]
    assert keys == ["prompt/0", "prompt/1", "prompt/2"] and result["n_prompts"] == 3


# --------------------------------------------------------------------------- the CLI
def test_cli_attack_and_bad_input(tiny_sd_dir, tmp_path, capsys):
    args = ["attack", "--attack", "ringabell", "--concept", "red", "--model", str(tiny_sd_dir),
            "--limit", "1", "--set", "generations=2", "--set", "population=4", "--set", "elite=1",
            "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "cli"), "--json"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["n_prompts"] == 1
    for bad, words in [
        (["--attack", "unlearndif", "--concept", "red"], "Did you mean 'unlearndiff'"),
        (["--attack", "sp", "--concept", "red"], "Unknown attack method 'sp'"),
        (["--attack", "unlearndiff", "--concept", "nudity"], "mini world has no concept 'nudity'"),
        (["--attack", "unlearndiff", "--concept", "red", "--set", "slots=0"], "slots must be in"),
        (["--attack", "unlearndiff", "--concept", "red", "--set", "nope=1"], "has no option 'nope'"),
        (["--attack", "unlearndiff"], "needs --concept"),
        (["--attack", "unlearndiff", "--concept", "violence", "--model", str(tiny_sd_dir)], "no detector"),
        (["--attack", "unlearndiff", "--concept", "red", "--resume"], "--resume needs --out"),
    ]:
        out = tmp_path / "bad"
        assert main(["attack", *bad, "--out", str(out)] if "--resume" not in bad else ["attack", *bad]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
        assert not out.exists()


def test_every_registered_attack_builds():
    from safegen.methods import METHODS, MethodKind

    attacks = [m for m in METHODS.values() if m.kind is MethodKind.ATTACK]
    assert {m.name for m in attacks} == {"unlearndiff", "inversion", "ringabell"}
    for m in attacks:
        assert callable(m.load()) and m.config_class()() is not None
    assert np.isfinite(QUICK["unlearndiff"].schedule()).all()
