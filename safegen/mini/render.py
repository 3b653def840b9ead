"""Rendering of mini-world scenes: anti-aliased shapes filled with a texture in a colour.

>>> from safegen.mini.render import render_scene
>>> image = render_scene(scene, rgb, np.random.default_rng(0))   # (64, 64, 3) uint8
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
_SS = 4  # supersampling factor for anti-aliased shapes
BACKGROUNDS = ((246, 246, 246), (222, 222, 222), (245, 239, 224), (226, 231, 240))


class Paintable(Protocol):
    object: str
    color: str
    texture: str


def render_scene(
    things: Sequence[Paintable], rgb: Mapping[str, tuple[int, int, int]], rng: np.random.Generator
) -> np.ndarray:
    """Render one or two things, left to right, as a (64, 64, 3) uint8 array."""
    big = SIZE * _SS
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = Image.new("RGB", (big, big), bg)
    n = len(things)
    for i, thing in enumerate(things):
        if n == 1:
            cx, cy, size = 32 + rng.uniform(-5, 5), 32 + rng.uniform(-5, 5), rng.uniform(38, 48)
        else:
            cx, cy, size = 16 + 32 * i + rng.uniform(-2, 2), 32 + rng.uniform(-8, 8), rng.uniform(24, 29)
        angle = rng.uniform(-12, 12)
        mask = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(mask), thing.object, cx * _SS, cy * _SS, size * _SS, angle, fill=255)
        fill = _texture(thing.texture, rgb[thing.color], big, bg, mask)
        canvas.paste(fill, (0, 0), mask)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.uint8)


# --------------------------------------------------------------------------- shapes and textures
def _polygon(
    cx: float, cy: float, r: float, points: list[tuple[float, float]], angle: float
) -> list[tuple[float, float]]:
    a = math.radians(angle)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in points]


def _star_points(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        rad = 1.0 if k % 2 == 0 else inner
        th = -math.pi / 2 + k * math.pi / n
        pts.append((rad * math.cos(th), rad * math.sin(th)))
    return pts


def _heart_points(m: int = 48) -> list[tuple[float, float]]:
    pts = []
    for k in range(m):
        t = 2 * math.pi * k / m
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 17.0, (y + 2.5) / 17.0))
    return pts


_SHAPES = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -0.95), (0.95, 0.75), (-0.95, 0.75)],
    "star": _star_points(),
    "heart": _heart_points(),
    "cross": [
        (-0.3, -1),
        (0.3, -1),
        (0.3, -0.3),
        (1, -0.3),
        (1, 0.3),
        (0.3, 0.3),
        (0.3, 1),
        (-0.3, 1),
        (-0.3, 0.3),
        (-1, 0.3),
        (-1, -0.3),
        (-0.3, -0.3),
    ],
}


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, size: float, angle: float, fill
) -> None:
    r = size / 2
    if kind == "circle":
        draw.ellipse((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=fill)
    else:
        draw.polygon(_polygon(cx, cy, r, _SHAPES[kind], angle), fill=fill)


def _texture(kind: str, color, big: int, bg, mask: Image.Image) -> Image.Image:
    """An image the size of the canvas holding the texture in ``color`` (pasted through the shape mask)."""
    white = (250, 250, 250)
    if kind == "solid":
        return Image.new("RGB", (big, big), color)
    yy, xx = np.mgrid[0:big, 0:big] // _SS
    if kind == "striped":
        on = (yy % 8) < 4
    elif kind == "checkered":
        on = ((yy // 6) + (xx // 6)) % 2 == 0
    elif kind == "dotted":
        on = ((yy % 8 - 3.5) ** 2 + (xx % 8 - 3.5) ** 2) < 4.5
    elif kind == "outlined":
        # ring: the shape minus its eroded interior; interior shows the background.
        m = np.asarray(mask) > 127
        inner = _erode(m, 3 * _SS)
        out = np.where(inner[..., None], np.array(bg, np.uint8), np.array(color, np.uint8))
        return Image.fromarray(out.astype(np.uint8))
    else:
        raise KeyError(kind)
    out = np.where(on[..., None], np.array(color, np.uint8), np.array(white, np.uint8))
    # a coloured rim keeps the silhouette readable under the pattern
    m = np.asarray(mask) > 127
    rim = m & ~_erode(m, 1 * _SS + 2)
    out[rim] = color
    return Image.fromarray(out.astype(np.uint8))


def _erode(m: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a (2k+1) square, via a summed-area table."""
    h, w = m.shape
    s = np.pad(m.astype(np.int32), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    y0 = np.clip(np.arange(h) - k, 0, h)
    y1 = np.clip(np.arange(h) + k + 1, 0, h)
    x0 = np.clip(np.arange(w) - k, 0, w)
    x1 = np.clip(np.arange(w) + k + 1, 0, w)
    total = s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return total == area
