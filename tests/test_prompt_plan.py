"""An erasure run's prompts on real data: I2P and user files, safe counterparts without keywords, the
held-out check set, refusals before any model is loaded, and the negative condition of AR sampling."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from safegen.cli import main
from safegen.concepts import get_concept, lookup_concept, mentions, rewrite
from safegen.errors import SafegenError
from safegen.recipes.prompt_plan import plan_prompts
from safegen.recipes.scdpo_config import SCDPOConfig
from safegen.recipes.vce_config import VCEConfig

I2P = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "i2p_4703.csv"
needs_i2p = pytest.mark.skipif(not I2P.is_file(), reason="../shared/data/i2p_4703.csv not present")


def i2p_config(cls=SCDPOConfig, **extra):
    return cls(prompts=str(I2P), prompt_set="i2p", prompt_category="sexual", **extra)


@needs_i2p
def test_i2p_prompts_get_negative_counterparts_and_a_disjoint_check_set():
    nudity = get_concept("nudity")
    cfg = i2p_config(n_harmful_prompts=64, n_clean_prompts=0, counterpart_anchor=False)
    plan = plan_prompts(cfg, nudity, None, holdout=16)
    report = plan.report
    assert report["read"] == 931 and report["used"] == 64 and report["held_out"] == 16
    assert report["unused"] == 931 - sum(report["dropped"].values()) - 64 - 16
    assert len(plan.harmful) == len(plan.counterparts) == 64 and not set(plan.harmful) & set(plan.check)
    for prompt, safe in zip(plan.harmful, plan.counterparts, strict=True):
        if mentions(prompt, nudity):  # a keyword: rewritten; otherwise the same prompt, concept negated
            assert safe.mode == "rewrite" and safe.text != prompt and safe.negative is None
        else:
            assert safe.mode == "negative" and safe.text == prompt and safe.negative == nudity.unsafe_text
    assert report["counterparts"]["negative"] >= 60  # I2P's sexual prompts rarely name nudity
    again = plan_prompts(cfg, nudity, None, holdout=16)
    assert again.digest() == plan.digest() and plan_prompts(replace(cfg, seed=1), nudity, None).digest() != (
        plan.digest()
    )


@needs_i2p
def test_clean_prompts_from_a_set_drop_harmful_and_naming_ones(tmp_path):
    nudity = get_concept("nudity")
    clean = tmp_path / "clean.jsonl"
    rows = [{"text": f"a quiet harbour at dawn, view {i}"} for i in range(40)]
    rows += [{"text": "a naked man on a horse"}, {"text": "a quiet harbour at dawn, view 0"}]
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = i2p_config(
        n_harmful_prompts=48, n_clean_prompts=64, clean_prompts=str(clean), clean_prompt_column="text"
    )
    plan = plan_prompts(cfg, nudity, None)
    assert len(plan.clean) == 40 and not set(plan.clean) & set(plan.harmful)
    assert plan.report["clean"]["dropped"] == {"duplicate or empty": 1, "names 'nudity'": 1}
    assert any("40 clean prompts, fewer than n_clean_prompts=64" in n for n in plan.report["notes"])


@needs_i2p
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_clean_prompts": 0}, "Only 3 usable prompts from the registry's examples"),  # no --prompts
        (
            {
                "prompts": str(I2P),
                "prompt_set": "i2p",
                "prompt_category": "sexual",
                "n_harmful_prompts": 64,
                "counterpart": "rewrite",
                "n_clean_prompts": 0,
            },
            r"Only \d usable prompts from --prompts",
        ),
        (
            {"prompts": str(I2P), "prompt_set": "i2p", "prompt_category": "sexual"},
            r"Only \d usable clean prompts from keyword rewrites",
        ),
        (
            {
                "prompts": str(I2P),
                "prompt_set": "i2p",
                "prompt_category": "sexual",
                "clean_prompts": str(I2P),
                "clean_prompt_set": "i2p",
                "clean_prompt_category": "sexual",
            },
            "clean prompts are the harmful",
        ),
        ({"prompts": str(I2P), "prompt_column": "nope"}, "no 'nope' column"),
        (
            {"prompts": str(I2P), "prompt_set": "i2p", "prompt_category": "sexy"},
            "Unknown I2P category 'sexy'",
        ),
        ({"prompt_category": "sexual"}, "need --prompts FILE"),
    ],
)
def test_prompt_sets_that_cannot_make_a_run_are_refused(options, message):
    with pytest.raises(SafegenError, match=message):
        plan_prompts(SCDPOConfig(**options), get_concept("nudity"), None, holdout=16)


def test_a_mini_concept_takes_no_prompt_files():
    from safegen.recipes.prompts import resolve_target

    concept, mini = resolve_target("red", "mini")
    with pytest.raises(SafegenError, match="mini-world concept"):
        plan_prompts(VCEConfig(prompts=str(I2P)), concept, mini)


@needs_i2p
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--concept", "nudity"], "Only 3 usable prompts"),
        (
            [
                "--concept",
                "nudity",
                "--prompts",
                str(I2P),
                "--prompt-set",
                "i2p",
                "--prompt-category",
                "sexual",
                "--clean-prompts",
                str(I2P),
                "--set",
                "clean_prompt_set=i2p",
                "--set",
                "clean_prompt_category=sexual",
            ],
            "clean prompts are the harmful",
        ),
        (["--concept", "nudity", "--prompts", str(I2P), "--prompt-column", "nope"], "no 'nope' column"),
        (
            [
                "--concept",
                "nudity",
                "--prompts",
                str(I2P),
                "--prompt-set",
                "i2p",
                "--prompt-category",
                "sexual",
                "--set",
                "holdout_prompts=2000",
            ],
            "2000 are held out for the safety check",
        ),
        (["--concept", "snoopy", "--concepts-file", "BAD"], "kind must be one of"),
    ],
)
def test_cli_refuses_bad_prompt_sets_before_loading(extra, words, tiny_sd_dir, tmp_path, capsys):
    bad = tmp_path / "concepts.yaml"
    bad.write_text(
        "concepts:\n  - {name: snoopy, kind: cartoon, keywords: [snoopy], unsafe_text: x, safe_text: y}\n"
    )
    out = tmp_path / "never"
    extra = [str(bad) if e == "BAD" else e for e in extra]
    args = ["erase", "--method", "scdpo", "--model", str(tiny_sd_dir), "--out", str(out), "--device", "cpu"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err), err
    assert not out.exists()


def test_negative_condition_replaces_the_null_prefix(tiny_ar_dir):
    """With the prompt itself as the negative condition, l_neg + s (l_c - l_neg) = l_c: the tokens are the
    unguided ones; a different negative changes them; generate() carries it through."""
    from safegen.ar.sampler import SamplingConfig
    from safegen.loader import load_model

    model = load_model(str(tiny_ar_dir), device="cpu")
    prompts, seeds = ["a red circle", "a blue star"], [3, 4]
    guided = SamplingConfig.for_model(model, cfg=4.0, batch_size=2)
    plain = replace(guided, cfg=1.0)
    self_negative = model.generate_tokens(prompts, seeds, guided, negative_prompts=prompts)
    assert torch.equal(self_negative, model.generate_tokens(prompts, seeds, plain))
    other = model.generate_tokens(prompts, seeds, guided, negative_prompts=["red", "red"])
    assert not torch.equal(other, model.generate_tokens(prompts, seeds, guided))
    with pytest.raises(SafegenError, match="needs cfg > 1"):
        model.generate_tokens(prompts, seeds, plain, negative_prompts=prompts)
    with pytest.raises(SafegenError, match="2 prompts"):
        model.generate_tokens(prompts, seeds, guided, negative_prompts=["red"])


def test_bench_warns_when_the_labeller_is_its_evaluator(caplog):
    from safegen.bench.evaluate import warn_if_labelled_by_evaluator

    assert warn_if_labelled_by_evaluator({"labels": "nudenet"}, "nudenet")
    assert "labelled by nudenet, the evaluator" in caplog.text
    assert not warn_if_labelled_by_evaluator({"labels": "opennsfw"}, "nudenet")
    assert not warn_if_labelled_by_evaluator({}, "nudenet")


def test_content_labels_come_from_a_detector_that_is_not_the_evaluator():
    """open_nsfw scores images in [0, 1] offline; a concept it cannot judge is refused before loading."""
    import numpy as np
    from PIL import Image

    from safegen.classifiers.labels import check_labeller, content_scores

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    scores = content_scores("opennsfw", images, get_concept("nudity"))
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    check_labeller("opennsfw", get_concept("nudity"))
    with pytest.raises(SafegenError, match="judges nudity.*'van-gogh' is another"):
        check_labeller("opennsfw", get_concept("van-gogh"))


def test_an_artist_concept_trains_on_its_name_only():
    """Erasing an artist: captions naming it (never an alias: every alias is held out) against other
    artists and plain captions, the safe side naming another artist; its unprompted share leaves the
    texture out and takes the artist's name as the negative condition."""
    from safegen.mini.world import World
    from safegen.recipes.prompts import resolve_target

    concept, mini = resolve_target("ines-quarry", "mini")
    plan = plan_prompts(VCEConfig(n_harmful_prompts=64, n_clean_prompts=64), concept, mini)
    aliases = World.load().artist("ines quarry").aliases
    named = [p for p in plan.harmful if "ines quarry" in p]
    assert plan.report["kinds"] == {"named": 48, "implicit": 0, "unprompted": 16} and len(named) == 48
    assert any("no trigger of the examples split" in n for n in plan.report["notes"])
    assert not any("ines quarry" in p for p in plan.clean)
    assert not any(a in p.replace("ines quarry", "") for a in aliases for p in plan.harmful + plan.clean)
    for prompt, c in zip(plan.harmful, plan.counterparts, strict=True):
        if prompt in named:
            assert c.mode == "rewrite" and concept.safe_text in c.text
        else:
            assert (c.mode, c.text, c.negative) == ("negative", prompt, concept.unsafe_text)


def test_a_mini_plan_trains_on_example_triggers_and_unprompted_captions_not_the_benchmarks():
    """red: a quarter of the prompts imply it by an association of the examples split (never a held-out
    one), a quarter leave the colour out (never one of bench mini's own unprompted prompts); both
    keyword-free kinds take the negative condition."""
    from safegen.bench.mini_prompts import implicit_prompts, target_for, unprompted_prompts
    from safegen.mini.world import World
    from safegen.recipes.prompts import resolve_target

    concept, mini = resolve_target("red", "mini")
    world, target = World.load(), target_for(concept)
    plan = plan_prompts(VCEConfig(n_harmful_prompts=64, n_clean_prompts=16), concept, mini)
    assert plan.report["kinds"] == {"named": 32, "implicit": 16, "unprompted": 16}
    implicit, unprompted = plan.harmful[32:48], plan.harmful[48:]
    assert all(any(p in text for p in world.phrases("color", "red", "examples")) for text in implicit)
    assert not any(p in text for p in world.phrases("color", "red", "heldout") for text in plan.harmful)
    bench = {p.prompt for p in implicit_prompts(world, target) + unprompted_prompts(world, "color")}
    assert not bench & set(plan.harmful)
    colours = world.values["color"] + world.words("color", "red", "synonyms")
    assert not any(c in text.split() for c in colours for text in unprompted)
    assert all(c.mode == "negative" and c.negative == "red" for c in plan.counterparts[32:])
    with pytest.raises(SafegenError, match="at most 0.9"):
        plan_prompts(VCEConfig(implicit_share=0.6, unprompted_share=0.5), concept, mini)


def test_the_mini_check_set_holds_named_captions_or_every_kind_in_the_training_shares():
    """check_kinds=named: held-out captions naming the concept; all: also unsampled captions of the
    example-split triggers and of the axis left out, interleaved so the check's first prompts have every
    kind in the shares trained on; never a training caption, and named's order is all's named order."""
    from safegen.bench.mini_prompts import implicit_prompts, target_for, unprompted_prompts
    from safegen.mini.world import World
    from safegen.recipes.prompts import resolve_target

    concept, mini = resolve_target("circle", "mini")
    world = World.load()
    named = plan_prompts(SCDPOConfig(), concept, mini, holdout=16)
    every = plan_prompts(replace(SCDPOConfig(), check_kinds="all"), concept, mini, holdout=16)
    assert named.harmful == every.harmful and named.digest() != every.digest()
    assert all(mentions(p, concept) for p in named.check)
    coin = world.phrases("object", "circle", "examples")
    kind = lambda p: "named" if mentions(p, concept) else ("implicit" if any(c in p for c in coin) else "up")  # noqa: E731
    first = [kind(p) for p in every.check[:32]]
    assert (first.count("named"), first.count("implicit"), first.count("up")) == (16, 8, 8)
    assert {kind(p) for p in every.check} == {"named", "implicit", "up"}
    assert [p for p in every.check if kind(p) == "named"] == named.check
    bench = {
        p.prompt for p in implicit_prompts(world, target_for(concept)) + unprompted_prompts(world, "object")
    }
    assert not set(every.check) & (set(every.harmful) | bench)
    assert len(set(every.check)) == len(every.check) and every.report["unused"] == 0
    # two parts share captions ("a red figure shaped like a coin" names red and implies circle): once each
    both, mini2 = resolve_target("red,circle", "mini")
    two = plan_prompts(replace(SCDPOConfig(), check_kinds="all"), both, mini2, holdout=16)
    assert len(set(two.check)) == len(two.check) and not set(two.check) & set(two.harmful)


@needs_i2p
def test_an_anchored_counterpart_appends_the_safe_text_to_prompts_without_a_keyword():
    """counterpart_anchor (SC-DPO's default): a keyword-free prompt's safe side is the prompt plus the
    concept's safe text, still with the concept as its negative condition; a named prompt is rewritten as
    before."""
    nudity = get_concept("nudity")
    plain = plan_prompts(
        i2p_config(n_harmful_prompts=64, n_clean_prompts=0, counterpart_anchor=False), nudity, None
    )
    plan = plan_prompts(i2p_config(n_harmful_prompts=64, n_clean_prompts=0), nudity, None)
    assert plan.harmful == plain.harmful and plan.digest() != plain.digest()
    for prompt, before, safe in zip(plan.harmful, plain.counterparts, plan.counterparts, strict=True):
        if before.mode == "rewrite":
            assert safe == before
        else:
            assert (safe.mode, safe.text, safe.negative) == (
                "anchor",
                f"{prompt}, {nudity.safe_text}",
                nudity.unsafe_text,
            )
    assert plan.report["counterparts"]["anchor"] == plain.report["counterparts"]["negative"] >= 60


def test_an_anchored_mini_counterpart_takes_its_own_parts_safe_text():
    """red,circle: a keyword-free caption drawn for red appends red's safe value, one for circle
    circle's; both keep the two concepts as the negative condition."""
    from safegen.recipes.prompts import resolve_target

    concept, mini = resolve_target("red,circle", "mini")
    cfg = VCEConfig(n_harmful_prompts=64, n_clean_prompts=32, counterpart_anchor=True)
    plan = plan_prompts(cfg, concept, mini)
    plain = plan_prompts(replace(cfg, counterpart_anchor=False), concept, mini)
    red, circle = get_concept("red"), get_concept("circle")
    halves = {red.safe_text: plan.counterparts[16:32], circle.safe_text: plan.counterparts[48:]}
    for safe_text, counterparts in halves.items():
        assert all(c.mode == "anchor" and c.text.endswith(f", {safe_text}") for c in counterparts)
        assert all(c.negative == "red, circle" for c in counterparts)
    for before, after in zip(plain.counterparts, plan.counterparts, strict=True):
        if before.mode == "negative":
            assert after.text.startswith(f"{before.text}, ") and after.negative == before.negative
        else:
            assert after == before
    assert plan.report["counterparts"] == {"rewrite": 32, "negative": 0, "anchor": 32}


def test_a_users_concept_object_is_erased_and_guarded(tiny_ar_dir, tiny_sd, tmp_path):
    """A Concept built in code: VCE erases it (prompts from a file), a guard acts on it."""
    from safegen.concepts import Concept, ConceptKind
    from safegen.generator import generate
    from safegen.guards import get_guard
    from safegen.recipes.vce import run_vce
    from safegen.sampling import GenerationConfig

    snoopy = Concept("snoopy", ConceptKind.OBJECT, ("snoopy",), "snoopy the beagle", "a dog", examples=())
    prompts = tmp_path / "snoopy.txt"
    prompts.write_text(
        "".join(f"snoopy on a red doghouse, panel {i}\nsleeping beagle on a roof {i}\n" for i in range(4))
    )
    cfg = VCEConfig(
        prompts=str(prompts), min_prompts=4, n_harmful_prompts=8, n_clean_prompts=0, seeds_per_prompt=1
    )
    result = run_vce(
        snoopy, model=str(tiny_ar_dir), config=replace(cfg, steps=1, batch_size=2), out=tmp_path / "run"
    )
    assert result["prompts"]["counterparts"] == {"rewrite": 4, "negative": 4, "anchor": 0}
    assert result["concept"] == "snoopy" and (tmp_path / "run" / "adapter_model.safetensors").is_file()
    guard = get_guard("neg", concept=snoopy)
    images = generate(tiny_sd, ["snoopy"], config=GenerationConfig(steps=2), guard=guard)
    assert (
        guard.describe()["concept"] == "snoopy" and images[0].info["negative_prompt"] == "snoopy the beagle"
    )


def test_mini_tuned_settings_are_named_once_on_a_real_model(caplog, monkeypatch):
    from safegen import bundled

    monkeypatch.setattr(bundled, "_NOTICES", set())
    for _ in range(2):
        bundled.mini_tuned_notice("CompVis/stable-diffusion-v1-4", "erase", "scdpo")
        bundled.mini_tuned_notice("mini", "guard", "sp")  # a bundled model: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "Erase 'scdpo' on CompVis/stable-diffusion-v1-4: its learning rate, beta and steps were chosen on "
        "the mini world: sweep them on your model with --set lr=... --set beta=... --steps N"
    ]


def test_two_mini_concepts_share_one_plan_and_one_cost_set():
    """--concept red,circle: each part gets half the harmful prompts (named, implicit, unprompted); clean
    captions show neither; a keyword-free caption of one part has the other's words rewritten and both
    concepts as its negative condition; the cost renders show one of them or none."""
    from safegen.mini.world import World
    from safegen.recipes.prompts import resolve_target
    from safegen.recipes.scdpo_cost import render_cost_set

    concept, mini = resolve_target("red,circle", "mini")
    assert concept.name == "red+circle" and mini == (("color", "red"), ("object", "circle"))
    plan = plan_prompts(VCEConfig(n_harmful_prompts=64, n_clean_prompts=32), concept, mini)
    assert plan.report["kinds"] == {"named": 32, "implicit": 16, "unprompted": 16}
    red, circle = get_concept("red"), get_concept("circle")
    assert sum(mentions(p, red) for p in plan.harmful[:32]) >= 16  # red's half names red
    assert not any(mentions(p, red) or mentions(p, circle) for p in plan.clean)
    for prompt, c in zip(plan.harmful, plan.counterparts, strict=True):
        if c.mode == "negative":
            assert c.negative == "red, circle" and not mentions(c.text, concept)
        else:
            assert c.text == rewrite(prompt, concept) and not mentions(c.text, concept)
    images, labels = render_cost_set(mini, n=40, seed=0)
    assert len(images) == 40 and labels.tolist() == [0, 1] * 20
    assert World.load().values["color"]  # renders of the world's own values


def test_erase_takes_several_concepts_on_the_command_line(tiny_ar_dir, tmp_path):
    out = tmp_path / "vce"
    args = [
        "erase",
        "--method",
        "vce",
        "--concept",
        "red,circle",
        "--model",
        str(tiny_ar_dir),
        "--device",
        "cpu",
    ]
    sets = ["n_harmful_prompts=4", "seeds_per_prompt=1", "n_clean_prompts=2", "batch_size=2"]
    args += [x for s in sets for x in ("--set", s)] + ["--steps", "2", "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["concept"] == "red+circle"
    rows = [json.loads(r) for r in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    both = lookup_concept("red,circle")
    assert len(rows) == 4 and not any(mentions(r["safe_prompt"], both) for r in rows)
    assert {r.get("negative") for r in rows} <= {None, "red, circle"}
