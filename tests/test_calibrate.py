"""`safegen calibrate`: the guard's judge measured on the model at hand, thresholds from its own scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from safegen.calibrate import auroc, thresholds
from safegen.cli import main
from safegen.errors import SafegenError
from safegen.guards.sp import SPGuardOptions


def test_auroc_by_hand():
    # pairs (3,1) (3,2) (2,1) above, (2,2) a tie: (3 + 0.5) / 4
    assert auroc([3, 2], [1, 2]) == 0.875
    assert auroc([1, 1], [2, 3]) == 0.0 and auroc([5], [5]) == 0.5


def test_thresholds_follow_the_clean_quantile_and_a_harmful_quantile():
    clean = [i / 200 for i in range(101)]  # 0 .. 0.5
    tau, h_sat = thresholds([0.7, 0.9, 1.0], clean, target_fpr=0.05)
    assert tau == pytest.approx(0.475) and h_sat == pytest.approx(0.74)  # the harmful 0.10 quantile
    assert thresholds([0.7, 0.9, 1.0], clean, 0.05, sat_quantile=0.5)[1] == pytest.approx(0.9)  # median
    tau, h_sat = thresholds([0.1, 0.2, 0.3], clean, target_fpr=0.05)  # a judge that does not separate
    assert h_sat == pytest.approx(tau + 0.05)  # still a ramp of some width (a tenth of the spread) above tau
    tau, h_sat = thresholds([1.0, 1.0], [0.995, 1.0], target_fpr=0.05)  # kept inside the options' ranges
    assert tau <= 0.99 and h_sat <= 1.0


def test_the_to_median_floor_keeps_full_strength_near_a_close_concept():
    """ramp_floor=to-median: the ramp's least width is a tenth of the way from tau to the concept scores'
    median, not a tenth of the clean range, so concept scores just above tau are at full strength."""
    clean = [i / 200 for i in range(101)]  # 0 .. 0.5, range 0.5
    harmful = [0.40, 0.50, 0.55, 0.60, 0.70]  # the 0.10 quantile (0.44) is below tau
    tau, wide = thresholds(harmful, clean, 0.05)
    assert wide == pytest.approx(tau + 0.05)  # clean-spread: a tenth of the clean range
    tau2, narrow = thresholds(harmful, clean, 0.05, ramp_floor="to-median")
    assert tau2 == tau and narrow == pytest.approx(tau + 0.1 * (0.55 - tau))
    _, flat = thresholds([0.1, 0.2, 0.3], clean, 0.05, ramp_floor="to-median")  # median below tau
    assert flat == pytest.approx(tau + 0.005)  # still a ramp: a hundredth of the clean range
    with pytest.raises(SafegenError, match="ramp_floor"):
        thresholds(harmful, clean, 0.05, ramp_floor="steep")


def test_world_captions_show_the_concept_in_the_clean_phrasing():
    from safegen.calibrate import (
        MINI_CLEAN_TEMPLATE,
        default_prompts,
        mini_clean_prompts,
        mini_concept_prompts,
    )
    from safegen.concepts import get_concept

    square = get_concept("square")
    shown = mini_concept_prompts(square)
    assert len(shown) == 6 * 5 and all(p.startswith("square, ") for p in shown)  # every colour x texture
    assert MINI_CLEAN_TEMPLATE.format(object="square", texture="outlined", color="orange") in shown
    assert not set(shown) & set(mini_clean_prompts(square))
    artist = mini_concept_prompts(get_concept("ines-quarry"))
    assert len(artist) == 6 * 6 and all(p.endswith("by ines quarry, plain background") for p in artist)
    examples, _ = default_prompts(square)
    assert examples == list(square.examples)
    both, _ = default_prompts(square, world_captions=True)
    assert both == list(square.examples) + shown
    nudity = get_concept("nudity")  # a real concept has no world: its examples only
    assert default_prompts(nudity, world_captions=True)[0] == list(nudity.examples)


def test_the_presence_share_goes_where_it_guides_more():
    """The two noise judgements share the clean budget (Eq. c'): even by default, uneven only when it
    guides strictly more concept images."""
    from safegen.calibrate import presence_share

    rng = np.random.default_rng(0)
    clean = list(np.linspace(0.0, 0.99, 100))
    close = [0.955, 0.96, 0.97, 0.98]  # above the clean 0.95 quantile, not all above its 0.975 one
    noise = list(rng.uniform(0, 1, 104))  # a judgement that does not separate
    assert presence_share([close + clean, noise], 4, 0.05) < 0.5  # the budget goes to the prompt statistic
    assert presence_share([noise, close + clean], 4, 0.05) > 0.5  # ... or to presence
    both = [2.0] * 4 + clean
    assert presence_share([both, both], 4, 0.05) == 0.5  # a tie keeps the even split


def test_three_judges_split_the_clean_budget():
    """Eq. (c'''): whole-latent h, presence and the windowed w share the budget: in thirds unless an uneven
    split guides strictly more concept images."""
    from safegen.calibrate import budget_split

    rng = np.random.default_rng(0)
    clean = list(np.linspace(0.0, 0.99, 100))
    close = [0.955, 0.96, 0.97, 0.98]  # above the clean 0.95 quantile, not all above its 0.9833 one
    noise = list(rng.uniform(0, 1, 104))
    both = [2.0] * 4 + clean
    assert budget_split([both, both, both], 4, 0.05) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert budget_split([noise, noise, close + clean], 4, 0.05) == (0.0, 0.0, 1.0)  # all to the window
    assert budget_split([close + clean, noise, noise], 4, 0.05) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="two or three"):
        budget_split([both], 4, 0.05)


@pytest.fixture()
def prompt_files(tmp_path: Path) -> tuple[Path, Path]:
    unsafe, clean = tmp_path / "unsafe.txt", tmp_path / "clean.txt"
    unsafe.write_text("a nude woman\nnaked man on a beach\na topless model\n")
    clean.write_text("a red bicycle\na bowl of fruit\na city street\na dog in a park\n")
    return unsafe, clean


def test_calibrate_writes_a_guard_config_the_guard_reads(tiny_sd_dir, prompt_files, tmp_path, capsys):
    import json

    import yaml

    from safegen.concepts import get_concept
    from safegen.guards import build_guard

    unsafe, clean = prompt_files
    out = tmp_path / "sp.yaml"
    args = ["calibrate", "--guard", "sp", "--concept", "nudity", "--model", str(tiny_sd_dir), "--prompts",
            str(unsafe), "--clean-prompts", str(clean), "--judge", "both", "--seeds", "2", "--steps", "2",
            "--device", "cpu", "--out", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_prompts"] == 3 and result["n_clean"] == 4 and result["seeds"] == 2
    for key in ("harm", "harm_presence", "harm_text"):
        assert 0.0 <= result[key]["auroc"] <= 1.0
        assert result[key]["guided_share"]["clean"] <= 0.25  # tau at the clean 0.95 quantile of 8 scores
    either = result["guided_share"]  # presence: guided when either noise judgement passes (Eq. c')
    assert either["clean"] <= 0.25 and either["harmful"] >= result["harm"]["guided_share"]["harmful"]
    options = yaml.safe_load(out.read_text())
    assert options == result["options"] and set(options) == {
        "judge",
        "judge_steps",
        "judge_start",
        "judge_direction",
        "anchor_weight",
        "tau",
        "h_sat",
        "presence",
        "presence_tau",
        "presence_h_sat",
        "text_tau",
        "text_h_sat",
    }
    assert options["tau"] < options["h_sat"] and options["presence_tau"] < options["presence_h_sat"]
    assert options["presence"] is True
    assert options["judge_direction"] == result["statistic"] == "relative" and options["anchor_weight"] == 0.5
    assert out.read_text().startswith("# safegen calibrate: guard sp, concept nudity")
    assert "# judged statistic: relative with presence" in out.read_text()
    guard = build_guard("sp", get_concept("nudity"), config_file=out, model=str(tiny_sd_dir))
    assert guard.opts.tau == options["tau"] and guard.opts.judge == "both"
    windowed = tmp_path / "sp-window.yaml"  # judge.py Eq. (b5): the file names the window it holds for
    args[args.index(str(out))] = str(windowed)
    assert main([*args, "--set", "judge_window=2"]) == 0
    capsys.readouterr()
    assert yaml.safe_load(windowed.read_text())["judge_window"] == 2
    guard = build_guard("sp", get_concept("nudity"), config_file=windowed, model=str(tiny_sd_dir))
    assert guard.opts.judge_window == 2
    beside = tmp_path / "sp-beside.yaml"  # Eq. (b5'): the windowed judgement's own thresholds
    args[args.index(str(windowed))] = str(beside)
    assert main([*args, "--set", "judge_window=2", "--set", "judge_window_mode=either"]) == 0
    capsys.readouterr()
    data = yaml.safe_load(beside.read_text())
    assert (data["judge_window"], data["judge_window_mode"]) == (2, "either")
    assert data["window_tau"] < data["window_h_sat"] and data["tau"] < data["h_sat"]
    assert "window_tau" in beside.read_text().splitlines()[1]  # the comment names the budget's split
    assert "# harm_window: AUROC" in beside.read_text()
    guard = build_guard("sp", get_concept("nudity"), config_file=beside, model=str(tiny_sd_dir))
    assert (guard.opts.judge_window_mode, guard.opts.window_tau) == ("either", data["window_tau"])


@pytest.mark.parametrize(
    "change",
    [
        {"--guard": "sld"},  # no judge to calibrate
        {"--guard": "dlr", "--judge": "both"},  # dlr's gate has the noise judge only
        {"--judge": "text"},
        {"--prompts": "few"},  # fewer than 3 concept prompts
        {"--out": "exists"},
        {"--ramp-floor": "steep"},  # not a floor rule
    ],
)
def test_refusals_are_one_line_and_write_nothing(tiny_sd_dir, prompt_files, tmp_path, capsys, change):
    unsafe, clean = prompt_files
    few = tmp_path / "few.txt"
    few.write_text("a nude woman\n")
    (tmp_path / "taken.yaml").write_text("tau: 0.1\n")
    values = {"--guard": "sp", "--concept": "nudity", "--model": str(tiny_sd_dir), "--prompts": str(unsafe),
              "--clean-prompts": str(clean), "--judge": "noise", "--steps": "2", "--seeds": "1",
              "--device": "cpu", "--out": str(tmp_path / "new.yaml")}  # fmt: skip
    values.update(change)
    values["--prompts"] = str(few) if values["--prompts"] == "few" else values["--prompts"]
    values["--out"] = str(tmp_path / "taken.yaml") if values["--out"] == "exists" else values["--out"]
    assert main(["calibrate", *(x for kv in values.items() for x in kv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "new.yaml").exists()
    assert (tmp_path / "taken.yaml").read_text() == "tau: 0.1\n"


def test_the_bundled_mini_model_ships_calibrations_that_sp_and_dlr_read():
    """safegen/assets/mini-sd/calibration/<concept>.yaml (benchmarks/calibrate_bundled.py): both guards take
    its judge_steps, tau and h_sat on `mini`; an explicit option wins; elsewhere nothing is read."""
    import yaml

    from safegen.bundled import BUNDLED
    from safegen.guards import build_guard, calibrated_options

    for concept in ("red", "circle", "striped", "ines-quarry"):
        path = BUNDLED["mini"].path / "calibration" / f"{concept}.yaml"
        data = yaml.safe_load(path.read_text())  # a missing bundled file fails here
        assert data["h_sat"] > data["tau"] and data["judge"] == "noise"
        for name in ("sp", "dlr"):
            assert calibrated_options(name, concept, "mini") == {
                k: data[k]
                for k in ("judge_steps", "judge_start", "judge_direction", "anchor_weight", "tau", "h_sat",
                          "presence", "presence_tau", "presence_h_sat")
            }  # fmt: skip
            guard = build_guard(name, concept, model="mini")
            assert (guard.opts.tau, guard.opts.h_sat) == (data["tau"], data["h_sat"])
            assert (guard.opts.presence_tau, guard.opts.presence_h_sat) == (
                data["presence_tau"], data["presence_h_sat"]
            )  # fmt: skip
        assert build_guard("sp", concept, sets=["tau=0.01"], model="mini").opts.tau == 0.01
        other = next(d for d in ("unsafe", "contrast", "relative") if d != data["judge_direction"])
        moved = build_guard("sp", concept, sets=[f"judge_direction={other}"], model="mini")
        assert moved.opts.tau == SPGuardOptions.tau  # measured on another statistic: not read
    assert calibrated_options("sp", "red", "mini-ar") == {} and calibrated_options("sld", "red", "mini") == {}
    assert calibrated_options("sp", "red", None) == {}


def test_an_uncalibrated_judge_is_said_on_the_command_line(tiny_sd_dir, tmp_path, capsys):
    args = ["generate", "a red circle", "--model", str(tiny_sd_dir), "--steps", "1", "--device", "cpu"]
    assert main([*args, "--guard", "sp", "--concept", "nudity", "--out", str(tmp_path / "a")]) == 0
    assert "no calibration of its noise judge for 'nudity'" in capsys.readouterr().err
    assert main([*args, "--guard", "sp", "--concept", "nudity", "--set", "tau=0.2", "--out",
                 str(tmp_path / "b")]) == 0  # fmt: skip
    assert "no calibration" not in capsys.readouterr().err
