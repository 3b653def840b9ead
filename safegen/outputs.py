"""Write generated images and their records to a folder.

    >>> from safegen.outputs import check_out_dir, save_images
    >>> out = check_out_dir("runs/demo")          # before generating: fails early if not writable
    >>> save_images(images, out, {"model": "mini", "guard": {"name": "none"}, "settings": config.to_dict()})

Layout: ``00000_seed42.png``, ``00001_seed43.png``, ... and ``generation.jsonl`` with one line per image
(prompt, seed, model, guard, settings, path, info). ``path`` is relative to the folder. PNGs are written to
a temporary file in the same folder and renamed into place; each JSON line is appended with a single
``write`` on an ``O_APPEND`` descriptor, after its PNG exists. PNGs carry no metadata, so the same pixels
always give the same bytes. Indices continue after the highest one already in the folder; two processes
writing to one folder at once are not supported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from safegen.errors import SafegenError
from safegen.sampling import GeneratedImage

RECORD_FILE = "generation.jsonl"
IMAGE_NAME = re.compile(r"^(\d+)_seed\d+\.png$")


def check_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and check that a file can be written there.

    Call it before generating, so a bad folder fails before minutes of work.

    Raises:
        SafegenError: the folder cannot be created or written to.
    """
    path = Path(out_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SafegenError(f"Output folder {path} is not writable: {e.strerror or e}.") from e
    return path


def save_images(images: Sequence[GeneratedImage], out_dir: str | Path, record: dict[str, Any]) -> list[Path]:
    """Save each image as a PNG and append its line to ``generation.jsonl``.

    Args:
        images: the images, in order.
        out_dir: the folder (created if needed).
        record: fields shared by every line: ``model``, ``guard`` and ``settings`` (the GenerationConfig as a
            dict), plus any others the caller wants recorded.

    Returns:
        The PNG paths, in order.

    Raises:
        SafegenError: the folder is not writable (checked before anything is written).
    """
    folder = check_out_dir(out_dir)
    start = next_index(folder)
    shared = {"model": None, "guard": None, "settings": None, **record}
    paths = []
    for k, item in enumerate(images):
        name = f"{start + k:05d}_seed{item.seed}.png"
        line = json_line(
            {"prompt": item.prompt, "seed": item.seed, **shared, "path": name, "info": item.info}
        )
        write_png(item.image, folder / name)
        append_line(folder / RECORD_FILE, line)
        paths.append(folder / name)
    return paths


def next_index(folder: Path) -> int:
    """One more than the highest ``NNNNN_seedS.png`` index in ``folder`` (0 when there is none)."""
    indices = [int(m.group(1)) for p in folder.iterdir() if (m := IMAGE_NAME.match(p.name))]
    return max(indices, default=-1) + 1


def write_png(image: Image.Image | np.ndarray, path: Path) -> None:
    """Write a PNG atomically: a temporary file in the same folder, then ``os.replace``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line with a single ``write`` on an ``O_APPEND`` descriptor (no interleaving)."""
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"short write to {path}: {written} of {len(data)} bytes")


def json_line(obj: dict[str, Any]) -> str:
    """One JSON line (tensors, arrays, paths and dataclasses converted), ending in a newline."""
    return json.dumps(obj, default=to_jsonable, ensure_ascii=False) + "\n"


def to_jsonable(obj: Any) -> Any:
    """Convert what guards commonly report (tensors, numpy values, paths, dataclasses) for ``json``.

    Raises:
        TypeError: anything else, so a guard's report never silently becomes a string.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
