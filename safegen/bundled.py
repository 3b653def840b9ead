"""The models bundled with safegen (a leaf module: no torch, so the CLI and the concept check can use it).

>>> from safegen.bundled import BUNDLED
>>> BUNDLED["mini"].path                        # safegen/assets/mini-sd
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# bundled mini models -> what to point --model at instead, for a concept outside the mini world
REAL_MODEL_HINTS = {
    "sd": "a real Stable Diffusion: a hub id (e.g. --model CompVis/stable-diffusion-v1-4) or a local "
    "diffusers folder",
    "ar": "a real autoregressive model: a LlamaGen folder (t2i_XL_stage1_256.pt + vq_ds16_t2i.pt) or a "
    "Janus hub id or folder (e.g. --model deepseek-community/Janus-Pro-1B)",
}


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside the package, under ``safegen/assets/<folder>``."""

    name: str
    kind: str  # "sd" (a diffusers StableDiffusionPipeline folder) or "ar" (a LlamaGen folder, safegen.ar)
    folder: str
    description: str

    @property
    def path(self) -> Path:
        return Path(str(resources.files("safegen"))) / "assets" / self.folder

    @property
    def marker(self) -> str:
        """The file whose presence means the weights are there."""
        return "llamagen.json" if self.kind == "ar" else "model_index.json"

    @property
    def available(self) -> bool:
        return (self.path / self.marker).is_file()


BUNDLED: dict[str, BundledModel] = {
    "mini": BundledModel("mini", "sd", "mini-sd", "tiny Stable Diffusion trained on the mini world (64 px)"),
    "mini-ar": BundledModel(
        "mini-ar",
        "ar",
        "mini-ar",
        "tiny LlamaGen-style AR model (VQ + GPT) trained on the mini world (64 px)",
    ),
}


def list_models() -> list[dict]:
    """The bundled models: name, kind, path, whether their weights exist, and a description."""
    return [
        {
            "name": m.name,
            "kind": m.kind,
            "path": str(m.path),
            "available": m.available,
            "description": m.description,
        }
        for m in BUNDLED.values()
    ]


_NOTICES: set[str] = set()

MINI_TUNED = {
    "guard": "its defaults (thresholds, strengths) were chosen on the mini world: check them on prompts of "
    "your own, e.g. safegen bench i2p --guard {name} --set KEY=VALUE (`safegen guards` lists the options)",
    "erase": "its learning rate, beta and steps were chosen on the mini world: sweep them on your model "
    "with --set lr=... --set beta=... --steps N",
}


def mini_tuned_notice(model_name: str, what: str, name: str) -> None:
    """Say once per process that a method's defaults come from the mini world, when the model is not one
    of the bundled mini models (``what``: ``guard`` or ``erase``; ``name``: the method)."""
    import logging

    key = f"{what}:{name}"
    if model_name in BUNDLED or key in _NOTICES:
        return
    _NOTICES.add(key)
    logging.getLogger("safegen").warning(
        "%s '%s' on %s: %s", what.capitalize(), name, model_name, MINI_TUNED[what].format(name=name)
    )
