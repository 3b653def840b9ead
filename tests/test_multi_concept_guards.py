"""Guards against several concepts at once: ``--concept red,circle`` / ``get_guard("sp", concept=[...])``.

The combined concept's fields, part-aware rewriting, every guard on the bundled mini model with two concepts,
bad lists through the CLI (one line, exit code 2), and ``bench mini`` with two concepts on a tiny SD: one
run folder per concept, a resume that finishes the concept an interruption never reached, ``--base-from``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from safegen.bench.mini import run_bench_mini
from safegen.cli import main
from safegen.concepts import (
    Concept,
    ConceptKind,
    check_concept_model,
    combine_concepts,
    concept_parts,
    get_concept,
    lookup_concept,
    mentions,
    rewrite,
)
from safegen.errors import SafegenError
from safegen.generator import generate
from safegen.guards import build_guard, get_guard
from safegen.loader import LoadedModel, load_model
from safegen.sampling import GenerationConfig

PROMPTS = ["a red striped circle", "a blue dotted star"]


# --------------------------------------------------------------------------- the combined concept
def test_combine_concepts_fields() -> None:
    red, circle = get_concept("red"), get_concept("circle")
    both = combine_concepts([red, circle])
    assert both.name == "red+circle" and both.kind is ConceptKind.MINI and both.detector is None
    assert both.keywords == ("red", "circle") and both.synonyms == red.synonyms + circle.synonyms
    assert both.examples == tuple(dict.fromkeys(red.examples + circle.examples))  # shared captions once
    assert both.unsafe_text == "red, circle" and both.safe_text == f"{red.safe_text}, {circle.safe_text}"
    assert both.parts == (red, circle) and concept_parts(both) == (red, circle)
    assert concept_parts(red) == (red,) and red.parts == ()
    assert both.to_dict()["parts"] == ["red", "circle"] and "parts" not in red.to_dict()
    assert combine_concepts([both, get_concept("striped")]).name == "red+circle+striped"  # flattened
    assert len({both, combine_concepts([red, circle])}) == 1  # hashable, equal by value
    real = combine_concepts([get_concept("violence"), get_concept("nudity")])
    assert real.kind is ConceptKind.VIOLENCE  # kinds differ outside the mini world: the first part's
    assert set(get_concept("nudity").ignore) <= set(real.ignore)
    blank = Concept("plain", ConceptKind.OBJECT, ("plain",), "a plain thing", "")
    assert combine_concepts([blank, red]).safe_text == red.safe_text  # empty safe texts left out


@pytest.mark.parametrize(
    "spec",
    ["red,circle", " red , circle, ", ["red", "circle"], ("red", get_concept("circle")), ["red,circle"]],
)
def test_lookup_reads_lists(spec) -> None:
    assert lookup_concept(spec) == combine_concepts([get_concept("red"), get_concept("circle")])


@pytest.mark.parametrize("spec", ["red", " red ", "red,", ["red"], get_concept("red")])
def test_one_concept_stays_itself(spec) -> None:
    assert lookup_concept(spec) == get_concept("red") and lookup_concept(spec).parts == ()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("red,red", "Concept 'red' is named twice in red,red"),
        (["red", "circle", get_concept("red")], "named twice"),
        ("red,circel", "Unknown concept 'circel'. Did you mean 'circle'"),
        (" , ", "No concept named"),
        ([], "No concept named"),
        (["red", 3], "a name, a comma-separated list"),
    ],
)
def test_lookup_errors(spec, message: str) -> None:
    with pytest.raises(SafegenError, match=message):
        lookup_concept(spec)


def test_rewrite_uses_each_parts_safe_text_once() -> None:
    both = lookup_concept("red,circle")
    assert rewrite("a red striped circle", both) == "a green striped square"
    assert rewrite("a crimson disc", both) == "a crimson disc"  # held-out synonyms stay
    assert rewrite("a crimson disc", both, include_synonyms=True) == "a green square"
    chain = lookup_concept("red,green")  # red -> green and green -> blue, never red -> blue
    assert rewrite("a red star and a green circle", chain) == "a green star and a blue circle"
    real = lookup_concept("violence,nudity")  # each part's ignore phrases are its own
    assert not mentions("seen with the naked eye", real) and mentions("a nude figure", real)


def test_each_part_is_checked_against_the_model() -> None:
    check_concept_model(lookup_concept("red,circle"), "mini", "guard 'sp'")
    with pytest.raises(SafegenError, match="no concept 'nudity'"):
        check_concept_model(lookup_concept("red,nudity"), "mini", "guard 'sp'")
    with pytest.raises(SafegenError, match="no concept 'nudity'"):
        build_guard("neg", "red,nudity", model="mini")


# --------------------------------------------------------------------------- guards on the mini model
@pytest.fixture(scope="module")
def mini() -> LoadedModel:
    return load_model("mini", device="cpu")


def run(model: LoadedModel, guard) -> tuple[np.ndarray, list[dict]]:
    images = generate(model, PROMPTS, seeds=[0, 1], config=GenerationConfig(steps=4), guard=guard)
    return np.stack([np.asarray(im.image) for im in images]), [im.info for im in images]


@pytest.mark.parametrize(
    ("name", "strength", "key"),
    [
        ("sp", "strong", None),
        ("dlr", "strong", "negative"),
        ("sld", "max", "safety_text"),
        ("neg", None, "negative_prompt"),
    ],
)
def test_every_guard_takes_two_concepts(mini: LoadedModel, name: str, strength, key) -> None:
    judge = {"judge": "text"} if name == "sp" else {}  # 4 steps: fewer than the noise judge's K
    guard = get_guard(name, concept="red,circle", strength=strength, **judge)
    assert guard.concept.name == "red+circle" and guard.describe()["concept"] == "red+circle"
    both, info = run(mini, guard)
    one, _ = run(mini, get_guard(name, concept="red", strength=strength, **judge))
    assert both.shape == (2, 64, 64, 3) and not np.array_equal(both[0], one[0])
    if key is None:  # SP-Guard judges the prompt by both concepts' words
        assert info[0]["flagged_words"] == ["red", "circle"] and info[1]["judged_benign"]
    else:  # the guard's negative or safety text names both concepts
        assert info[0][key] == "red, circle"


def test_sp_judges_and_guides_each_part_on_its_own(mini: LoadedModel) -> None:
    """Two concepts: the judged steps run each part's eps_s; only the part judged harmful is guided,
    with its own thresholds (part_options), as the guard against that part alone would."""
    from test_guards import unet_batches

    opts = dict(judge="noise", judge_steps=2, judge_start=0, direction="unsafe", window_start=0.0,
                window_end=1.0, presence=False)  # fmt: skip
    parts = {"red": {"tau": -1.0, "h_sat": -0.99}, "circle": {"tau": 0.99, "h_sat": 1.0}}
    guard = get_guard("sp", concept="red,circle", part_options=parts, **opts)
    sizes = unet_batches(mini, lambda: run(mini, guard))
    assert sizes == [12, 12, 6, 6]  # [u, c, s_red, a_red, s_circle, a_circle] x 2; then red's [u, c, s]
    both, info = run(mini, guard)
    assert all(
        i["parts"]["red"]["strength"] == 60.0 and i["parts"]["circle"]["strength"] == 0.0 for i in info
    )
    alone, _ = run(mini, get_guard("sp", concept="red", tau=-1.0, h_sat=-0.99, **opts))
    plain, _ = run(mini, None)
    assert np.abs(both.astype(float) - alone).mean() < 1.0 < np.abs(both.astype(float) - plain).mean()
    with pytest.raises(SafegenError, match="does not guard: blue"):
        get_guard("sp", concept="red,circle", part_options={"blue": {"tau": 0.1}})


def test_dlr_judges_each_part_and_blends_by_the_worst(mini: LoadedModel) -> None:
    """dlr against two concepts: the judged steps run each part's [s, a]; omega follows the part judged most
    harmful (its own thresholds from part_options), which each image's report names."""
    from test_guards import unet_batches

    opts = dict(judge_steps=2, judge_start=0, presence=False, tau_gc=0.0, speculate=False)
    parts = {"red": {"tau": 0.99, "h_sat": 1.0}, "circle": {"tau": -1.0, "h_sat": -0.99}}
    guard = get_guard("dlr", concept="red,circle", part_options=parts, **opts)
    assert unet_batches(mini, lambda: run(mini, guard))[:2] == [12, 12]  # [u, c, s_r, a_r, s_c, a_c] x 2
    _, info = run(mini, guard)
    for i in info:
        assert i["weight"] == 1.0 and i["fork_step"] == 2 and set(i["parts"]) == {"red", "circle"}
        assert i["harm"] == i["parts"]["circle"]["harm"]  # the part that set omega
    quiet = {"red": {"tau": 0.99, "h_sat": 1.0}, "circle": {"tau": 0.99, "h_sat": 1.0}}
    _, info = run(mini, get_guard("dlr", concept="red,circle", part_options=quiet, **opts))
    assert all(i["judged_benign"] and i["fork_step"] is None for i in info)
    with pytest.raises(SafegenError, match="does not guard: blue"):
        get_guard("dlr", concept="red,circle", part_options={"blue": {"tau": 0.1}})


def test_sp_reads_each_parts_bundled_calibration() -> None:
    import yaml

    from safegen.bundled import BUNDLED

    guard = build_guard("sp", "red,circle", model="mini")
    for part in guard.parts:
        data = yaml.safe_load(
            (BUNDLED["mini"].path / "calibration" / f"{part.concept.name}.yaml").read_text()
        )
        assert (part.tau, part.h_sat, part.stat) == (data["tau"], data["h_sat"], data["judge_direction"])
        assert (part.presence_tau, part.presence_h_sat) == (data["presence_tau"], data["presence_h_sat"])
    dlr = build_guard("dlr", "red,circle", model="mini")  # dlr's gate reads the same files, per part
    assert [v["tau"] for v in dlr.part_values] == [p.tau for p in guard.parts]
    shared = build_guard("sp", "red,circle", sets=["tau=0.05"], model="mini")
    assert {p.tau for p in shared.parts} == {0.05}  # an explicit option is every part's
    assert build_guard("sp", "red,circle").parts[0].tau == get_guard("sp", concept="red").opts.tau  # no model


def test_list_and_string_build_the_same_guard() -> None:
    a = get_guard("neg", concept=["red", "circle"])
    b = get_guard("neg", concept="red, circle", text="keywords")
    assert a.concept == b.concept and a.text == b.text == "red, circle"


# --------------------------------------------------------------------------- the CLI
def test_generate_with_two_concepts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["generate", PROMPTS[0], "--steps", "2", "--device", "cpu", "--guard", "neg"]
    assert main([*args, "--concept", "red,circle", "--out", str(out), "--json"]) == 0
    line = json.loads((out / "generation.jsonl").read_text())
    assert line["guard"]["concept"] == "red+circle" and line["info"]["negative_prompt"] == "red, circle"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "a red circle", "--guard", "sp", "--concept", "red,red"], "named twice"),
        (["generate", "a red circle", "--guard", "sld", "--concept", "red,circel"], "Did you mean 'circle'"),
        (["generate", "a red circle", "--guard", "neg", "--concept", ","], "No concept named"),
        (["generate", "a red circle", "--guard", "dlr", "--concept", "red,nudity"], "no concept 'nudity'"),
        (["bench", "mini", "--guard", "sp", "--concept", "circle,red,circle"], "named twice"),
        (["bench", "mini", "--guard", "sp", "--concept", "red,nudity"], "no concept 'nudity'"),
        (["erase", "--method", "vce", "--concept", "red,red"], "named twice"),
        (["attack", "--attack", "inversion", "--concept", "red,circle"], "takes one concept here"),
    ],
)
def test_bad_lists_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- bench mini
def test_bench_mini_runs_each_concept(tiny_sd_dir: Path, tmp_path: Path, capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["bench", "mini", "--model", str(tiny_sd_dir), "--concept", "red,circle", "--guard", "neg"]
    args += ["--images-per-prompt", "1", "--steps", "1", "--device", "cpu"]
    assert main([*args, "--out", str(first), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["concept"] == "red+circle" and list(result["concepts"]) == ["red", "circle"]
    for name, one in result["concepts"].items():
        config = json.loads((first / name / "manifest.json").read_text())["config"]
        assert config["concept"] == name and config["guard"]["concept"] == "red+circle"
        assert json.loads((first / name / "results.json").read_text()) == one
        assert {"ua", "synonym_ua", "implicit_ua", "unprompted_rate", "ira", "cra"} <= set(one["erasure"])
    assert result["n_images"] == sum(r["n_images"] for r in result["concepts"].values())

    # the unmodified images of the first run stand in for the base variant of each concept
    kwargs = dict(model=str(tiny_sd_dir), concept=["red", "circle"], guard="neg", images_per_prompt=1)
    kwargs |= dict(steps=1, device="cpu", guard_options={"weight": 0.5}, base_from=first, out=second)
    again = run_bench_mini(**kwargs)
    for name in ("red", "circle"):
        assert again["concepts"][name]["erasure"]["base"] == result["concepts"][name]["erasure"]["base"]
        assert not (second / name / "images" / "base").exists()

    # interrupted before its second concept: --resume reads the first back and runs the second
    shutil.rmtree(second / "circle")
    with pytest.raises(SafegenError, match="already holds a bench mini run; pass --resume"):
        run_bench_mini(**kwargs)
    assert run_bench_mini(**kwargs, resume=True) == again
    assert (
        main([*args, "--out", str(second), "--resume", "--set", "weight=0.5", "--base-from", str(first)]) == 0
    )
    table = capsys.readouterr().out
    assert "bench mini: guard neg on red+circle" in table and table.count("circle") >= 2
    with pytest.raises(SafegenError, match=r"--base-from .*[/\\]red holds no bench mini run"):
        run_bench_mini(**{**kwargs, "base_from": tmp_path, "out": None})
