"""The guards from the command line and the benchmark scripts: real runs on a tiny SD, bad input, sweeps.

``safegen generate --guard sp|dlr|sld|neg --concept C [--strength] [--set] [--guard-config] [--save-masks]``
and ``safegen bench mini --guard G --concept C``: a bad guard input is one line on stderr, exit code 2, and
nothing written. ``benchmarks/sweep_guards.py`` and ``benchmarks/bench_guard_speed.py`` run with tiny
settings (the sweep with a stand-in for run_bench_mini, so it needs neither the mini model nor minutes).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from safegen.cli import app, main

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def load_script(name: str) -> types.ModuleType:
    """A benchmark script as a module (its folder on ``sys.path``, as when run from the shell)."""
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def test_generate_with_sp_writes_reports_and_masks(tmp_path: Path, tiny_sd_dir: Path) -> None:
    out = tmp_path / "out"
    config = tmp_path / "sp.yaml"
    config.write_text("# safegen generate ... --guard-config sp.yaml\nstrength: strong\nwindow_end: 0.5\n")
    args = ["generate", "a red circle", "a blue star", "--model", str(tiny_sd_dir), "--steps", "4"]
    args += ["--device", "cpu", "--guard", "sp", "--concept", "red", "--guard-config", str(config)]
    sets = ["--set", "judge=noise", "--set", "judge_steps=1", "--set", "tau=-1"]
    result = runner.invoke(app, [*args, *sets, "--save-masks", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Wrote 2 images" in result.stdout and "Wrote 2 masks" in result.stdout
    lines = [json.loads(x) for x in (out / "generation.jsonl").read_text().splitlines()]
    guard = lines[0]["guard"]
    assert guard["name"] == "sp" and guard["concept"] == "red" and guard["strength"] == "strong"
    assert guard["tau"] == -1.0 and guard["window_end"] == 0.5  # --set over the file over the preset
    for line in lines:
        info = line["info"]
        assert {"harm", "strength", "mask_coverage", "judged_benign"} <= set(info)
        assert info["strength"] > 0 and len(info["mask_coverage"]) == len(info["guided_steps"]) == 1
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == ["00000_seed0_step001.png", "00001_seed1_step001.png"]
    with Image.open(masks[0]) as im:
        assert im.size == (32, 32) and im.mode == "L"


@pytest.mark.parametrize("guard", ["dlr", "sld", "neg"])
def test_generate_with_each_guard(tmp_path: Path, tiny_sd_dir: Path, guard: str) -> None:
    out = tmp_path / "out"
    args = ["generate", "a red circle", "--model", str(tiny_sd_dir), "--steps", "2", "--device", "cpu"]
    args += ["--guard", guard, "--concept", "red", "--strength", "weak", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["records"][0]
    assert Path(record["path"]).parent == out and Path(record["path"]).is_file()
    line = json.loads((out / "generation.jsonl").read_text())
    assert line["guard"]["name"] == guard and line["guard"]["strength"] == "weak"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--guard", "sp"], "needs a concept"),
        (["--guard", "sp", "--concept", "nudityy"], "Did you mean 'nudity'"),
        (["--guard", "sp", "--concept", "red", "--set", "nope=1"], "has no option 'nope'"),
        (["--guard", "sp", "--concept", "red", "--set", "tau=5"], "tau must be in"),
        (["--guard", "sp", "--concept", "red", "--set", "tau=high"], "tau must be a number"),
        (["--guard", "sp", "--concept", "red", "--set", "tau"], "KEY=VALUE"),
        (["--guard", "dlr", "--concept", "red", "--strength", "extreme"], "Unknown strength"),
        (["--guard", "sld", "--concept", "red", "--save-masks"], "--save-masks needs --guard sp"),
        (["--strength", "weak"], "Guard 'none' takes no"),
        (["--guard", "spp", "--concept", "red"], "Unknown guard 'spp'"),
        (["--guard", "sp", "--concept", "nudity", "--model", "mini"], "only knows the mini world"),
        (["--guard", "sp", "--concept", "red", "--guard-config", "MISSING"], "does not exist"),
        (["--guard", "sp", "--concept", "red", "--guard-config", "BAD"], "not valid YAML"),
    ],
)
def test_generate_bad_guard_input_writes_nothing(
    tmp_path: Path, tiny_sd_dir: Path, capsys, args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tau: [1\n")
    args = [str(bad) if a == "BAD" else str(tmp_path / "missing.yaml") if a == "MISSING" else a for a in args]
    model = [] if "--model" in args else ["--model", str(tiny_sd_dir)]
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "generate", "a red circle", *model, *args, "--out", str(out))
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err
    assert message in err
    assert not out.exists()


def test_bench_mini_forwards_guard_options(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    def fake(**kw):
        seen.update(kw)
        return {"concept": kw["concept"], "erasure": {"ua": 1.0}}

    monkeypatch.setitem(sys.modules, "safegen.bench.mini", types.SimpleNamespace(run_bench_mini=fake))
    args = ["bench", "mini", "--guard", "sp", "--concept", "red", "--strength", "strong", "--set", "tau=0.2"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    from safegen.guards import calibrated_options

    calibrated = calibrated_options("sp", "red", "mini")  # the bundled calibration, under what is given
    assert calibrated and seen["guard"] == "sp"
    assert seen["guard_options"] == {**calibrated, "strength": "strong", "tau": 0.2}
    bad = runner.invoke(app, ["bench", "mini", "--guard", "sp", "--concept", "red", "--set", "x=1"])
    assert bad.exit_code != 0


def test_guards_verb() -> None:
    result = runner.invoke(app, ["guards", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"none", "sp", "dlr", "sld", "neg"}
    assert {o["name"] for o in rows["sp"]["options"]} >= {"tau", "lam_max", "mask", "judge_steps"}
    assert set(rows["sld"]["presets"]) == {"weak", "medium", "strong", "max"}
    assert runner.invoke(app, ["guards", "dlr"]).exit_code == 0


# --------------------------------------------------------------------------- benchmark scripts
def test_speed_script_on_the_tiny_model(tiny_sd_dir: Path, tmp_path: Path, capsys) -> None:
    speed = load_script("bench_guard_speed")
    out = tmp_path / "speed.json"
    args = ["--model", str(tiny_sd_dir), "--device", "cpu", "--steps", "2", "--pairs", "1", "--prompts", "2"]
    assert speed.main([*args, "--force-judgement", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {"sp benign", "sp concept", "dlr benign", "dlr", "sld", "sld diffusers", "neg"}
    assert rows["sp benign"]["judged_benign"] == [True, True]
    assert rows["sp concept"]["judged_benign"] == [False, False]
    assert rows["sld diffusers"]["max_diff_vs_ours_255"] <= 1
    assert all(r["ratio"] > 0 for r in rows.values())
    assert "sp benign" in capsys.readouterr().out
