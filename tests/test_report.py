"""``safegen report``: one self-contained HTML page from I2P and bench-mini run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from safegen.bench.i2p import i2p_results
from safegen.classifiers.nudenet import get_preset
from safegen.cli import main
from safegen.errors import SafegenError
from safegen.report import write_report
from safegen.runs import RunFolder, new_manifest

PROMPTS = ["a <b>bold</b> nude", "a fight", "a crowd"]


def i2p_run(path: Path, guard: str, flagged: set[int]) -> Path:
    """A finished I2P run folder written through RunFolder, with hand-made detections."""
    config = {"benchmark": "i2p", "guard": {"name": guard}, "images_per_prompt": 1, "preset": {"name": "i2p"}}
    run = RunFolder.open(path, new_manifest("i2p", config, guard={"name": guard}), resume=False)
    samples = []
    for i, prompt in enumerate(PROMPTS):
        rel = f"images/{i:06d}.png"
        run.image(rel, np.full((32, 32, 3), 40 * i, dtype=np.uint8))
        boxes = (
            [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 4, 4]}] if i in flagged else []
        )
        samples.append(
            {
                "key": f"{i}/0",
                "row_id": str(i),
                "k": 0,
                "categories": ["sexual"] if i == 0 else ["violence"],
                "prompt": prompt,
                "seed": 100 + i,
                "path": rel,
                "detections": boxes,
                "nudenet_unsafe": i in flagged,
                "q16": None,
            }
        )
    run.append(samples)
    run.write(
        "results.json", i2p_results(run.finalize([s["key"] for s in samples]), get_preset("i2p"), False)
    )
    return path


def mini_run(path: Path) -> Path:
    """A bench mini run folder as ``run_bench_mini(out=...)`` writes it: one image per variant."""
    run = RunFolder.open(path, new_manifest("mini", {"model": "mini", "concept": "red"}), resume=False)
    samples = []
    for variant in ("base", "test"):
        rel = f"images/{variant}/00000.png"
        run.image(rel, np.zeros((16, 16, 3), dtype=np.uint8))
        samples.append(
            {"key": f"{variant}/0", "variant": variant, "row_id": "0", "prompt": "a red circle", "seed": 0}
            | {"path": rel, "detections": [], "group": "grid", "target": {"color": "red"}}
        )
    run.append(samples)
    run.finalize([s["key"] for s in samples])
    erasure = {"ua": 0.9, "ira": 0.8, "cra": 0.7, "synonym_ua": 0.5}
    run.write(
        "results.json", {"accuracy": {"color": 0.6}, "erasure": {**erasure, "base": {**erasure, "ua": 0.1}}}
    )
    return path


def test_report_is_self_contained(tmp_path):
    base = i2p_run(tmp_path / "base", "none", {0, 1})
    guarded = i2p_run(tmp_path / "guarded", "sp-guard", {1})
    mini = mini_run(tmp_path / "mini")
    page = write_report([base, guarded, mini], tmp_path / "out" / "report.html", grid=2).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert (
        not re.search(r"(src|href)=['\"]?(https?:|//)", page)
        and "<script" not in page
        and "<link" not in page
    )
    assert page.count("<svg") == 2  # boxes per class (I2P runs) and erasure vs retention (mini run)
    assert "<title>mini: retention 0.750, UA 0.900</title>" in page
    assert "<title>mini (base): retention 0.750, UA 0.100</title>" in page
    # the grid: 2 rows (prompt, seed) shared by both I2P runs x 2 columns; the mini run shares none
    assert "No (prompt, seed) is shared" in page
    page2 = write_report([base, guarded], tmp_path / "two.html", grid=2).read_text()
    assert page2.count("src='data:image/png;base64,") == 4
    assert page2.count("class='flag'") == 3  # base flags rows 0 and 1, the guard only row 1
    assert "a &lt;b&gt;bold&lt;/b&gt; nude" in page2 and "<b>bold</b>" not in page2  # prompts escaped
    # settings side by side: the differing guard is marked
    assert re.search(r"<tr class=diff><td>config\.guard\.name</td><td>none</td><td>sp-guard</td>", page2)
    # metrics side by side: nudity rate 2/3 vs 1/3
    assert "66.67 %" in page2 and "33.33 %" in page2
    # the page opens with the metrics and the images; the settings follow, folded
    assert page2.index("<h2>Metrics") < page2.index("<h2>Images") < page2.index("<details>")
    assert page2.index("<details>") < page2.index("config.guard.name") < page2.index("</details>")


def test_report_errors(tmp_path, capsys):
    with pytest.raises(SafegenError, match="not a run folder"):
        write_report([tmp_path], tmp_path / "r.html")
    unfinished = tmp_path / "unfinished"
    RunFolder.open(unfinished, new_manifest("i2p", {}), resume=False)
    code = main(["report", str(unfinished), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--resume" in err


def test_report_cli(tmp_path, capsys):
    base = i2p_run(tmp_path / "base", "none", {0})
    assert main(["report", str(base), "--out", str(tmp_path / "r.html")]) == 0
    assert "Wrote" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    assert "FEMALE_BREAST_EXPOSED" in page and json.loads((base / "results.json").read_text())
