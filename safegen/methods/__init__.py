"""The registry of safety methods: what each one is, which models it targets, and how far along it is.

One method lives in one file, ``safegen/methods/<name>.py``. This registry is the only list of them;
``safegen methods`` prints it.

    >>> from safegen.methods import get_method
    >>> get_method("vce").family
    <ModelFamily.AUTOREGRESSIVE: 'autoregressive'>
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import Enum
from typing import Any

from safegen.errors import unknown


class MethodKind(str, Enum):
    ERASE = "erase"  # changes the weights (fine-tuning)
    GUARD = "guard"  # steers generation at inference, weights untouched


class ModelFamily(str, Enum):
    DIFFUSION = "diffusion"
    AUTOREGRESSIVE = "autoregressive"


class Status(str, Enum):
    PLANNED = "planned"  # registered, not implemented yet
    EXPERIMENTAL = "experimental"  # implemented, not yet measured against its targets
    READY = "ready"  # implemented and measured (see the README's results tables)


@dataclass(frozen=True)
class Method:
    name: str
    kind: MethodKind
    family: ModelFamily
    summary: str
    reference: str
    baseline: bool = False
    status: Status = Status.PLANNED
    file: str | None = None  # module file name when it differs from ``name``

    @property
    def module(self) -> str:
        return f"safegen.methods.{self.file or self.name}"

    def module_present(self) -> bool:
        """Whether ``safegen/methods/<name>.py`` exists (it may still be unfinished: see ``status``)."""
        return importlib.util.find_spec(self.module) is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "family": self.family.value,
            "baseline": self.baseline,
            "status": self.status.value,
            "module": self.module,
            "module_present": self.module_present(),
            "summary": self.summary,
            "reference": self.reference,
        }


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="vce",
            kind=MethodKind.ERASE,
            family=ModelFamily.AUTOREGRESSIVE,
            summary="DPO on same-seed image-token pairs with and without the concept; token drop, "
            "token-level mean log-prob.",
            reference="VCE, arXiv 2509.16986",
            status=Status.READY,
        ),
        Method(
            name="scdpo",
            kind=MethodKind.ERASE,
            family=ModelFamily.DIFFUSION,
            summary="Diffusion-DPO on pairs chosen by a safety cost model; focal weight on hard pairs.",
            reference="SC-DPO, arXiv 2504.14290v1",
            status=Status.READY,  # seeds 0-2: every target but red seed 2's CRA (0.948 x base, README)
        ),
        Method(
            name="sp",
            kind=MethodKind.GUARD,
            family=ModelFamily.DIFFUSION,
            summary="Harmfulness from the prompt's words or noise; adaptive strength; per-step spatial mask.",
            reference="SP-Guard, arXiv 2511.11014",
            status=Status.READY,
            file="sp_guard",
        ),
        Method(
            name="dlr",
            kind=MethodKind.GUARD,
            family=ModelFamily.DIFFUSION,
            summary="Dual latent reconstruction: blend the prompt's latents with a safety-context stream.",
            reference="arXiv 2411.13982",
            status=Status.READY,
            file="dual_latent",
        ),
        Method(
            name="sld",
            kind=MethodKind.GUARD,
            family=ModelFamily.DIFFUSION,
            summary="Safe Latent Diffusion: guidance away from the unsafe text; presets weak..max.",
            reference="SLD, Schramowski et al. CVPR 2023, arXiv 2211.05105",
            baseline=True,
            status=Status.EXPERIMENTAL,
        ),
        Method(
            name="neg",
            kind=MethodKind.GUARD,
            family=ModelFamily.DIFFUSION,
            summary="Negative prompt: the concept's unsafe text replaces the empty prompt in CFG.",
            reference="classifier-free guidance with a negative prompt",
            baseline=True,
            status=Status.EXPERIMENTAL,
        ),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name raises ``SafegenError`` with a suggestion."""
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


def list_methods() -> list[dict[str, Any]]:
    """Every method as a plain dict (for ``safegen methods --json``)."""
    return [m.to_dict() for m in METHODS.values()]
