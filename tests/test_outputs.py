"""Outputs: PNG names and bytes, the JSONL record, atomic writes, unwritable folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safegen.errors import SafegenError
from safegen.generator import generate
from safegen.loader import LoadedModel
from safegen.outputs import RECORD_FILE, check_out_dir, save_images, to_jsonable
from safegen.sampling import GeneratedImage, GenerationConfig

CONFIG = GenerationConfig(steps=2)
RECORD = {"model": "tiny", "guard": {"name": "none"}, "settings": CONFIG.to_dict()}


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / RECORD_FILE).read_text().splitlines()]


def test_names_and_records(tiny_sd: LoadedModel, tmp_path: Path) -> None:
    images = generate(tiny_sd, ["a red circle", "a cat"], seeds=[42, 7], config=CONFIG)
    paths = save_images(images, tmp_path / "run", RECORD)
    assert [p.name for p in paths] == ["00000_seed42.png", "00001_seed7.png"]
    lines = records(tmp_path / "run")
    assert lines[0] == {
        "prompt": "a red circle",
        "seed": 42,
        "model": "tiny",
        "guard": {"name": "none"},
        "settings": CONFIG.to_dict(),
        "path": "00000_seed42.png",
        "info": {},
    }
    assert np.array_equal(np.asarray(Image.open(paths[1])), np.asarray(images[1].image))
    more = save_images(images[:1], tmp_path / "run", RECORD)  # a second call continues the numbering
    assert more[0].name == "00002_seed42.png" and len(records(tmp_path / "run")) == 3
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "00000_seed42.png",
        "00001_seed7.png",
        "00002_seed42.png",
        RECORD_FILE,
    ]  # no temporary files left behind


def test_same_seed_same_png_bytes(tiny_sd: LoadedModel, tmp_path: Path) -> None:
    first = save_images(generate(tiny_sd, ["a cat"], seeds=[3], config=CONFIG), tmp_path / "a", RECORD)
    second = save_images(generate(tiny_sd, ["a cat"], seeds=[3], config=CONFIG), tmp_path / "b", RECORD)
    assert first[0].read_bytes() == second[0].read_bytes()


def test_info_is_made_json(tmp_path: Path) -> None:
    info = {
        "h": torch.tensor(0.5),
        "mask": np.zeros((2,), dtype=np.float32),
        "steps": (1, 2),
        "file": Path("m.png"),
    }
    image = GeneratedImage("a cat", 1, np.zeros((8, 8, 3), dtype=np.uint8), info)
    save_images([image], tmp_path, RECORD)
    assert records(tmp_path)[0]["info"] == {"h": 0.5, "mask": [0.0, 0.0], "steps": [1, 2], "file": "m.png"}
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        to_jsonable(object())


def test_unwritable_folder_fails_before_writing(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(SafegenError, match="is not writable"):
        check_out_dir(blocker / "run")
    image = GeneratedImage("a cat", 1, np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(SafegenError, match="is not writable"):
        save_images([image], blocker / "run", RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
