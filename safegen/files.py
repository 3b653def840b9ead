"""Reading files a user hands safegen: weights, text, YAML and JSON, each failing as one line.

>>> from safegen.files import check_safetensors
>>> check_safetensors(Path("model/unet/diffusion_pytorch_model.safetensors"))
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError


def check_safetensors(file: Path) -> None:
    """Check a safetensors file's header and that its size matches it (catches truncated downloads).

    Raises:
        SafegenError: naming the file and what is wrong with it.
    """
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise SafegenError(f"Corrupt weights file {file}: not a valid safetensors file ({e}).") from e
    if 8 + n + max(ends, default=0) != size:
        raise SafegenError(f"Corrupt weights file {file}: its size does not match its header (truncated?).")


MAX_TEXT_BYTES = 16 * 2**20  # configs, prompt lists and records a user hands safegen; larger is a mistake


def read_text(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file a user named, as a string.

    Raises:
        SafegenError: missing or unreadable, larger than ``limit`` bytes, or not UTF-8 (one line each).
    """
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if size > limit:
            raise SafegenError(f"Cannot read {what} {path}: {size} bytes, more than the {limit} allowed.")
        data = path.read_bytes()
    except OSError as exc:
        raise SafegenError(f"Cannot read {what} {path}: {exc.strerror or exc}.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SafegenError(f"Cannot read {what} {path}: not UTF-8 text (byte {exc.start}).") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file (``yaml.safe_load`` rules), with anchors and aliases refused.

    Aliases let a few lines stand for an exponentially large value ("billion laughs"), which would blow
    up when an error message or a manifest prints it; no safegen config needs them.

    Raises:
        SafegenError: unreadable, not UTF-8, not valid YAML (naming the line), or using aliases.
    """
    import yaml

    text = read_text(path, what)

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                line = self.peek_event().start_mark.line + 1
                raise SafegenError(f"{path}: YAML aliases are not allowed in a {what} (line {line}).")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SafegenError(f"{path}: not valid YAML{where}.") from None


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file.

    Raises:
        SafegenError: unreadable, not UTF-8 or not valid JSON (one line).
    """
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SafegenError(f"{path} is not valid JSON (line {exc.lineno}): the {what} is damaged.") from None


def save_tensors(
    tensors: dict[str, Any], path: Path, what: str, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors`` ``save_file``, with a full disk (an OSError, or safetensors' own error) as one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except (OSError, SafetensorError) as exc:
        Path(path).unlink(missing_ok=True)
        raise SafegenError(
            f"Cannot write the {what} {path} ({exc}): free some space and run it again."
        ) from None


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed to it when the block ends without an error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = scratch / target.name
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
