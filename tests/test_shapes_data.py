"""The shapes world: seeded scenes, captions that parse back to their facts, and renders that show those facts."""

import random

import numpy as np
import pytest

from unbottle.shapes import (
    COLORS,
    SHAPES,
    SIZES,
    TEXTURES,
    Scene,
    caption,
    parse_caption,
    render_image,
    render_video,
    sample_scene,
    spec_of,
)
from unbottle.shapes.world import BACKGROUND, DARK_SHADE, KINDS, MOTIONS, RELATIONS, VIDEO_KINDS

ALL_KINDS = KINDS + VIDEO_KINDS


def _scenes(seed: int, n: int, kinds=ALL_KINDS) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, kinds[i % len(kinds)]) for i in range(n)]


def _stream(seed: int, n: int) -> tuple[list[Scene], list[str], list[np.ndarray]]:
    """Scenes (random kind), captions and 64 px renders drawn from one seeded generator, as a data loader would."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, video=i % 4 == 3) for i in range(n)]
    captions = [caption(s, rng) for s in scenes]
    return scenes, captions, [render_image(s, 64) for s in scenes]


def test_same_seed_same_data_different_seed_different():
    scenes, captions, images = _stream(7, 40)
    scenes2, captions2, images2 = _stream(7, 40)
    assert scenes == scenes2
    assert captions == captions2
    assert all(np.array_equal(a, b) for a, b in zip(images, images2, strict=True))
    other, other_captions, other_images = _stream(8, 40)
    assert other != scenes
    assert other_captions != captions
    assert not all(np.array_equal(a, b) for a, b in zip(images, other_images, strict=True))
    # a scene renders to the same pixels every time
    assert np.array_equal(render_video(scenes[3], 32, 5), render_video(scenes2[3], 32, 5))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_caption_parse_round_trip(kind):
    rng = random.Random(100 + ALL_KINDS.index(kind))
    for _ in range(500):
        scene = sample_scene(rng, kind)
        text = caption(scene, rng)
        spec = parse_caption(text)
        assert spec == spec_of(scene), text
        assert parse_caption(text.upper() + ".") == spec  # case and a final full stop don't matter
        assert parse_caption(f"  {text}  ") == spec


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_mention_word_spans_cover_each_mention(kind):
    """Each span's words parse back as that mention alone; spans are ordered, disjoint, inside the caption."""
    from unbottle.shapes.captions import CaptionSpec, mention_word_spans

    rng = random.Random(300 + ALL_KINDS.index(kind))
    for _ in range(200):
        text = caption(sample_scene(rng, kind), rng)
        words, spec, spans = text.split(" "), parse_caption(text), mention_word_spans(text)
        assert len(spans) == len(spec.mentions), text
        assert all(0 <= a < b <= len(words) for a, b in spans) and all(
            spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)
        ), text
        if spec.count is not None:
            assert spans == ((0, len(words)),)
            continue
        for (a, b), mention in zip(spans, spec.mentions, strict=True):
            assert parse_caption(" ".join(words[a:b])) == CaptionSpec((mention,)), text
            assert words[a] in ("a", "an")  # the article belongs to its phrase
    assert mention_word_spans("An orange square to the right of a large blue star.") == ((0, 3), (7, 11))
    assert mention_word_spans("a red circle, and a blue square") == ((0, 3), (4, 7))
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        mention_word_spans("a red circle inside a blue square")


def test_caption_examples():
    spec = parse_caption("a large striped red circle to the left of a blue star")
    assert spec.relation == "left of"
    assert spec.mentions[0].size == "large" and spec.mentions[0].texture == "striped"
    assert spec.mentions[1].color == "blue" and spec.mentions[1].shape == "star"
    assert spec.category == "spatial"
    assert parse_caption("three green crosses").count == 3
    assert parse_caption("three green crosses").mentions[0].shape == "cross"
    assert parse_caption("a red circle moving left").mentions[0].motion == "left"
    assert parse_caption("a red circle and a dotted blue star").category == "color_binding"
    assert parse_caption("a dotted orange diamond").category == "attribute"
    assert parse_caption("an orange diamond").category == "single"


@pytest.mark.parametrize(
    "text",
    ["", "hello world", "a red elephant", "a crimson circle", "a red circle near a blue star", "two red",
     "a red circle and a blue star and a green square", "a red circle moving sideways"],
)  # fmt: skip
def test_parse_errors_name_the_caption(text):
    with pytest.raises(ValueError) as err:
        parse_caption(text)
    assert repr(text) in str(err.value)


def test_vocabulary_is_covered():
    scenes = _scenes(3, 400)
    objects = [o for s in scenes for o in s.objects]
    assert {o.color for o in objects} == set(COLORS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.texture for o in objects} == set(TEXTURES)
    assert {o.size for o in objects} == set(SIZES)
    assert {s.relation for s in scenes if s.kind == "relation"} == set(RELATIONS)
    assert {o.motion for s in scenes if s.kind.startswith("motion") for o in s.objects} == set(MOTIONS)
    assert {s.count for s in scenes if s.kind == "count"} == {2, 3, 4}
    assert {s.kind for s in scenes} == set(ALL_KINDS)
    # and the captions name them: every attribute word occurs in some caption
    words = set(" ".join(caption(s) for s in scenes).split())
    assert set(COLORS) | set(TEXTURES) | {"small", "large", "above", "below", "left", "right", "up", "down"} <= words


def test_scene_geometry():
    for scene in _scenes(4, 600):
        objs = scene.objects
        for o in objs:
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
        for i, a in enumerate(objs):  # no overlap (at mid-clip for videos)
            for b in objs[i + 1 :]:
                assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius
        if scene.kind == "relation":
            a, b = objs
            dx, dy = a.x - b.x, a.y - b.y  # image coordinates: y grows downwards
            along, across = (dx, dy) if scene.relation in ("left of", "right of") else (dy, dx)
            sign = -1 if scene.relation in ("left of", "above") else 1
            assert sign * along > 0.08 and abs(along) > abs(across), (scene.relation, dx, dy)
        if scene.kind == "count":
            assert len(objs) == scene.count and len({(o.color, o.shape, o.size, o.texture) for o in objs}) == 1
        if scene.kind in ("pair", "relation", "motion_pair"):
            assert (objs[0].color, objs[0].shape) != (objs[1].color, objs[1].shape)


def _shade_of(pixel: np.ndarray, color) -> tuple[float, float]:
    """Least-squares λ with pixel ≈ λ·colour, and the largest channel error of that fit."""
    c = np.asarray(color, dtype=np.float64)
    lam = float(pixel @ c / (c @ c))
    return lam, float(np.abs(pixel - lam * c).max())


def test_render_image_shows_the_objects():
    for scene in _scenes(5, 200, KINDS):
        img = render_image(scene, 128)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert tuple(img[0, 0]) == BACKGROUND and tuple(img[-1, -1]) == BACKGROUND
        for o in scene.objects:
            pixel = img[int(o.y * 128), int(o.x * 128)].astype(np.float64)
            lam, err = _shade_of(pixel, COLORS[o.color])
            assert err <= 3 and DARK_SHADE - 0.02 <= lam <= 1.01, (o, pixel)
            if o.texture == "solid":
                assert lam > 0.98
    assert render_image(_scenes(5, 1)[0], 96).shape == (96, 96, 3)


def test_textures_are_drawn():
    """Solid objects have no dark marks; striped and dotted ones have many, in the dark shade of their colour."""
    for scene in _scenes(6, 150, ("single",)):
        o = scene.objects[0]
        img = render_image(scene, 128).astype(np.float64)
        c = np.asarray(COLORS[o.color], dtype=np.float64)
        dark = np.abs(img - DARK_SHADE * c).max(-1) <= 3
        full = np.abs(img - c).max(-1) <= 3
        if o.texture == "solid":
            assert dark.sum() == 0 and full.sum() > 50
        else:
            assert dark.sum() > 0.1 * full.sum(), o


def test_video_frames_move_in_the_stated_direction():
    for scene in _scenes(9, 60, VIDEO_KINDS):
        video = render_video(scene, 64, 17)
        assert video.shape == (17, 64, 64, 3) and video.dtype == np.uint8
        assert not np.array_equal(video[0], video[-1])
        # objects clamped at the border stop early (≥ 0.155 of the 0.25 travel is left), the others move every frame
        assert sum(not np.array_equal(video[t], video[t + 1]) for t in range(16)) >= 8
        for o in scene.objects:  # each object alone: its centroid moves the stated way
            alone = render_video(Scene((o,), "motion"), 64, 17)
            fg = (alone != np.array(BACKGROUND, dtype=np.uint8)).any(-1)
            ys, xs = np.indices(fg.shape[1:])
            (x0, y0), (x1, y1) = ((xs[fg[t]].mean() / 64, ys[fg[t]].mean() / 64) for t in (0, -1))
            dx, dy = MOTIONS[o.motion]
            travel = dx * (x1 - x0) + dy * (y1 - y0)
            assert travel > 0.12, (o, travel)  # 0.25 per clip, less where clamped at the border
            assert abs(dy * (x1 - x0) + dx * (y1 - y0)) < 0.02  # nothing sideways
