"""The one registry of safegen's methods: erasure recipes, inference guards and attacks, by name.

Each entry says what the method is (kind, model family, status, one-line summary, paper), where it lives
(``target``: the ``module:attr`` it builds from; ``config``: its options dataclass) and where our reading
of its paper is written down (``doc``). ``safegen methods``, ``safegen guards``, ``safegen erase`` and
:func:`safegen.guards.get_guard` all read it; adding a method is its file, one entry here and its tests.

    >>> from safegen.methods import get_method
    >>> get_method("vce").family
    <ModelFamily.AUTOREGRESSIVE: 'autoregressive'>
    >>> get_method("sp").load()               # the guard class, imported on first use
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

from safegen.errors import unknown


class MethodKind(str, Enum):
    ERASE = "erase"  # changes the weights (fine-tuning)
    GUARD = "guard"  # steers generation at inference, weights untouched
    ATTACK = "attack"  # looks for prompts (or words) that bring an erased or guarded concept back


class ModelFamily(str, Enum):
    DIFFUSION = "diffusion"
    AUTOREGRESSIVE = "autoregressive"
    ANY = "any"  # diffusion and autoregressive models


class Status(str, Enum):
    EXPERIMENTAL = "experimental"  # implemented, not yet measured against its targets
    READY = "ready"  # implemented and measured (the README's methods table names the command)


@dataclass(frozen=True)
class Method:
    """One registry entry.

    Attributes:
        target: ``module:attr`` of the guard class (guards), the recipe's run function (erasure) or the
            attack's function (attacks).
        config: ``module:attr`` of the options dataclass.
        doc: our reading of the paper, relative to the repository (``docs/methods/<name>.md``).
        default_model: erasure: the bundled model ``safegen erase`` uses when ``--model`` is not given.
        stages: erasure: the stages ``--stage`` may stop after (``all`` last).
    """

    name: str
    kind: MethodKind
    family: ModelFamily
    summary: str
    reference: str
    target: str
    config: str
    doc: str
    status: Status = Status.EXPERIMENTAL
    baseline: bool = False
    default_model: str | None = None
    stages: tuple[str, ...] = ()

    def load(self) -> Any:
        """The object ``target`` names (imported on first use, so the registry itself stays light)."""
        return _resolve(self.target)

    def config_class(self) -> type:
        return _resolve(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "family": self.family.value,
            "baseline": self.baseline,
            "status": self.status.value,
            "target": self.target,
            "config": self.config,
            "doc": self.doc,
            "summary": self.summary,
            "reference": self.reference,
        }


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_ERASE = dict(kind=MethodKind.ERASE)
_GUARD = dict(kind=MethodKind.GUARD, family=ModelFamily.DIFFUSION)
_ATTACK = dict(kind=MethodKind.ATTACK, family=ModelFamily.ANY, status=Status.READY)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="vce",
            family=ModelFamily.AUTOREGRESSIVE,
            summary="DPO on same-seed image-token pairs with and without the concept; token drop, "
            "token-level mean log-prob.",
            reference="VCE, arXiv 2509.16986",
            target="safegen.recipes.vce:run_vce",
            config="safegen.recipes.vce_config:VCEConfig",
            doc="docs/methods/vce.md",
            status=Status.READY,
            default_model="mini-ar",
            stages=("pairs", "train", "all"),
            **_ERASE,
        ),
        Method(
            name="scdpo",
            family=ModelFamily.DIFFUSION,
            summary="Diffusion-DPO on pairs chosen by a safety cost model; focal weight on hard pairs.",
            reference="SC-DPO, arXiv 2504.14290v1",
            target="safegen.recipes.scdpo:run_scdpo",
            config="safegen.recipes.scdpo_config:SCDPOConfig",
            doc="docs/methods/scdpo.md",
            status=Status.READY,
            default_model="mini",
            stages=("cost", "pairs", "train", "all"),
            **_ERASE,
        ),
        Method(
            name="sp",
            summary="Harmfulness from the prompt's words or noise; adaptive strength; per-step spatial mask.",
            reference="SP-Guard, arXiv 2511.11014",
            target="safegen.guards.sp:SPGuard",
            config="safegen.guards.sp:SPGuardOptions",
            doc="docs/methods/sp.md",
            status=Status.READY,
            **_GUARD,
        ),
        Method(
            name="dlr",
            summary="Dual latent reconstruction: blend the prompt's latents with a safety-context stream.",
            reference="arXiv 2411.13982",
            target="safegen.guards.dlr:DualLatentGuard",
            config="safegen.guards.dlr:DLROptions",
            doc="docs/methods/dlr.md",
            status=Status.READY,
            **_GUARD,
        ),
        Method(
            name="sld",
            summary="Safe Latent Diffusion: guidance away from the unsafe text; presets weak..max.",
            reference="SLD, Schramowski et al. CVPR 2023, arXiv 2211.05105",
            target="safegen.guards.sld:SLDGuard",
            config="safegen.guards.sld:SLDOptions",
            doc="docs/methods/sld.md",
            baseline=True,
            **_GUARD,
        ),
        Method(
            name="neg",
            summary="Negative prompt: the concept's unsafe text replaces the empty prompt in CFG.",
            reference="classifier-free guidance with a negative prompt",
            target="safegen.guards.neg:NegativePromptGuard",
            config="safegen.guards.neg:NegOptions",
            doc="docs/methods/neg.md",
            baseline=True,
            **_GUARD,
        ),
        Method(
            name="unlearndiff",
            summary="White-box: discrete prefix tokens optimised on the attacked model's denoising error.",
            reference="UnlearnDiffAtk, Zhang et al. ECCV 2024, arXiv 2310.11868",
            target="safegen.attacks.unlearndiff:attack",
            config="safegen.attacks.unlearndiff:UnlearnDiffOptions",
            doc="docs/attacks.md",
            **_ATTACK,
        ),
        Method(
            name="inversion",
            summary="White-box: one new word learned by textual inversion on the attacked model.",
            reference="Concept inversion, Pham et al. ICLR 2024, arXiv 2308.01508",
            target="safegen.attacks.inversion:attack",
            config="safegen.attacks.inversion:InversionOptions",
            doc="docs/attacks.md",
            **_ATTACK,
        ),
        Method(
            name="ringabell",
            summary="Black-box: a genetic search for a prompt near the concept in the text encoder.",
            reference="Ring-A-Bell, Tsai et al. ICLR 2024, arXiv 2310.10012",
            target="safegen.attacks.ringabell:attack",
            config="safegen.attacks.ringabell:RingABellOptions",
            doc="docs/attacks.md",
            **_ATTACK,
        ),
    )
}


def get_method(name: str, kind: MethodKind | None = None) -> Method:
    """The method called ``name`` (of ``kind``, when given); an unknown name raises with a suggestion."""
    choices = {n: m for n, m in METHODS.items() if kind is None or m.kind is kind}
    if name not in choices:
        raise unknown(f"{kind.value} method" if kind else "method", name, choices)
    return choices[name]


def list_methods(kind: MethodKind | None = None) -> list[dict[str, Any]]:
    """Every method (of ``kind``) as a plain dict (for ``safegen methods --json``)."""
    return [m.to_dict() for m in METHODS.values() if kind is None or m.kind is kind]
