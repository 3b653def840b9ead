"""``safegen bench quality``: what an erasure or a guard costs, measured the way papers report it.

Generates one image per caption (and seed) with the model as the user runs it (guard, adapter), then:

- **FID** against a reference set: ``reference="base"`` (the unmodified model's images of the same
  captions and seeds, made in ``OUT/reference``) or a folder of real images (or of another run). Computed
  by torchmetrics' ``FrechetInceptionDistance`` on the features the user names:

  - ``inception:<file>``: torch-fidelity's FID Inception-v3 from a local weights file
    (``pt_inception-2015-12-05``), the number papers report; needs ``pip install torch-fidelity``, which
    brings torchvision;
  - ``clip:<folder>``: a local transformers CLIP's image embeddings (FID in CLIP space);
  - ``mini``: the mini-world classifier's 256-d features (the bundled mini models; the manifest says so).

- **CLIP score** of image and caption (``clip=<folder>``, a local transformers CLIP), by torchmetrics'
  ``CLIPScore``: reported on both scales papers use, ``100 x max(cos, 0)`` (torchmetrics, MACE) and the
  cosine (UnlearnDiffAtk, AdvUnlearn: ~0.30 on SD-1.4);
- **changed** (base mode): the share of captions whose image differs from the base model's by more than
  ``changed_threshold`` in mean absolute pixel difference (0..1), and that difference's mean: for a guard,
  how often and how much it touches benign prompts.

The run folder, ``--resume`` and ``accelerate launch`` sharding are those of the other benchmarks
(:mod:`safegen.bench.evaluate`); the manifest records the library, the feature weights' sha256, the
reference set, N and the scale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safegen.errors import SafegenError


# --------------------------------------------------------------------------- feature extractors
class MiniFeatures(torch.nn.Module):
    """The mini classifier's trunk: uint8 (N, 3, H, W) -> (N, 256)."""

    def __init__(self) -> None:
        super().__init__()
        from safegen.mini.classifier import MiniClassifier

        self.net = MiniClassifier.load().net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(
            images.float(), size=(64, 64), mode="bicubic", align_corners=False
        )
        x = x.clamp(0, 255) / 127.5 - 1
        with torch.no_grad():
            return self.net.trunk(self.net.features(x))


class ClipFeatures(torch.nn.Module):
    """A local CLIP's image embeddings: uint8 (N, 3, H, W) -> (N, D), the processor's size and norm."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        from transformers import CLIPImageProcessor, CLIPModel

        from safegen.hub import from_pretrained

        self.model = Projected(
            from_pretrained(CLIPModel, folder).eval()
        )  # the full config sizes the projection
        processor = from_pretrained(CLIPImageProcessor, folder)
        crop = processor.crop_size  # a dict, a SizeDict or an int across transformers versions
        self.side = int(crop if isinstance(crop, int) else crop["height"])
        self.register_buffer("mean", torch.tensor(processor.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(processor.image_std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.float(), size=(self.side,) * 2, mode="bicubic")
        x = (x.clamp(0, 255) / 255 - self.mean) / self.std
        with torch.no_grad():
            return self.model.get_image_features(pixel_values=x)


class Projected(torch.nn.Module):
    """A transformers ``CLIPModel`` whose ``get_image_features`` / ``get_text_features`` return the projected
    features as a tensor, as torchmetrics reads them (transformers 5 wraps them in a model output)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model.get_image_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model.get_text_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)


def fid_metric(features: str) -> tuple[Any, dict[str, Any]]:
    """torchmetrics' FID on the named features, and what the manifest records of them."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    kind, _, where = features.partition(":")
    if kind == "mini" and not where:
        return FrechetInceptionDistance(feature=MiniFeatures()), {"features": "mini classifier (256-d)"}
    if kind == "clip" and where:
        record = {"features": "CLIP image embeddings", "weights": where, "sha256": weights_digest(where)}
        return FrechetInceptionDistance(feature=ClipFeatures(where)), record
    if kind == "inception" and where:
        if not Path(where).is_file():
            raise SafegenError(f"Inception weights file not found: {where}")
        state = plain_state_dict(where)
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise SafegenError(
                "features=inception needs torch-fidelity (pip install torch-fidelity; it brings "
                "torchvision); or use clip:<folder>."
            ) from None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # torch-fidelity unpickles what it is given: our copy
            copy = Path(tmp) / "inception.pth"
            torch.save(state, copy)
            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(copy))
        return metric, {
            "features": "Inception-v3 pool3 (2048-d)",
            "weights": where,
            "sha256": weights_digest(where),
        }
    raise SafegenError(f"features must be mini, clip:<folder> or inception:<weights file>, got {features!r}.")


def plain_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The Inception weights read with ``weights_only=True``: tensors only, anything else refused unread.
    torch-fidelity, which unpickles the file it is handed, only ever sees a copy written from these."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any failure to read it as plain tensors is a refusal)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SafegenError(
            f"{path} is not a plain PyTorch state dict (refused unread): {first[:200]}"
        ) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise SafegenError(f"{path} is not a state dict of tensors (an Inception-v3 weights file).")
    return state


def weights_digest(path: str) -> str:
    """sha256 of a weights file, or of a folder's weight files in name order."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SafegenError(f"Feature weights not found: {p}")
    files = (
        [p]
        if p.is_file()
        else sorted(f for f in p.rglob("*") if f.suffix in (".safetensors", ".bin", ".pth"))
    )
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- metrics
def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 arrays -> uint8 (N, 3, H, W)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def fid(generated: list[np.ndarray], reference: list[np.ndarray], features: str, batch: int = 64) -> dict:
    """FID of ``generated`` against ``reference`` (both at least 2 images) on the named features."""
    if len(generated) < 2 or len(reference) < 2:
        raise SafegenError("FID needs at least 2 generated and 2 reference images.")
    metric, record = fid_metric(features)
    for images, real in ((reference, True), (generated, False)):
        for i in range(0, len(images), batch):
            metric.update(to_tensor(images[i : i + batch]), real=real)
    return {
        "fid": float(metric.compute()),
        "n_generated": len(generated),
        "n_reference": len(reference),
        **record,
    }


def clip_score(images: list[np.ndarray], captions: list[str], folder: str, batch: int = 64) -> dict:
    """torchmetrics' CLIPScore (100 x max(cos, 0), averaged) and the same as a cosine."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from safegen.adapters import quiet_libraries

    def load() -> tuple[
        Any, Any
    ]:  # a local folder, through torchmetrics' loader hook (no hub, no remote code)
        from transformers import CLIPModel, CLIPProcessor

        from safegen.hub import from_pretrained

        return Projected(from_pretrained(CLIPModel, folder).eval()), from_pretrained(CLIPProcessor, folder)

    with quiet_libraries():
        metric = CLIPScore(model_name_or_path=load)
        for i in range(0, len(images), batch):
            metric.update(to_tensor(images[i : i + batch]), captions[i : i + batch])
        score = float(metric.compute())
    return {
        "clip_score": score,
        "clip_cosine": score / 100,
        "scale": "clip_score = 100 x max(cos, 0) (torchmetrics, MACE); clip_cosine = cos (UnlearnDiffAtk)",
        "weights": folder,
        "sha256": weights_digest(folder),
    }


def changed(generated: list[np.ndarray], base: list[np.ndarray], threshold: float) -> dict:
    """Share of pairs whose mean absolute pixel difference (0..1) exceeds ``threshold``, and its mean."""
    distance = [
        float(np.abs(g.astype(np.float32) - b.astype(np.float32)).mean() / 255)
        for g, b in zip(generated, base, strict=True)
    ]
    return {
        "changed_share": float(np.mean([d > threshold for d in distance])),
        "mean_pixel_distance": float(np.mean(distance)),
        "threshold": threshold,
    }


def folder_images(path: Path) -> list[np.ndarray]:
    """Every image of a folder (a run folder: its ``images/``), RGB arrays, in name order; each header is
    checked first (:func:`safegen.api.check_image`: a decompression bomb is refused, not decoded)."""
    from safegen.api import check_image, expand_paths, open_image

    files = expand_paths([path / "images" if (path / "images").is_dir() else path])
    for file in files:
        check_image(file)
    return [np.asarray(open_image(f)) for f in files]


def run_images(out: Path, records: list[dict]) -> tuple[list[np.ndarray], list[str], list[str]]:
    from PIL import Image

    images = [np.asarray(Image.open(out / r["path"]).convert("RGB")) for r in records]
    return images, [r["prompt"] for r in records], [r["key"] for r in records]


# Phrasings the mini models never saw in training (not among the world's caption templates; every word
# known to their tokenizers): the mini caption set measures drawing on captions disjoint from training.
MINI_TEMPLATES = (
    "a drawing of a {texture} {color} {object}",
    "{color} {texture} {object} on a plain background",
    "a {object} in {texture} style, {color}",
)


def caption_set(
    captions: str | Path, column: str | None = None
) -> tuple[list[str], dict[str, Any], list[dict[str, str]] | None]:
    """Captions, where they came from and, for the mini set, the values each caption names.

    ``captions``: a file (TXT, CSV, JSONL), ``smoke`` (bundled everyday scenes, for smoke runs on real
    models) or ``mini`` (every object x colour x texture of the mini world in :data:`MINI_TEMPLATES`).
    """
    from importlib import resources

    from safegen.promptsets.table import file_md5, read_prompt_list

    if str(captions) == "mini":
        from itertools import product

        from safegen.mini.world import World

        world = World.load()
        combos = list(product(world.values["object"], world.values["color"], world.values["texture"]))
        expects = [{"object": o, "color": c, "texture": t} for o, c, t in combos]
        texts = [MINI_TEMPLATES[i % len(MINI_TEMPLATES)].format(**e) for i, e in enumerate(expects)]
        digest = hashlib.md5("\n".join(texts).encode(), usedforsecurity=False).hexdigest()
        return texts, {"set": "mini", "md5": digest}, expects
    path = Path(str(resources.files("safegen").joinpath("data", "captions_smoke.txt")))
    path = path if str(captions) == "smoke" else Path(captions).expanduser()
    texts = read_prompt_list(path, column)
    return texts, {"set": str(captions) if str(captions) == "smoke" else "file", "path": str(path),
                   "md5": file_md5(path)}, None  # fmt: skip


def mini_accuracy(
    images: list[np.ndarray], expects: list[dict[str, str]], concept: Any = None
) -> tuple[dict[str, float], dict[str, float] | None, int]:
    """Per axis, the share of images whose (first) object the mini classifier reads as captioned; and with
    a mini-world ``concept``, the same over the captions that do not show it (what an erasure or a guard of
    the concept should keep; an artist is never captioned, so that is every caption), else None; and how
    many captions that is."""
    from safegen.mini.classifier import MiniClassifier

    reads = MiniClassifier.load().classify(images)
    axes = ("object", "color", "texture")
    hits = {a: [bool(r) and r[0][a] == e[a] for r, e in zip(reads, expects, strict=True)] for a in axes}
    shown = concept_captions(concept, expects)
    overall = {a: float(np.mean(v)) for a, v in hits.items()}
    if shown is None or all(shown):
        return overall, None, 0
    kept = {a: [h for h, s in zip(v, shown, strict=True) if not s] for a, v in hits.items()}
    return overall, {a: float(np.mean(v)) for a, v in kept.items()}, len(kept["object"])


def concept_captions(concept: Any, expects: list[dict[str, str]]) -> list[bool] | None:
    """Which mini captions show ``concept`` (a name, a list or a Concept; every part a mini value or
    artist); None for a concept outside the mini world."""
    from safegen.concepts import concept_parts, lookup_concept

    try:
        parts = concept_parts(lookup_concept(concept))
    except SafegenError:
        return None
    minis = [(p.detector or {}).get("mini") for p in parts]
    if not all(minis):
        return None
    values = [(m["axis"], m["value"]) for m in minis if "artist" not in m]
    return [any(e[axis] == value for axis, value in values) for e in expects]


# --------------------------------------------------------------------------- the benchmark
def run_bench_quality(
    captions: str | Path,
    *,
    reference: str = "base",
    features: str = "mini",
    clip: str | None = None,
    settings: Any = None,
    images_per_prompt: int = 1,
    changed_threshold: float = 0.02,
    caption_column: str | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """Generate the captions' images, then FID, CLIP score and (base mode) how much changed.

    Raises:
        SafegenError: a bad caption file, reference folder, features or CLIP folder; --resume on another run.
    """
    from dataclasses import replace

    from safegen.bench.evaluate import Settings, make_items, run_benchmark
    from safegen.promptsets.table import PromptRow
    from safegen.runs import MANIFEST, default_out_dir

    settings = settings or Settings()
    texts, source, expects = caption_set(captions, caption_column)
    texts = texts[:limit]
    if not texts:
        raise SafegenError(f"{captions} holds no captions.")
    if not 0.0 <= changed_threshold <= 1.0:
        raise SafegenError(f"changed_threshold must be in 0..1, got {changed_threshold}.")
    if reference != "base" and not Path(reference).expanduser().is_dir():
        raise SafegenError(f"reference must be 'base' or a folder of images, got {reference!r}.")
    fid_metric(features)  # a bad features argument fails before any image is made
    if clip is not None:
        weights_digest(clip)
    rows = [PromptRow(row_id=str(i), prompt=t, line=i + 1) for i, t in enumerate(texts)]
    items = make_items(rows, images_per_prompt, settings)
    out = Path(out) if out is not None else default_out_dir("quality")
    config = {
        "benchmark": "quality",
        "captions": {**source, "n": len(texts), "limit": limit},
        "images_per_prompt": images_per_prompt,
        "reference": reference if reference == "base" else str(Path(reference).expanduser().resolve()),
        "features": features,
        "clip": clip,
        "changed_threshold": changed_threshold,
        **settings.config(),
    }

    reference_records: list[dict] = []  # filled on the main process
    main_resume = resume
    if reference == "base":  # the unmodified model's images of the same captions and seeds, sharded alike
        base = replace(settings, guard="none", adapter=None, guard_options={})

        def keep(records: list[dict]) -> dict[str, Any]:
            reference_records.extend(records)
            return {"n_images": len(records), "role": "reference"}

        run_benchmark("quality", {**config, **base.config(), "role": "reference"},
                      make_items(rows, images_per_prompt, base), base, None, None, out=out / "reference",
                      resume=resume, progress=progress, summarize=keep)  # fmt: skip
        main_resume = resume and (out / MANIFEST).is_file()  # interrupted before this run began

    def summarize(records: list[dict]) -> dict[str, Any]:
        images, prompts, keys = run_images(out, records)
        if reference == "base":
            ref_images, _, ref_keys = run_images(out / "reference", reference_records)
            if ref_keys != keys:
                raise SafegenError(f"{out / 'reference'} holds other captions than this run.")
        else:
            ref_images = folder_images(Path(reference).expanduser())
        results: dict[str, Any] = {"n_images": len(images), "reference": config["reference"]}
        results["fid"] = {**fid(images, ref_images, features), "library": library_versions()}
        if clip is not None:
            results["clip"] = clip_score(images, prompts, clip)
        if reference == "base":
            results["changed"] = changed(images, ref_images, changed_threshold)
        if expects is not None:  # the mini caption set: do the images still show what was asked?
            wanted = [expects[int(r["row_id"])] for r in records]
            results["accuracy"], kept, n_kept = mini_accuracy(images, wanted, settings.concept)
            if kept is not None:
                results["accuracy_without_concept"], results["n_without_concept"] = kept, n_kept
        results["directions"] = {"fid": "lower is better", "clip_score": "higher is better"}
        return results

    return run_benchmark("quality", config, items, settings, None, None, out=out, resume=main_resume,
                         progress=progress, summarize=summarize)  # fmt: skip


def library_versions() -> dict[str, str]:
    import torchmetrics

    return {"torchmetrics": torchmetrics.__version__}
