"""Library functions behind the CLI verbs: each takes plain arguments and returns data.

Heavy modules (torch, diffusers, nudenet) are imported inside the functions, so importing this module
is cheap. The CLI (``safegen/cli.py``) only declares options, calls these and prints what they return.

    >>> from safegen.api import classify
    >>> classify(["outputs/demo"], classifier="mini")  # a folder: every image in it
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from safegen.choices import ClassifierName, Device, DType, NudeNetPreset, choice
from safegen.errors import SafegenError

Progress = Callable[..., None]  # progress(done, total) -- extra arguments are allowed and ignored
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# --------------------------------------------------------------------------- classify
def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (sorted); a missing or empty path raises."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SafegenError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}.")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise SafegenError(f"No such file or folder: {p}")
    return out


def check_image(path: Path) -> None:
    """Read only the header, so a bad file among thousands fails before any is classified; an image whose
    header claims more pixels than Pillow's limit (a decompression bomb) is refused, not decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path):
                pass
    except UnidentifiedImageError:
        raise SafegenError(f"Cannot read image {path}: not an image.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SafegenError(f"Cannot read image {path}: it claims more pixels than safegen decodes.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SafegenError(f"Cannot read image {path}: {getattr(exc, 'strerror', None) or exc}.") from None


def open_image(path: Path):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def classify(
    images_or_paths: Sequence[Any],
    classifier: str | ClassifierName = "nudenet",
    preset: str | NudeNetPreset = "i2p",
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Classify images with NudeNet or the mini-world classifier.

    Args:
        images_or_paths: PIL images, image files or folders of images (mixed is fine). Files are
            checked up front and decoded one batch at a time.
        classifier: ``nudenet`` (unsafe, score, counts, detections per image) or ``mini`` (the objects
            seen per image, each with object/color/texture).
        preset: the NudeNet protocol (``i2p``, ``six``, ``mace``); ignored by ``mini``.
        batch_size: images per classifier call (and per progress update).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        One dict per image, in order: ``path`` (``None`` for in-memory images), ``classifier``, and the
        classifier's result (for ``mini``: ``objects``).

    Raises:
        SafegenError: unknown classifier or preset, missing or unreadable image file.
    """
    name = choice(ClassifierName, classifier, "classifier")
    preset = choice(NudeNetPreset, preset, "NudeNet preset")
    if batch_size < 1:
        raise SafegenError(f"batch_size must be at least 1, got {batch_size}.")
    items: list[Any] = []
    for item in images_or_paths:
        items.extend(expand_paths([item]) if isinstance(item, (str, Path)) else [item])
    for item in items:
        if isinstance(item, Path):
            check_image(item)

    if name is ClassifierName.NUDENET:
        from safegen.classifiers.nudenet import NudeNetClassifier

        model = NudeNetClassifier(preset=preset.value)
    else:
        from safegen.mini.classifier import MiniClassifier

        model = MiniClassifier.load()

    out: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        if name is ClassifierName.MINI:  # NudeNet reads paths itself (EXIF-aware, as cv2 does)
            inputs = [open_image(x) if isinstance(x, Path) else x for x in batch]
        else:
            inputs = batch
        for item, result in zip(batch, model.classify(inputs), strict=True):
            record = dict(result) if isinstance(result, dict) else {"objects": result}
            path = str(item) if isinstance(item, Path) else None
            out.append({"path": path, "classifier": name.value, **record})
        if progress is not None:
            progress(len(out), len(items))
    return out


# --------------------------------------------------------------------------- generate
def generate_to_dir(
    prompts: Sequence[str],
    *,
    model: str = "mini",
    n: int = 1,
    seed: int = 0,
    steps: int = 20,
    cfg: float | None = None,
    out: str | Path | None = None,
    device: str | Device = "auto",
    dtype: str | DType = "auto",
    batch_size: int = 8,
    guard: Any = "none",
    adapter: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate ``n`` images per prompt and save them (PNGs + ``generation.jsonl``) under ``out``.

    ``cfg`` None is the model's own default guidance scale (:func:`safegen.generator.model_cfg`).

    ``adapter`` is a LoRA adapter folder from ``safegen erase`` (diffusers format for diffusion models,
    PEFT format for autoregressive ones; see :mod:`safegen.adapters`) to load first.

    ``guard`` is a registered name or a guard object (``safegen.guards.build_guard``, for guards that take
    a concept and options).

    Image ``k`` (prompt-major: prompt 0's ``n`` images first) gets seed ``seed + k``. Every setting is
    checked, and the guard and model are loaded, before anything is written.

    Returns:
        ``{"out": folder, "files": [paths], "records": [one dict per image]}``.

    Raises:
        SafegenError: empty prompt, setting out of range, unknown model/guard/device/dtype, ``out`` is a file.
    """
    device = choice(Device, device, "device")
    dtype = choice(DType, dtype, "dtype")
    from safegen.runs import default_out_dir

    if out is not None and not str(out).strip():
        raise SafegenError("--out must name a folder (got an empty string).")
    out_dir = Path(out) if out is not None else default_out_dir("generate")
    if out_dir.exists() and not out_dir.is_dir():
        raise SafegenError(f"--out {out_dir} exists and is not a folder.")

    from safegen.generator import generate, model_cfg
    from safegen.guards import get_guard
    from safegen.loader import load_model
    from safegen.outputs import check_out_dir, save_images
    from safegen.sampling import GenerationConfig, plan_jobs

    config = GenerationConfig(steps=steps, cfg=7.5 if cfg is None else cfg, batch_size=batch_size)
    plan_jobs(prompts, None, n)  # checks prompts and n (bounded) before any list of seeds is built
    seeds = [seed + k for k in range(len(prompts) * n)]
    plan_jobs(prompts, seeds, n)  # and the seeds, before the model is loaded
    guard_obj = get_guard(guard) if isinstance(guard, str) else guard
    if adapter is not None:
        from safegen.adapters import attach_adapter, check_adapter

        check_adapter(adapter)
    loaded = load_model(model, device=device.value, dtype=dtype.value)
    if loaded.kind == "ar" and getattr(guard_obj, "name", "none") != "none":
        raise SafegenError(
            f"Guard '{guard_obj.name}' acts inside a diffusion loop; autoregressive models take no inference "
            "guard (erase concepts from them with a fine-tuning method such as VCE)."
        )
    if adapter is not None:
        attach_adapter(loaded, adapter)
    config = dataclasses.replace(config, cfg=model_cfg(loaded, cfg))
    out_dir = check_out_dir(out_dir)  # created only once every input has passed, before the long part
    images = generate(loaded, prompts, seeds=seeds, n=n, config=config, guard=guard_obj, progress=progress)
    record = {
        "model": loaded.name,
        "model_source": loaded.source,
        "guard": guard_obj.describe(),
        "adapter": str(adapter) if adapter is not None else None,
        "settings": config.to_dict(),
        "base_seed": seed,
    }
    files = save_images(images, out_dir, record)
    records = [
        {"path": str(path), "prompt": img.prompt, "seed": img.seed, "info": img.info}
        for path, img in zip(files, images, strict=True)
    ]
    return {"out": str(out_dir), "files": [str(f) for f in files], "records": records}
