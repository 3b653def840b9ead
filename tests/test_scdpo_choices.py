"""SC-DPO's training choices on a tiny random SD: which pairs it trains on, and which weights it ends on."""

from __future__ import annotations

import json
import shutil

import pytest
import test_scdpo
import torch
from safetensors.torch import load_file

from safegen.errors import SafegenError
from safegen.recipes import scdpo
from safegen.recipes.scdpo import run_scdpo
from safegen.recipes.scdpo_pairs import UNSAFE, PairData

encoder_file, run = test_scdpo.encoder_file, test_scdpo.run  # the SC-DPO tests' module fixtures
reuse = test_scdpo.reuse


def copy_pairs(run_dir, tmp_path, unsafe_harmful: int):
    """The run's pairs with the winners of the first ``unsafe_harmful`` harmful pairs made unsafe."""
    folder = tmp_path / "pairs"
    shutil.copytree(run_dir / "pairs", folder)
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    harmful = [r for r in rows if r["harmful"]]
    for row in harmful[:unsafe_harmful]:
        row["winner_cost"] = UNSAFE + 0.25
    for row in harmful[unsafe_harmful:]:
        row["winner_cost"] = UNSAFE - 0.25
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, len(rows), len(harmful)


def test_drop_unsafe_winners_leaves_out_harmful_pairs_with_an_unsafe_winner(run, encoder_file, tmp_path):
    folder, n, n_harmful = copy_pairs(run[0], tmp_path, unsafe_harmful=1)
    assert n_harmful >= 2
    kept = PairData(folder)
    assert len(kept) == n and kept.dropped == 0  # off: every pair
    dropped = PairData(folder, drop_unsafe_winners=True)
    assert dropped.dropped == 1 and len(dropped) == n - 1
    assert all(not r["harmful"] or r["winner_cost"] <= UNSAFE for r in dropped.rows)
    # clean pairs are never dropped, whatever their winner costs
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    for row in rows:
        row["winner_cost"] = 0.9 if not row["harmful"] else row["winner_cost"]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(PairData(folder, drop_unsafe_winners=True)) == n - 1
    # no harmful pair left: refused, with what to do
    every, _, _ = copy_pairs(run[0], tmp_path / "all", unsafe_harmful=n_harmful)
    with pytest.raises(SafegenError, match="drop_unsafe_winners=false"):
        PairData(every, drop_unsafe_winners=True)


def test_a_run_records_the_pairs_it_dropped(run, tiny_sd_dir, encoder_file, tmp_path):
    folder, n, _ = copy_pairs(run[0], tmp_path, unsafe_harmful=1)
    cfg = reuse(run[0], encoder_file, steps=1, check_every=0, drop_unsafe_winners=True)
    cfg.pairs_dir = str(folder)
    result = run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / "r", device="cpu")
    pairs = result["stages"]["pairs"]
    assert pairs["dropped_unsafe_winners"] == 1 and pairs["trained_pairs"] == n - 1


def scripted_checks(monkeypatch, shares: dict[int, float]) -> None:
    """The safety check's flagged share at each checked step, as given (the check itself is tested in
    test_scdpo.py); what is under test is which step's weights the run keeps."""

    def check(self, step):
        if step not in shares:
            return None
        return {"constraint/flagged": shares[step], "constraint/mean_cost": 0.0, "stop": False}

    monkeypatch.setattr(scdpo.SCDPORecipe, "_check", check)


def lora(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


@pytest.mark.parametrize(("shares", "kept"), [({2: 0.5, 4: 0.25, 6: 0.75}, 4), ({2: 0.5, 4: 0.5, 6: 0.5}, 6)])
def test_restore_best_ends_on_the_check_that_flagged_least(
    run,
    tiny_sd_dir,
    encoder_file,
    tmp_path,
    monkeypatch,
    shares,
    kept,
):
    scripted_checks(monkeypatch, shares)
    cfg = reuse(run[0], encoder_file, steps=6, check_every=2, save_every=2, restore_best=True)
    out = tmp_path / "best"
    train = run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu")["stages"]["train"]
    assert train["steps"] == 6 and train["adapter_step"] == kept  # ties: the latest
    assert json.loads((out / "adapter.json").read_text())["steps"] == kept
    final, chosen = lora(out), lora(out / "checkpoints" / f"step-{kept:07d}")
    assert final.keys() == chosen.keys() and all(torch.equal(final[k], chosen[k]) for k in final)
    if kept != 6:
        last = lora(out / "checkpoints" / "step-0000006")
        assert any(not torch.equal(final[k], last[k]) for k in final)
    # off: the last step's weights, whatever the checks said
    cfg.restore_best = False
    plain = run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=tmp_path / "last", device="cpu")
    assert plain["stages"]["train"]["adapter_step"] == 6
    assert not (tmp_path / "last" / "best").exists()


def test_restore_best_survives_a_resume(run, tiny_sd_dir, encoder_file, tmp_path, monkeypatch):
    """The best check before an interruption is still the one restored after --resume."""
    scripted_checks(monkeypatch, {2: 0.25, 4: 0.5, 6: 0.75})
    out = tmp_path / "r"
    cfg = reuse(run[0], encoder_file, steps=4, check_every=2, save_every=2, restore_best=True)
    run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu")
    cfg.steps = 6
    train = run_scdpo("red", model=str(tiny_sd_dir), config=cfg, out=out, device="cpu", resume=True)
    assert train["stages"]["train"]["resumed_from"] == 4 and train["stages"]["train"]["adapter_step"] == 2
    chosen = lora(out / "checkpoints" / "step-0000002")
    assert all(torch.equal(v, chosen[k]) for k, v in lora(out).items())
