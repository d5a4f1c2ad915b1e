"""Score generated shapes images and videos against their captions with plain image analysis (no learned model).

Like T2I-CompBench, every caption is split into facts (object present, colour binding, texture, size, spatial
relation, count, motion) and each fact is checked on what `detect` reads back from the pixels:

1. Pixel unmixing. A rendered pixel is `alpha * shade * colour + (1 - alpha) * background` with a grey background,
   so its hue is the colour's hue whatever `alpha` (edge coverage) and `shade` (1, or `DARK_SHADE` on texture marks)
   are. Each pixel gets the palette colour of nearest hue, and from its chroma and minimum channel the coverage
   `alpha` and the `shade` are recovered in closed form. Foreground = `alpha >= 0.5` with enough chroma.
2. Connected components per colour (`scipy.ndimage.label`), dropping specks smaller than a fraction of the smallest
   object the world draws.
3. Per component: shape from descriptors (extent, solidity, centroid offset in the bounding box, aspect ratio) by the
   nearest rendered prototype; size class from the area relative to the prototypes' areas of that shape; texture
   from the dark-shade pixels (their fraction; whether rows are all-dark or all-light (bands) or mixed (dots)).

The thresholds are not guessed: `_prototypes(side)` renders every shape × size × texture with the world's own
renderer at the image's resolution and derives the classifiers from their descriptors.

    from unbottle.shapes.evaluate import evaluate, score
    score(image, "a red circle to the left of a striped blue star")
    # {'object0': True, 'color0': True, 'object1': True, 'color1': True, 'texture1': True, 'relation': True}
    print(evaluate(zip(images, captions)).table())
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .captions import CaptionSpec, Mention, parse_caption
from .render import render_frame
from .world import BACKGROUND, COLORS, DARK_SHADE, MOTIONS, SHAPES, SIZES, TEXTURES, Obj, Scene

FACT_TYPES = ("object", "color", "texture", "size", "relation", "count", "motion")
RELATION_MARGIN = 0.04  # the world places related objects ≥ 0.08 apart; leave room for generated jitter
MIN_TRAVEL = 0.05  # a moving object travels 0.25 of the canvas per clip (≥ 0.155 where clamped at the border)
MAX_SIDE = 256  # larger images are box-downsampled to about this side first (speed; descriptors are scale-free)

_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES], dtype=np.float32)
_PAL_CHROMA = _PALETTE.max(1) - _PALETTE.min(1)
_PAL_MIN = _PALETTE.min(1)
_BG = float(np.mean(BACKGROUND))
_DARK_SPLIT = (1.0 + DARK_SHADE) / 2  # a pixel's recovered shade below this is a texture mark
_MIN_ALPHA, _MIN_CHROMA, _MIN_SHADE = 0.5, 18.0, 0.3
_SPECK = 0.3  # components below this fraction of the smallest prototype's area are noise
_EIGHT = np.ones((3, 3), dtype=bool)


def _hue(r: np.ndarray, g: np.ndarray, b: np.ndarray, mx: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) from float channels, their maximum and chroma (max - min)."""
    inv = 60.0 / np.maximum(chroma, 1e-6)
    h = np.where(mx == r, (g - b) * inv, np.where(mx == g, (b - r) * inv + 120.0, (r - g) * inv + 240.0))
    return np.where(h < 0, h + 360.0, h)


_PAL_HUE = _hue(*_PALETTE.T, _PALETTE.max(1), _PAL_CHROMA)
# nearest palette colour of every whole-degree hue (circular distance): a 360-entry look-up table
_HUE_LUT = np.argmin(
    np.abs(((np.arange(360)[:, None] + 0.5 - _PAL_HUE[None, :]) + 180.0) % 360.0 - 180.0), axis=1
).astype(np.int8)


@dataclass(frozen=True)
class Detection:
    """One object read back from an image: attributes, centroid (x, y) and area as fractions of the canvas."""

    color: str
    shape: str
    size: str
    texture: str
    x: float
    y: float
    area: float
    pixels: int = 0


# ----------------------------------------------------------------------------------------------------- pixels


def _to_array(image) -> np.ndarray:
    """(…, H, W, 3) float32 in [0, 255] from uint8, float in [0, 1], PIL images or CPU tensors."""
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim >= 3 and arr.shape[-1] != 3 and arr.shape[-3] == 3:  # channels first
        arr = np.moveaxis(arr, -3, -1)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected an image (H, W, 3) or a video (F, H, W, 3), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32) * 255.0, 0.0, 255.0)
    return arr.astype(np.float32)


def _downsample(img: np.ndarray) -> np.ndarray:
    k = max(img.shape[0], img.shape[1]) // MAX_SIDE
    if k < 2:
        return img
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    return img[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


def _pixel_maps(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: palette index (-1 = background / no colour), coverage alpha, shade (1 plain, 0.55 texture mark)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = mx - mn
    k = _HUE_LUT[_hue(r, g, b, mx, chroma).astype(np.int16) % 360]
    a = chroma / _PAL_CHROMA[k]  # alpha * shade
    alpha = 1.0 - (mn - a * _PAL_MIN[k]) / _BG
    shade = a / np.maximum(alpha, 1e-3)
    keep = (alpha >= _MIN_ALPHA) & (chroma >= _MIN_CHROMA) & (shade >= _MIN_SHADE)
    return np.where(keep, k, -1).astype(np.int8), alpha, shade


# ----------------------------------------------------------------------------------------------- descriptors


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares (from each row's leftmost and rightmost pixel's corners)."""
    rows = np.flatnonzero(mask.any(1))
    left = mask[rows].argmax(1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(1)
    xs = np.concatenate([left - 0.5, left - 0.5, right + 0.5, right + 0.5])
    ys = np.concatenate([rows - 0.5, rows + 0.5, rows - 0.5, rows + 0.5])
    try:
        return float(ConvexHull(np.stack([xs, ys], 1)).volume)
    except QhullError:  # degenerate (a line)
        return float(mask.sum())


@functools.lru_cache(maxsize=256)
def _corners(h: int, w: int) -> np.ndarray:
    """Mask of the four corner triangles (legs 0.2 of the side) of an h × w box; a circle inscribed in the box misses
    them by 0.13 of its radius, a square fills them, a diamond or cross leaves them empty, an apex-up triangle fills
    the lower two."""
    u = (np.arange(w) + 0.5) / w
    v = (np.arange(h) + 0.5) / h
    u, v = np.minimum(u, 1 - u), np.minimum(v, 1 - v)
    return (v[:, None] + u[None, :]) < 0.2


def _shape_features(mask: np.ndarray) -> np.ndarray:
    """[extent, solidity, corner fill, centroid y offset / height, centroid x offset / width, log aspect]."""
    h, w = mask.shape
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    cy = (ys.mean() + 0.5) / h - 0.5  # > 0: mass below the bbox centre (apex-up triangle)
    cx = (xs.mean() + 0.5) / w - 0.5
    corners = _corners(h, w)
    fill = float(mask[corners].mean()) if corners.any() else 0.0
    return np.array([area / (h * w), area / max(_hull_area(mask), area), fill, cy, cx, np.log(w / h)])


def _texture_features(mask: np.ndarray, alpha: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """[dark fraction, row mixing, band elongation] of the dark-shade pixels among the object's well-covered ones.

    Row mixing: how far each row's dark fraction is from all-or-nothing (≈ 0 for horizontal bands, high for dots).
    Band elongation: the area-weighted mean log(width / height) of the dark connected pieces (bands ≫ 0, dots ≈ 0).
    """
    inner = mask & (alpha >= 0.8)
    n = inner.sum()
    dark = inner & (shade < _DARK_SPLIT)
    n_dark = dark.sum()
    if n == 0 or n_dark == 0:
        return np.zeros(3)
    per_row = inner.sum(1)
    rows = per_row >= 3
    frac = dark.sum(1)[rows] / per_row[rows]
    weight = per_row[rows]
    mixing = float((2 * np.minimum(frac, 1 - frac) * weight).sum() / max(weight.sum(), 1))
    pieces, count = ndimage.label(dark)
    boxes = ndimage.find_objects(pieces)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    spans = np.array([(b[1].stop - b[1].start, b[0].stop - b[0].start) for b in boxes], dtype=np.float64)
    elongation = float((sizes * np.log(spans[:, 0] / spans[:, 1])).sum() / sizes.sum())
    return np.array([n_dark / n, mixing, elongation])


# ------------------------------------------------------------------------------------------------- prototypes


@dataclass(frozen=True)
class _Gaussians:
    """Diagonal-Gaussian classifier: one mean and variance per label, fitted on prototype descriptors."""

    labels: tuple[str, ...]
    mean: np.ndarray  # (L, F)
    var: np.ndarray  # (L, F)

    @classmethod
    def fit(
        cls, feats: np.ndarray, labels: Sequence[str], floor: float, pool: Callable[[str], str] = str
    ) -> _Gaussians:
        """Means per label; variances pooled over the labels with the same `pool(label)` (plus floor²)."""
        names = tuple(dict.fromkeys(labels))
        lab = np.array(labels)
        mean = np.stack([feats[lab == n].mean(0) for n in names])
        resid = feats - mean[[names.index(n) for n in labels]]
        groups = np.array([pool(n) for n in labels])
        var = np.stack([np.square(resid[groups == pool(n)]).mean(0) for n in names]) + floor**2
        return cls(names, mean, var)

    def __call__(self, x: np.ndarray) -> str:
        nll = (np.square(x - self.mean) / self.var + np.log(self.var)).sum(1)
        return self.labels[int(nll.argmin())]


@dataclass(frozen=True)
class _Prototypes:
    side: int
    shape: _Gaussians  # labels "shape/size": descriptors depend a little on the size (pixelation)
    texture: _Gaussians
    log_area: dict  # shape -> {size: mean log area fraction}
    min_area: float  # fraction of the canvas; smaller components are specks


def _components(labels: np.ndarray) -> list[tuple[int, tuple[slice, slice], np.ndarray]]:
    """(colour index, bbox, cropped mask) of each 8-connected component of each colour."""
    out = []
    for k in np.unique(labels):
        if k < 0:
            continue
        lab, n = ndimage.label(labels == k, structure=_EIGHT)
        for j, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is not None:
                out.append((int(k), sl, lab[sl] == j))
    return out


# prototype renders are also measured softened like a generated image: (Gaussian blur sigma px, noise std /255)
_PROTOTYPE_DEGRADATIONS = ((0.0, 0.0), (0.5, 3.0), (1.0, 6.0))
_PROTOTYPE_POSITIONS = 4  # sub-pixel offsets of each prototype (pixelation varies with them)


def _degrade(img: np.ndarray, sigma: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    out = img.astype(np.float32)
    if sigma > 0:
        out = ndimage.gaussian_filter(out, sigma=(sigma, sigma, 0))
    if noise > 0:
        out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(np.round(out), 0, 255)


@functools.lru_cache(maxsize=8)
def _prototypes(side: int) -> _Prototypes:
    """Render every shape × size × texture at a few sub-pixel offsets at this side, crisp and softened; fit on them."""
    rng = np.random.default_rng(0)
    shape_x, shape_y, tex_x, tex_y = [], [], [], []
    areas: dict = defaultdict(lambda: defaultdict(list))
    positions = [(0.5 + dx / side, 0.5 + dy / side) for dx, dy in rng.uniform(-0.5, 0.5, (_PROTOTYPE_POSITIONS, 2))]
    for i, (shape, size, texture, (x, y)) in enumerate(itertools.product(SHAPES, SIZES, TEXTURES, positions)):
        scene = Scene((Obj(_NAMES[i % len(_NAMES)], shape, size, texture, x, y),), "single")
        half = int((SIZES[size] + 0.04) * side) + 2  # measure a crop around the object: cheaper, same result
        img = render_frame(scene, side)[
            max(side // 2 - half, 0) : side // 2 + half, max(side // 2 - half, 0) : side // 2 + half
        ]
        for sigma, noise in _PROTOTYPE_DEGRADATIONS:
            k, alpha, shade = _pixel_maps(_degrade(img, sigma, noise, rng))
            _, sl, mask = max(_components(k), key=lambda c: c[2].sum())
            shape_x.append(_shape_features(mask))
            shape_y.append(f"{shape}/{size}")
            tex_x.append(_texture_features(mask, alpha[sl], shade[sl]))
            tex_y.append(texture)
            areas[shape][size].append(mask.sum() / side**2)
    return _Prototypes(
        side=side,
        shape=_Gaussians.fit(np.stack(shape_x), shape_y, floor=0.01, pool=lambda n: n.split("/")[0]),
        texture=_Gaussians.fit(np.stack(tex_x), tex_y, floor=0.01),
        log_area={s: {z: float(np.log(np.mean(v))) for z, v in d.items()} for s, d in areas.items()},
        min_area=_SPECK * min(min(v) for d in areas.values() for v in d.values()),
    )


def _classify(feats: np.ndarray, area: float, tex: np.ndarray, proto: _Prototypes) -> tuple[str, str, str]:
    shape = proto.shape(feats).split("/")[0]
    sizes = proto.log_area[shape]
    size = min(sizes, key=lambda z: abs(np.log(max(area, 1e-9)) - sizes[z]))
    return shape, size, proto.texture(tex)


# --------------------------------------------------------------------------------------------------- detect


def detect(image) -> list[Detection]:
    """The coloured objects of one image (H, W, 3), uint8 or float in [0, 1]: largest first."""
    img = _to_array(image)
    if img.ndim != 3:
        raise ValueError(f"detect takes one image (H, W, 3); got shape {img.shape} (use detect_video for videos)")
    return _detect(img)


def detect_video(video) -> list[list[Detection]]:
    """`detect` on every frame of a video (F, H, W, 3)."""
    arr = _to_array(video)
    return [_detect(f) for f in (arr if arr.ndim == 4 else arr[None])]


def _detect(img: np.ndarray) -> list[Detection]:
    img = _downsample(img)
    h, w = img.shape[:2]
    proto = _prototypes(max(int(round(np.sqrt(h * w))), 32))  # below 32 px the small shapes are a few pixels
    labels, alpha, shade = _pixel_maps(img)
    canvas = float(h * w)
    out = []
    for k, sl, mask in _components(labels):
        n = int(mask.sum())
        if n < proto.min_area * canvas:
            continue
        shape, size, texture = _classify(
            _shape_features(mask), n / canvas, _texture_features(mask, alpha[sl], shade[sl]), proto
        )
        ys, xs = np.nonzero(mask)
        out.append(Detection(
            color=_NAMES[k], shape=shape, size=size, texture=texture,
            x=float((xs.mean() + sl[1].start + 0.5) / w), y=float((ys.mean() + sl[0].start + 0.5) / h),
            area=n / canvas, pixels=n,
        ))  # fmt: skip
    out.sort(key=lambda d: -d.pixels)
    return out


# ---------------------------------------------------------------------------------------------------- score


def _spec(caption_or_spec: str | CaptionSpec) -> CaptionSpec:
    return caption_or_spec if isinstance(caption_or_spec, CaptionSpec) else parse_caption(caption_or_spec)


def category(caption_or_spec: str | CaptionSpec) -> str:
    """The T2I-CompBench-like category of a caption: single, attribute, color_binding, spatial, count, motion."""
    return _spec(caption_or_spec).category


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str, margin: float = RELATION_MARGIN):
    """`a <relation> b` for centroids (x, y), y down: `world._relation_holds`'s dominance rule, smaller margin."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    return {
        "left of": dx < -margin and abs(dx) > abs(dy),
        "right of": dx > margin and abs(dx) > abs(dy),
        "above": dy < -margin and abs(dy) > abs(dx),
        "below": dy > margin and abs(dy) > abs(dx),
    }[relation]


def _match(m: Mention, d: Detection) -> tuple[bool, bool, bool, bool]:
    """(shape, shape+colour, +texture, +size) agreement of a detection with a mention."""
    shape = d.shape == m.shape
    color = shape and d.color == m.color
    return (
        shape,
        color,
        color and (m.texture is None or d.texture == m.texture),
        color and (m.size is None or d.size == m.size),
    )


def _assign(dets: Sequence[Detection], spec: CaptionSpec) -> tuple[tuple[Detection | None, ...], bool]:
    """The best one-to-one assignment of detections to mentions, and whether the relation holds on it.

    Assignments are ranked lexicographically: shape matches, then colour bindings, then texture/size agreement, then
    (among equals) the relation holding. Mentions can't share a detection.
    """
    cands = [[None, *(d for d in dets if d.shape == m.shape)] for m in spec.mentions]
    best, best_key, best_rel = tuple(None for _ in spec.mentions), (-1,), False
    for combo in itertools.product(*cands):
        chosen = [d for d in combo if d is not None]
        if len({id(d) for d in chosen}) < len(chosen):
            continue
        shape = color = extra = 0
        for m, d in zip(spec.mentions, combo, strict=True):
            if d is not None:
                s, c, t, z = _match(m, d)
                shape, color, extra = shape + s, color + c, extra + t + z
        rel = False
        if spec.relation is not None and len(combo) >= 2 and combo[0] is not None and combo[1] is not None:
            rel = _match(spec.mentions[0], combo[0])[1] and _match(spec.mentions[1], combo[1])[1]
            rel = rel and relation_holds((combo[0].x, combo[0].y), (combo[1].x, combo[1].y), spec.relation)
        key = (shape, color, extra, rel)
        if key > best_key:
            best, best_key, best_rel = combo, key, rel
    return best, best_rel


def _static_facts(dets: Sequence[Detection], spec: CaptionSpec) -> tuple[dict[str, bool], tuple]:
    """The facts that one image can show, and the detection assigned to each mention (or None)."""
    assigned, rel = _assign(dets, spec)
    facts: dict[str, bool] = {}
    for i, (m, d) in enumerate(zip(spec.mentions, assigned, strict=True)):
        shape, color, texture, size = _match(m, d) if d is not None else (False,) * 4
        facts[f"object{i}"] = shape
        facts[f"color{i}"] = color
        if m.texture is not None:
            facts[f"texture{i}"] = texture
        if m.size is not None:
            facts[f"size{i}"] = size
    if spec.relation is not None:
        facts["relation"] = rel
    if spec.count is not None:
        m = spec.mentions[0]
        facts["count"] = sum(d.shape == m.shape and d.color == m.color for d in dets) == spec.count
    return facts, assigned


def _direction(dx: float, dy: float) -> str | None:
    """The world motion (left/right/up/down) whose axis dominates a displacement; None below `MIN_TRAVEL`."""
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None
    return max(MOTIONS, key=lambda name: MOTIONS[name][0] * dx + MOTIONS[name][1] * dy)


def score(image_or_video, caption_or_spec: str | CaptionSpec) -> dict[str, bool]:
    """Fact name → satisfied, for an image (H, W, 3) or a video (F, H, W, 3) and a caption (or its spec).

    Facts: `object{i}`, `color{i}`, `texture{i}` / `size{i}` (when named), `relation`, `count`, `motion{i}`. A video's
    static facts are voted over its frames (true in at least half); `motion{i}` follows the object assigned to
    mention i from the first to the last frame where it is found (it must be found over at least half the clip).
    """
    spec = _spec(caption_or_spec)
    arr = _to_array(image_or_video)
    frames = [arr] if arr.ndim == 3 else list(arr)
    per_frame = [_static_facts(_detect(f), spec) for f in frames]
    votes: dict[str, int] = defaultdict(int)
    for frame_facts, _ in per_frame:
        for name, ok in frame_facts.items():
            votes[name] += ok
    facts = {name: 2 * n >= len(frames) for name, n in votes.items()}
    for i, m in enumerate(spec.mentions):
        if m.motion is None:
            continue
        track = [(t, d.x, d.y) for t, (_, assigned) in enumerate(per_frame) if (d := assigned[i]) and _match(m, d)[1]]
        ok = len(frames) > 1 and bool(track) and 2 * (track[-1][0] - track[0][0]) >= len(frames) - 1
        facts[f"motion{i}"] = ok and _direction(track[-1][1] - track[0][1], track[-1][2] - track[0][2]) == m.motion
    return facts


# ------------------------------------------------------------------------------------------------- evaluate


def fact_type(name: str) -> str:
    """'color1' → 'color'."""
    return re.sub(r"\d+$", "", name)


@dataclass
class Report:
    """Accuracy of a set of samples: all facts of a sample satisfied, per category, and per fact type."""

    n: int = 0
    accuracy: float = 0.0
    per_category: dict[str, float] = field(default_factory=dict)
    per_fact: dict[str, float] = field(default_factory=dict)
    category_counts: dict[str, int] = field(default_factory=dict)
    fact_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A short markdown table: overall, each category, each fact type (accuracy and count)."""
        lines = ["| group | accuracy | n |", "|---|---:|---:|", f"| **overall** | {self.accuracy:.3f} | {self.n} |"]
        lines += [f"| {c} | {a:.3f} | {self.category_counts[c]} |" for c, a in self.per_category.items()]
        lines += [f"| fact: {f} | {a:.3f} | {self.fact_counts[f]} |" for f, a in self.per_fact.items()]
        return "\n".join(lines)


def evaluate(samples: Iterable[tuple[object, str | CaptionSpec]]) -> Report:
    """Score (image_or_video, caption) pairs and aggregate the accuracies."""
    n = passed = 0
    cat_ok: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    fact_ok: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for media, cap in samples:
        spec = _spec(cap)
        facts = score(media, spec)
        ok = all(facts.values())
        n, passed = n + 1, passed + ok
        cat_ok[spec.category][0] += ok
        cat_ok[spec.category][1] += 1
        for name, v in facts.items():
            fact_ok[fact_type(name)][0] += v
            fact_ok[fact_type(name)][1] += 1
    cats = sorted(cat_ok)
    facts_present = [f for f in FACT_TYPES if f in fact_ok]
    return Report(
        n=n,
        accuracy=passed / n if n else 0.0,
        per_category={c: cat_ok[c][0] / cat_ok[c][1] for c in cats},
        per_fact={f: fact_ok[f][0] / fact_ok[f][1] for f in facts_present},
        category_counts={c: cat_ok[c][1] for c in cats},
        fact_counts={f: fact_ok[f][1] for f in facts_present},
    )


__all__ = ["FACT_TYPES", "Detection", "Report", "category", "detect", "detect_video", "evaluate", "score"]
