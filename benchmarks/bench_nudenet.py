"""Parity and throughput of safegen's batched NudeNet path against ``NudeDetector().detect``.

Run::

    .venv/bin/pip install scikit-image   # benchmark only: its wheel ships the photos used here
    .venv/bin/python benchmarks/bench_nudenet.py --rounds 5

Images: there are no photo collections on the machine and no data set downloads, so the benchmark uses
the real photographs that ship inside the scikit-image wheel (``skimage/data``: astronaut, cameraman,
cat, coffee, motorcycles, rocket, coins, moon, ...; no network fetch) and makes 5 images from each:
the photo, its mirror image, a centre crop, a rescale to 512 px on the long side, and a 2 x 2 tiling
of the half-size photo (more, smaller faces per image, so NMS has overlapping boxes to sort out).
They are NOT distinct photos: the set is 19 photos times 5 variants = 95 images, long side 288 to
1,411 px.
Few of them show people and none shows nudity, so parity rests on few boxes (faces, and a few
low-score body-part boxes on textures); every box of every class is compared.

Parity: every detection of both paths is compared (class and order exactly, score, box).

Throughput: each round times NudeDetector.detect on BGR arrays (its fastest input: no file decode) and
our ``NudeNetClassifier.detect`` on the PIL images (conversion included), plus two attribution runs:
NudeDetector with onnxruntime's thread spinning off (as ours), and ours with one worker. The order of
the runs rotates each round. The speed-up is the median of the per-round ratios: a round's runs are
seconds apart, while the load of a shared machine changes over minutes (its load average is printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from safegen.classifiers import NudeNetClassifier
from safegen.classifiers.nudenet import model_path

PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)


def real_images() -> list[Image.Image]:
    """The photos in scikit-image's wheel, each as itself, mirrored, centre-cropped, rescaled and tiled."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "This benchmark needs scikit-image's bundled photos: .venv/bin/pip install scikit-image"
        )
    folder = Path(spec.origin).parent / "data"
    images = []
    for name in PHOTOS:
        photo = Image.open(folder / name).convert("RGB")
        w, h = photo.size
        crop = photo.crop((w // 8, h // 8, w - w // 8, h - h // 6))
        scale = 512 / max(w, h)
        rescaled = photo.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        half = photo.resize((w // 2, h // 2), Image.BILINEAR)
        tiled = Image.new("RGB", (2 * half.width, 2 * half.height))
        for x, y in ((0, 0), (half.width, 0), (0, half.height), (half.width, half.height)):
            tiled.paste(half, (x, y))
        images += [photo, photo.transpose(Image.FLIP_LEFT_RIGHT), crop, rescaled, tiled]
    return images


def parity(reference: list[list[dict]], ours: list[list]) -> dict[str, float]:
    """Largest score and box differences, and how many images differ in classes or box count."""
    score_diff = box_diff = 0.0
    mismatches = n_boxes = 0
    for ref, dets in zip(reference, ours, strict=True):
        if [r["class"] for r in ref] != [d.label for d in dets]:
            mismatches += 1
            continue
        for r, d in zip(ref, dets, strict=True):
            n_boxes += 1
            score_diff = max(score_diff, abs(r["score"] - d.score))
            box_diff = max(box_diff, max(abs(a - b) for a, b in zip(r["box"], d.box, strict=True)))
    return {"boxes": n_boxes, "score": score_diff, "box": box_diff, "mismatch": mismatches}


def images_per_second(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="parallel batches (default: CPU cores)")
    args = parser.parse_args()

    from nudenet import NudeDetector  # NudeNet imports cv2 and builds its session at import/init

    images = real_images()
    bgr = [np.ascontiguousarray(np.asarray(im)[..., ::-1]) for im in images]  # (H, W, 3) BGR
    detector = NudeDetector()
    ours = NudeNetClassifier("i2p", batch_size=args.batch_size, workers=args.workers)
    # Attribution: the same decoding, but one batch at a time on one multi-threaded session.
    serial = NudeNetClassifier("i2p", batch_size=args.batch_size, workers=1)

    reference = [detector.detect(x) for x in bgr]  # also warms both sessions up
    check = parity(reference, ours.detect(images))

    serial.detect(images[:1])  # warm the multi-threaded session up
    # Attribution: NudeDetector as is, but its idle onnxruntime threads sleep instead of spinning, as ours do.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    nospin = NudeDetector()
    nospin.onnx_session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
    nospin.detect(bgr[0])
    theirs_ips, ours_ips, serial_ips, nospin_ips = [], [], [], []
    for r in range(args.rounds):
        runs = [
            (theirs_ips, lambda: [detector.detect(x) for x in bgr]),
            (ours_ips, lambda: ours.detect(images)),
            (serial_ips, lambda: serial.detect(images)),
            (nospin_ips, lambda: [nospin.detect(x) for x in bgr]),
        ]
        # Rotate the order, so that each run follows each other run equally often.
        for store, fn in runs[r % len(runs) :] + runs[: r % len(runs)]:
            store.append(images_per_second(fn, len(images)))

    sizes = sorted(max(im.size) for im in images)
    theirs, mine = statistics.median(theirs_ips), statistics.median(ours_ips)
    rows = [
        ("images", f"{len(images)} ({len(PHOTOS)} photos x 5 variants, long side {sizes[0]}-{sizes[-1]} px)"),
        ("detections compared", f"{check['boxes']}"),
        ("max |score diff|", f"{check['score']:.2e}"),
        ("max |box diff| (px)", f"{check['box']:.0f}"),
        ("images with class mismatch", f"{check['mismatch']}"),
        ("NudeDetector.detect (BGR arrays)", f"{theirs:.1f} img/s  (rounds: {_fmt(theirs_ips)})"),
        (
            f"NudeNetClassifier.detect (PIL, batch <= {args.batch_size}, {ours.workers} workers)",
            f"{mine:.1f} img/s  (rounds: {_fmt(ours_ips)})",
        ),
        ("speed-up (median of per-round ratios)", f"{_ratio(ours_ips, theirs_ips)}"),
        ("attribution (speed-up vs NudeDetector.detect):", ""),
        ("  NudeDetector.detect, threads not spinning", _vs(nospin_ips, theirs_ips)),
        ("  ours, 1 worker (one multi-threaded call at a time)", _vs(serial_ips, theirs_ips)),
        ("  ours vs NudeDetector.detect with threads not spinning", _ratio(ours_ips, nospin_ips)),
        ("rounds", f"{args.rounds}, order rotated each round"),
        (
            "onnxruntime / cores / load avg",
            f"{ort.__version__} / {os.cpu_count()} / {os.getloadavg()[0]:.2f}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print("| " + "metric".ljust(width) + " | value")
    print("|-" + "-" * width + "-|------")
    for key, value in rows:
        print("| " + key.ljust(width) + " | " + value)


def _ratio(values: list[float], reference: list[float]) -> str:
    """Median and range of the per-round ratios: rounds are minutes apart and the load changes."""
    ratios = [v / r for v, r in zip(values, reference, strict=True)]
    return f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})"


def _vs(values: list[float], reference: list[float]) -> str:
    return f"{statistics.median(values):.1f} img/s, {_ratio(values, reference)}"


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
