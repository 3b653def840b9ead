"""The ``safegen`` CLI: every verb's help, real runs where the backend exists, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from safegen import api
from safegen.choices import Device, DType, NudeNetPreset
from safegen.cli import app, main
from safegen.errors import SafegenError

runner = CliRunner()


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: ")


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "verb",
    [[], ["generate"], ["classify"], ["models"], ["methods"], ["concepts"], ["bench"], ["bench", "mini"]],
)
def test_help(verb):
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_no_arguments_shows_help(capsys):
    code, out, _ = run_main(capsys)
    assert code == 0 and "generate" in out and "concepts" in out
    code, out, _ = run_main(capsys, "bench")
    assert code == 0 and "mini" in out


# --------------------------------------------------------------------------- registries
def test_methods():
    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {r["name"] for r in rows} == {
        "vce",
        "scdpo",
        "sp",
        "dlr",
        "sld",
        "neg",
        "unlearndiff",
        "inversion",
        "ringabell",
    }
    vce = next(r for r in rows if r["name"] == "vce")
    assert (
        vce["kind"] == "erase"
        and vce["family"] == "autoregressive"
        and vce["target"] == "safegen.recipes.vce:run_vce"
    )
    assert {r["name"] for r in rows if r["baseline"]} == {"sld", "neg"}
    table = runner.invoke(app, ["methods"])
    assert table.exit_code == 0 and "scdpo" in table.stdout


def test_concepts(tmp_path):
    result = runner.invoke(app, ["concepts", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["red"]["axis"] == "color" and rows["nudity"]["kind"] == "nsfw"
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "concepts:\n  - {name: church, kind: object, keywords: [church],"
        " unsafe_text: a church, safe_text: a house}\n"
    )
    table = runner.invoke(app, ["concepts", "--concepts-file", str(extra)])
    assert table.exit_code == 0 and "church" in table.stdout and "van-gogh" in table.stdout


def test_bad_concepts_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "concepts:\n  - {name: c1, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y, oops: 1}\n"
    )
    code, _, err = run_main(capsys, "concepts", "--concepts-file", str(bad))
    assert_one_line_error(code, err)
    assert str(bad) in err and "c1" in err and "oops" in err


def test_models():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert "mini" in {r["name"] for r in rows}
    assert {"name", "kind", "path"} <= set(rows[0])


def test_cli_choices_mirror_the_loader():
    from safegen import loader

    assert {d.value for d in Device} == set(loader.DEVICES)
    assert {d.value for d in DType} == {"auto", *loader.DTYPES}


def test_cli_presets_mirror_the_nudenet_classifier():
    from safegen.classifiers.nudenet import PRESETS

    assert {p.value for p in NudeNetPreset} == set(PRESETS)


# --------------------------------------------------------------------------- classify
@pytest.fixture
def mini_png(tmp_path):
    from safegen.mini.world import World

    world = World.load()
    rng = np.random.default_rng(0)
    path = tmp_path / "img" / "0000.png"
    path.parent.mkdir()
    Image.fromarray(world.render(world.sample_scene(rng), rng)).save(path)
    return path


def test_classify_mini(mini_png):
    result = runner.invoke(app, ["classify", str(mini_png.parent), "--classifier", "mini", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["path"] == str(mini_png) and row["classifier"] == "mini"
    assert {"object", "color", "texture"} <= set(row["objects"][0])


def test_classify_nudenet(mini_png):
    result = runner.invoke(app, ["classify", str(mini_png), "--preset", "i2p", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["unsafe"] is False and row["classifier"] == "nudenet"


def test_classify_bad_paths(tmp_path, capsys):
    code, _, err = run_main(capsys, "classify", str(tmp_path / "missing.png"))
    assert_one_line_error(code, err)
    assert "missing.png" in err
    code, _, err = run_main(capsys, "classify", str(tmp_path))  # a folder without images
    assert_one_line_error(code, err)
    junk = tmp_path / "junk.png"
    junk.write_text("not a png")
    with pytest.raises(SafegenError, match="not an image"):
        api.classify([junk], classifier="mini")
    code, _, err = run_main(capsys, "classify", str(junk), "--classifier", "q16")
    assert_one_line_error(code, err)


# --------------------------------------------------------------------------- generate
@pytest.mark.parametrize(
    "args",
    [
        [""],
        ["   "],
        ["ok", "\t"],
        ["x", "--n", "0"],
        ["x", "--steps", "0"],
        ["x", "--cfg", "-1"],
        ["x", "--seed", "-1"],
        ["x", "--batch-size", "0"],
        ["x", "--device", "tpu"],
        ["x", "--dtype", "int8"],
        ["x", "--no-such-option"],
        [],
    ],
)
def test_generate_bad_input_writes_nothing(tmp_path, capsys, args):
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "generate", *args, "--out", str(out))
    assert_one_line_error(code, err)
    assert stdout == ""
    assert not out.exists()


def test_generate_forwards_options_and_prints(monkeypatch, tmp_path):
    seen = {}

    def fake(prompts, **kw):
        seen.update(kw, prompts=prompts)
        kw["progress"](1, 1)
        record = {"path": str(tmp_path / "0000.png"), "prompt": prompts[0], "seed": 3, "info": {}}
        return {"out": str(tmp_path), "files": [record["path"]], "records": [record]}

    monkeypatch.setattr(api, "generate_to_dir", fake)
    args = ["generate", "a red circle", "--n", "2", "--seed", "3", "--steps", "5", "--cfg", "2.5"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path), "--dtype", "fp32", "--guard", "none"])
    assert result.exit_code == 0, result.output
    assert f"Wrote 1 images to {tmp_path}" in result.stdout
    assert (
        seen["prompts"] == ["a red circle"] and seen["n"] == 2 and seen["steps"] == 5 and seen["cfg"] == 2.5
    )
    assert seen["dtype"] is api.DType.FP32 and seen["out"] == tmp_path
    as_json = runner.invoke(app, [*args, "--json"])
    assert json.loads(as_json.stdout)["records"][0]["seed"] == 3


def test_backend_errors_are_one_line(monkeypatch, capsys):
    def fail(prompts, **kw):
        raise SafegenError("Unknown model 'minii'. Did you mean 'mini'? Available: mini")

    monkeypatch.setattr(api, "generate_to_dir", fail)
    code, _, err = run_main(capsys, "generate", "x", "--model", "minii")
    assert_one_line_error(code, err)
    assert "Did you mean 'mini'" in err

    def denied(prompts, **kw):
        raise PermissionError(13, "Permission denied", "/root/out")

    monkeypatch.setattr(api, "generate_to_dir", denied)
    code, _, err = run_main(capsys, "generate", "x")
    assert_one_line_error(code, err)
    assert err.strip() == "Error: Permission denied: /root/out"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_models import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model", seed=0)


def test_generate_real_run(tmp_path, tiny_model):
    out = tmp_path / "out"
    args = ["generate", "a red circle", "a blue star", "--model", str(tiny_model), "--n", "2", "--steps", "2"]
    result = runner.invoke(app, [*args, "--seed", "5", "--device", "cpu", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["records"]
    assert [(r["prompt"], r["seed"]) for r in records] == [
        ("a red circle", 5),
        ("a red circle", 6),
        ("a blue star", 7),
        ("a blue star", 8),
    ]
    assert all(Path(r["path"]).is_file() for r in records)
    lines = [json.loads(x) for x in (out / "generation.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["settings"]["steps"] == 2 and lines[0]["guard"]["name"] == "none"


@pytest.mark.parametrize(
    "bad", [["--guard", "nope"], ["--model", "minii"], ["--cfg", "1000"], ["--n", "100001"]]
)
def test_generate_backend_errors_write_nothing(tmp_path, tiny_model, capsys, bad):
    out = tmp_path / "out"
    args = ["generate", "x", "--model", str(tiny_model), "--steps", "1", *bad, "--out", str(out)]
    code, _, err = run_main(capsys, *args)
    assert_one_line_error(code, err)
    assert not out.exists()


# --------------------------------------------------------------------------- bench
def test_bench_mini_forwards_options(monkeypatch):
    seen = {}

    def fake(**kw):
        seen.update(kw)
        return {
            "concept": kw["concept"].name,
            "metrics": {"erasure": 0.9, "kept": 0.8},
            "per_prompt": list(range(20)),
        }

    monkeypatch.setitem(sys.modules, "safegen.bench.mini", types.SimpleNamespace(run_bench_mini=fake))
    args = ["bench", "mini", "--concept", "red", "--images-per-prompt", "3", "--steps", "4", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        seen["concept"].name == "red"
        and seen["images_per_prompt"] == 3
        and (seen["steps"], seen["seed"]) == (4, 1)
    )
    assert "metrics.erasure" in result.stdout and "[20 items]" in result.stdout
    as_json = runner.invoke(app, [*args, "--json"])
    assert json.loads(as_json.stdout)["metrics"]["kept"] == 0.8


def test_bench_mini_bad_input(tmp_path, capsys):
    code, _, err = run_main(capsys, "bench", "mini", "--images-per-prompt", "0")
    assert_one_line_error(code, err)
    code, _, err = run_main(capsys, "bench", "mini", "--adapter", str(tmp_path / "missing"))
    assert_one_line_error(code, err)


# --------------------------------------------------------------------------- the real process
def test_entry_point_process_gives_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts:\n  - {name: c1}\n")
    cmd = [sys.executable, "-m", "safegen.cli", "concepts", "--concepts-file", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr.strip()
        == f"Error: {bad}: concept 'c1': missing field(s) kind, keywords, unsafe_text, safe_text."
    )
