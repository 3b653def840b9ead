"""The named choices the CLI and the library share (devices, dtypes, classifiers, NudeNet protocols).

A leaf module: it imports nothing heavy, so the CLI can declare its options without loading torch.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from safegen.errors import unknown


class ClassifierName(str, Enum):
    NUDENET = "nudenet"
    MINI = "mini"


class NudeNetPreset(str, Enum):
    """NudeNet protocols (classes and threshold); see ``safegen/classifiers/nudenet.py``."""

    I2P = "i2p"
    SIX = "six"
    MACE = "mace"
    UNLEARNDIFF = "unlearndiff"


class PromptSet(str, Enum):
    """How a prompts file is read (:func:`safegen.promptsets.read_prompt_source`)."""

    FILE = "file"
    I2P = "i2p"
    UNLEARNDIFF = "unlearndiff"
    RINGABELL = "ringabell"
    MMA = "mma"
    P4D = "p4d"


PROMPT_SETS = tuple(s.value for s in PromptSet)


class Device(str, Enum):
    """Where to run; ``auto`` picks CUDA, then MPS, else the CPU (``safegen.loader.resolve_device``)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class DType(str, Enum):
    """Weights dtype; ``auto`` is fp16 on CUDA, fp32 elsewhere (``safegen.loader.resolve_dtype``)."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


def choice(enum: type[Enum], value: Any, what: str) -> Any:
    """``value`` as a member of ``enum``; an unknown value raises a one-line error with a suggestion."""
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        raise unknown(what, str(value), [e.value for e in enum]) from None
