"""Render shapes scenes to images (H, W, 3) uint8 and videos (F, H, W, 3) uint8 with PIL, supersampled 2×."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .world import BACKGROUND, COLORS, DARK_SHADE, Obj, Scene, position_at

SUPERSAMPLE = 2


def outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon of a shape centred at (x, y) with circumradius r (pixels); None for a circle (drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        s = r / math.sqrt(2)
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    if shape == "triangle":  # apex up, centroid at (x, y)
        return [(x + r * math.cos(a), y - r * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    if shape == "star":
        pts = []
        for i in range(10):
            a = math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.42
            pts.append((x + rr * math.cos(a), y - rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = r / 3
        corners = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w)]
        return [(x + dx, y + dy) for dx, dy in [*corners, (-w, -w)]]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_object(canvas: Image.Image, obj: Obj, x: float, y: float, size: int) -> None:
    r = obj.radius * size
    color = COLORS[obj.color]
    mask = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(mask)
    pts = outline(obj.shape, x * size, y * size, r)
    if pts is None:
        draw.ellipse([x * size - r, y * size - r, x * size + r, y * size + r], fill=255)
    else:
        draw.polygon(pts, fill=255)
    fill = Image.new("RGB", canvas.size, color)
    if obj.texture != "solid":
        dark = tuple(int(c * DARK_SHADE) for c in color)
        marks = ImageDraw.Draw(fill)
        period = max(4, int(r * 0.8))  # coarse enough to survive a ×4 VAE and 8 px patches
        if obj.texture == "striped":  # horizontal bands, anchored to the object so they move with it
            top = int(y * size - r)
            for band in range(top + period // 2, int(y * size + r), period):
                marks.rectangle([0, band, size, band + period // 2 - 1], fill=dark)
        else:  # dotted
            dot = max(2, period // 3)
            for gy in np.arange(y * size - r, y * size + r, period):
                for gx in np.arange(x * size - r, x * size + r, period):
                    marks.ellipse([gx + period / 2 - dot, gy + period / 2 - dot, gx + period / 2 + dot,
                                   gy + period / 2 + dot], fill=dark)  # fmt: skip
    canvas.paste(fill, (0, 0), mask)


def render_frame(scene: Scene, size: int = 128, t: float = 0.5) -> np.ndarray:
    """The scene at clip time t as an (H, W, 3) uint8 image."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    for obj in scene.objects:
        x, y = position_at(obj, t)
        _draw_object(canvas, obj, x, y, big)
    return np.array(canvas.resize((size, size), Image.Resampling.BOX))  # a writable copy


def render_image(scene: Scene, size: int = 128) -> np.ndarray:
    """The still image of a scene (motion scenes at mid-clip)."""
    return render_frame(scene, size, 0.5)


def render_video(scene: Scene, size: int = 128, frames: int = 17) -> np.ndarray:
    """(F, H, W, 3) uint8 frames over the clip, t = 0 … 1."""
    times = [0.5] if frames == 1 else [i / (frames - 1) for i in range(frames)]
    return np.stack([render_frame(scene, size, t) for t in times])
