"""Parity and throughput of safegen's batched NudeNet path against ``NudeDetector().detect``.

Run::

    .venv/bin/pip install scikit-image   # benchmark only: its wheel ships the photos used here
    .venv/bin/python benchmarks/bench_nudenet.py --repeats 5

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


def timed(fn, n: int) -> tuple[float, float]:
    """Images per second (wall clock) and CPU milliseconds per image (all threads of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="parallel batches (default: CPU cores)")
    args = parser.parse_args()

    from nudenet import NudeDetector  # NudeNet imports cv2 and builds its session at import/init

    images = real_images()
    bgr = [np.ascontiguousarray(np.asarray(im)[..., ::-1]) for im in images]  # (H, W, 3) BGR
    detector = NudeDetector()
    ours = NudeNetClassifier("i2p", batch_size=args.batch_size, workers=args.workers)
    reference = [detector.detect(x) for x in bgr]  # also warms both sessions up
    check = parity(reference, ours.detect(images))

    # Attribution: ours one batch at a time on a multi-threaded session, and NudeDetector as is but with
    # its idle onnxruntime threads sleeping instead of spinning, as ours do.
    serial = NudeNetClassifier("i2p", batch_size=args.batch_size, workers=1)
    serial.detect(images[:1])
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    nospin = NudeDetector()
    nospin.onnx_session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
    nospin.detect(bgr[0])

    runs = {
        "NudeDetector.detect (BGR arrays)": lambda: [detector.detect(x) for x in bgr],
        f"ours: NudeNetClassifier.detect (PIL, batch <= {args.batch_size}, {ours.workers} workers)": (
            lambda: ours.detect(images)
        ),
        "  attribution: NudeDetector.detect, threads not spinning": lambda: [nospin.detect(x) for x in bgr],
        "  attribution: ours, 1 worker (one multi-threaded call at a time)": lambda: serial.detect(images),
    }
    names = list(runs)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(args.repeats):
        # Rotate the order, so that each run follows each other run equally often.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name], len(images)))

    sizes = sorted(max(im.size) for im in images)
    theirs, mine, nospin_name = names[0], names[1], names[2]
    rows = [
        ("images", f"{len(images)} ({len(PHOTOS)} photos x 5 variants, long side {sizes[0]}-{sizes[-1]} px)"),
        ("detections compared", f"{check['boxes']}"),
        ("max |score diff|", f"{check['score']:.2e}"),
        ("max |box diff| (px)", f"{check['box']:.0f}"),
        ("images with class mismatch", f"{check['mismatch']}"),
        *[(name, _throughput(times[name])) for name in names],
        ("speed-up: ours vs NudeDetector.detect", _ratio(times[mine], times[theirs])),
        ("speed-up: ours vs NudeDetector.detect, not spinning", _ratio(times[mine], times[nospin_name])),
        ("repeats", f"{args.repeats}, order rotated each repeat"),
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
    print("img/s: median over repeats (all repeats listed); cpu: median CPU ms per image, all threads.")


def _ratio(values: list[tuple[float, float]], reference: list[tuple[float, float]]) -> str:
    """Median and range of the per-round throughput ratios: a shared machine's load changes over minutes."""
    ratios = [v[0] / r[0] for v, r in zip(values, reference, strict=True)]
    return f"{statistics.median(ratios):.2f}x median of repeats (range {min(ratios):.2f}-{max(ratios):.2f})"


def _throughput(values: list[tuple[float, float]]) -> str:
    ips = statistics.median(v[0] for v in values)
    cpu = statistics.median(v[1] for v in values)
    rounds = ", ".join(f"{v[0]:.1f}" for v in values)
    return f"{ips:5.1f} img/s, cpu {cpu:5.1f} ms/img  (repeats: {rounds})"


if __name__ == "__main__":
    main()
