"""The shapes world: its vocabulary and scenes (objects with colour, shape, size, texture, position, motion).

Everything is seeded: `sample_scene(rng, kind)` returns the same scene for the same generator state, so data sets are
re-created on any machine instead of being shipped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# name -> RGB; hues are ≥ 20° apart so a hue classifier separates them, also in the darker texture shade
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (230, 205, 35),
    "green": (40, 170, 60),
    "cyan": (35, 195, 215),
    "blue": (40, 80, 225),
    "purple": (145, 60, 200),
    "pink": (235, 95, 180),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
TEXTURES = ("solid", "striped", "dotted")
SIZES = {"small": 0.085, "medium": 0.12, "large": 0.17}  # radius as a fraction of the canvas side
RELATIONS = ("left of", "right of", "above", "below")
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
BACKGROUND = (238, 238, 238)
DARK_SHADE = 0.55  # texture marks are the object's colour times this
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
KINDS = ("single", "attribute", "pair", "relation", "count")
VIDEO_KINDS = ("motion", "motion_pair")


@dataclass(frozen=True)
class Obj:
    """One object: attributes, centre (x, y) and radius as fractions of the canvas, velocity in canvas per clip."""

    color: str
    shape: str
    size: str = "medium"
    texture: str = "solid"
    x: float = 0.5
    y: float = 0.5
    motion: str | None = None  # "left" | "right" | "up" | "down"

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Scene:
    """Objects plus the caption spec: which objects the caption mentions and how (`kind`, `relation`)."""

    objects: tuple[Obj, ...]
    kind: str  # "single" | "attribute" | "pair" | "relation" | "count" | "motion" | "motion_pair"
    relation: str | None = None  # for "relation": objects[0] <relation> objects[1]
    count: int = 1  # for "count": the first `count` objects are the counted ones
    mention: dict = field(default_factory=dict, hash=False)  # attributes the caption names: {"size", "texture"}


def _place(rng: random.Random, radii: list[float], tries: int = 200) -> list[tuple[float, float]] | None:
    """Non-overlapping centres (with a margin) for circles of these radii inside the unit square."""
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(tries):
            x, y = rng.uniform(r + 0.03, 1 - r - 0.03), rng.uniform(r + 0.03, 1 - r - 0.03)
            if all(math.hypot(x - cx, y - cy) > r + cr + 0.05 for (cx, cy), cr in zip(centres, radii, strict=False)):
                centres.append((x, y))
                break
        else:
            return None
    return centres


def _relation_holds(a: Obj, b: Obj, relation: str, margin: float = 0.08, dominance: float = 0.0) -> bool:
    """Whether a <relation> b: offset beyond `margin` along the relation's axis, exceeding the other by `dominance`."""
    dx, dy = a.x - b.x, a.y - b.y
    horizontal, vertical = abs(dx) > abs(dy) + dominance, abs(dy) > abs(dx) + dominance
    return {
        "left of": dx < -margin and horizontal,
        "right of": dx > margin and horizontal,
        "above": dy < -margin and vertical,
        "below": dy > margin and vertical,
    }[relation]


def _apart_over_clip(objects: tuple[Obj, ...], gap: float = 0.03) -> bool:
    """No two objects come within `gap` of touching at any point of the clip (moving objects included)."""
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        pos = [position_at(o, t) for o in objects]
        for i in range(len(objects)):
            for j in range(i + 1, len(objects)):
                if math.dist(pos[i], pos[j]) < objects[i].radius + objects[j].radius + gap:
                    return False
    return True


def sample_scene(rng: random.Random, kind: str | None = None, video: bool = False) -> Scene:
    """A random scene of `kind` (random when None) whose caption facts all hold in it."""
    kinds = VIDEO_KINDS if video else KINDS
    kind = kind or rng.choice(kinds)
    while True:
        scene = _try_scene(rng, kind)
        if scene is not None:
            return scene


def _attrs(rng: random.Random, distinct_from: Obj | None = None) -> dict:
    while True:
        a = dict(color=rng.choice(list(COLORS)), shape=rng.choice(SHAPES), size=rng.choice(list(SIZES)),
                 texture=rng.choice(TEXTURES))  # fmt: skip
        if distinct_from is None or (a["color"], a["shape"]) != (distinct_from.color, distinct_from.shape):
            return a


def _try_scene(rng: random.Random, kind: str) -> Scene | None:
    mention = {"size": rng.random() < 0.3, "texture": rng.random() < 0.3}
    if kind in ("single", "attribute", "motion"):
        a = _attrs(rng)
        if kind == "attribute":
            mention = {"size": rng.random() < 0.5, "texture": True}
        objs = [a]
    elif kind in ("pair", "relation", "motion_pair"):
        first = _attrs(rng)
        second = _attrs(rng, Obj(**first))
        objs = [first, second]
    else:  # count
        n = rng.randint(2, 4)
        a = _attrs(rng)
        a["size"] = rng.choice(["small", "medium"])
        objs = [dict(a) for _ in range(n)]
        mention = {"size": False, "texture": False}
    centres = _place(rng, [SIZES[o["size"]] for o in objs])
    if centres is None:
        return None
    motions = [None] * len(objs)
    if kind.startswith("motion"):
        motions = [rng.choice(list(MOTIONS)) for _ in objs]
    objects = tuple(Obj(**o, x=x, y=y, motion=m) for o, (x, y), m in zip(objs, centres, motions, strict=True))
    if kind.startswith("motion") and not _apart_over_clip(objects):
        return None
    relation = None
    if kind == "relation":  # unambiguous: the offset along the relation beats the other axis by a clear margin
        holding = [r for r in RELATIONS if _relation_holds(objects[0], objects[1], r, dominance=0.05)]
        if not holding:
            return None
        relation = rng.choice(holding)
    return Scene(objects, kind, relation=relation, count=len(objects) if kind == "count" else 1, mention=mention)


def position_at(obj: Obj, t: float, travel: float = 0.25) -> tuple[float, float]:
    """Centre of `obj` at clip time t ∈ [0, 1]: it travels `travel` of the canvas over the clip, clamped inside."""
    if obj.motion is None:
        return obj.x, obj.y
    dx, dy = MOTIONS[obj.motion]
    start_x, start_y = obj.x - dx * travel / 2, obj.y - dy * travel / 2
    r = obj.radius
    x = min(max(start_x + dx * travel * t, r), 1 - r)
    y = min(max(start_y + dy * travel * t, r), 1 - r)
    return x, y
