"""The Hugging Face hub, as safegen meets it: is it reachable, and quiet loading bars.

>>> from safegen.hub import hub_offline, quiet_progress_bars
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set, or huggingface.co cannot be reached within 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return True
    return False


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide diffusers' and transformers' loading bars (the CLI draws its own), restoring them after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in states:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, enabled in states:
            if enabled:
                module.enable_progress_bar()


def from_pretrained(cls: Any, where: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with one-line errors; hub ids only from the local cache when offline."""
    from safegen.errors import SafegenError

    local = Path(where).is_dir()
    if not local and not re.fullmatch(r"[\w.-]+/[\w.-]+", where):
        raise SafegenError(f"'{where}' is neither a folder nor a hub id.")
    try:
        with quiet_progress_bars():
            return cls.from_pretrained(where, local_files_only=local or hub_offline(), **kwargs)
    except Exception as e:  # transformers raises many types for a bad folder; all become one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SafegenError(f"Could not load {where}: {first}") from None


def text_encoder_loads_in_float32(config: Path) -> None:
    """Weights stored in half precision for size, loaded in float32 by default.

    transformers reads a text encoder in its config's ``dtype`` while diffusers loads the UNet and VAE in
    float32, so a plain ``StableDiffusionPipeline.from_pretrained(folder)`` of a half-precision folder would
    mix the two and fail ("mat1 and mat2 must have the same dtype"); the config's dtype decides.
    """
    import json

    data = json.loads(config.read_text())
    data["dtype"] = "float32"
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
