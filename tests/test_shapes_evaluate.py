"""The shapes evaluator: exact on ground-truth renders, low on mismatched captions, robust to blur and noise.

Run with `-s` to see the per-category accuracies.
"""

import dataclasses
import itertools
import random
import time

import numpy as np
import pytest
from scipy import ndimage

from unbottle.shapes import (
    COLORS,
    SHAPES,
    SIZES,
    TEXTURES,
    Obj,
    Scene,
    caption,
    parse_caption,
    render_image,
    render_video,
    sample_scene,
    spec_of,
)
from unbottle.shapes.evaluate import FACT_TYPES, Detection, Report, category, detect, detect_video, evaluate, score
from unbottle.shapes.world import BACKGROUND, KINDS, VIDEO_KINDS

SIDE, FRAMES = 128, 17


@pytest.fixture(scope="module")
def stills() -> list[tuple[Scene, np.ndarray, str]]:
    """300 ground-truth scenes, 60 of each still kind, rendered at 128 px, with their captions."""
    rng = random.Random(2024)
    scenes = [sample_scene(rng, KINDS[i % len(KINDS)]) for i in range(300)]
    return [(s, render_image(s, SIDE), caption(s, rng)) for s in scenes]


@pytest.fixture(scope="module")
def videos() -> list[tuple[Scene, np.ndarray, str]]:
    rng = random.Random(77)
    scenes = [sample_scene(rng, VIDEO_KINDS[i % 2]) for i in range(100)]
    return [(s, render_video(s, SIDE, FRAMES), caption(s, rng)) for s in scenes]


def _show(title: str, report: Report) -> None:
    print(f"\n{title}\n{report.table()}")


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma 0.7 px) + Gaussian noise (std 6/255), quantised back to uint8 (no JPEG)."""
    x = ndimage.gaussian_filter(img.astype(np.float64) / 255, sigma=(0.7, 0.7, 0))
    x = x + rng.normal(0.0, 6 / 255, x.shape)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def test_detect_reads_every_prototype():
    """Each shape × size × texture, alone at an off-grid spot, is read back exactly, centroid within a pixel."""
    for i, (shape, size, texture) in enumerate(itertools.product(SHAPES, SIZES, TEXTURES)):
        color = list(COLORS)[i % len(COLORS)]
        obj = Obj(color, shape, size, texture, x=0.43 + 0.003 * i, y=0.56 - 0.002 * i)
        dets = detect(render_image(Scene((obj,), "single"), SIDE))
        assert len(dets) == 1, (obj, dets)
        d = dets[0]
        assert isinstance(d, Detection)
        assert (d.color, d.shape, d.size, d.texture) == (color, shape, size, texture), (obj, d)
        assert abs(d.x - obj.x) < 1 / SIDE and abs(d.y - obj.y) < 1 / SIDE
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.color = "red"


def test_ground_truth_images_score_high(stills):
    report = evaluate((img, cap) for _, img, cap in stills)
    _show(f"ground truth, {len(stills)} images at {SIDE} px", report)
    assert report.n == 300
    assert report.accuracy >= 0.98
    assert set(report.per_category) == {"single", "attribute", "color_binding", "spatial", "count"}
    assert all(acc >= 0.95 for acc in report.per_fact.values()), report.per_fact
    assert set(report.per_fact) == set(FACT_TYPES) - {"motion"}
    d = report.to_dict()
    assert d["accuracy"] == report.accuracy and d["per_category"] == report.per_category


def test_ground_truth_videos_move(videos):
    report = evaluate((v, cap) for _, v, cap in videos)
    _show(f"ground truth, {len(videos)} videos of {FRAMES} frames", report)
    assert report.per_fact["motion"] >= 0.98
    assert report.accuracy >= 0.95
    assert set(report.per_category) == {"motion"}


def test_motion_needs_the_right_movement(videos):
    _, video, cap = next(v for v in videos if v[0].kind == "motion")
    assert score(video, cap)["motion0"]
    assert not score(video[::-1], cap)["motion0"]  # played backwards
    assert not score(np.stack([video[FRAMES // 2]] * FRAMES), cap)["motion0"]  # standing still
    assert not score(video[FRAMES // 2], cap)["motion0"]  # a still image cannot show motion
    still = score(video[FRAMES // 2], cap)
    assert still["object0"] and still["color0"]
    assert len(detect_video(video)) == FRAMES


def test_shuffled_captions_score_low(stills):
    shuffled = [(img, stills[(i + 1) % len(stills)][2]) for i, (_, img, _) in enumerate(stills)]
    report = evaluate(shuffled)
    _show("shuffled captions (each image with the next scene's caption)", report)
    assert report.accuracy <= 0.15


def test_swapped_colours_break_colour_binding():
    rng = random.Random(5)
    checked = 0
    while checked < 40:
        scene = sample_scene(rng, rng.choice(["pair", "relation"]))
        a, b = scene.objects
        if a.color == b.color or a.shape == b.shape:
            continue
        img = render_image(scene, SIDE)
        swapped = dataclasses.replace(
            scene, objects=(dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color))
        )
        facts = score(img, caption(swapped))
        assert facts["object0"] and facts["object1"]
        assert not facts["color0"] and not facts["color1"], caption(swapped)
        assert all(score(img, caption(scene)).values())
        checked += 1


def test_assignment_is_one_to_one():
    img = render_image(Scene((Obj("red", "circle", x=0.25, y=0.4), Obj("blue", "star", x=0.72, y=0.6)), "pair"), SIDE)
    facts = score(img, "a red circle and a red circle")
    assert facts["color0"] != facts["color1"] and facts["object0"] != facts["object1"]
    assert score(img, "a red circle to the left of a blue star")["relation"]
    assert not score(img, "a red circle above a blue star")["relation"]  # higher, but x dominates
    assert not score(img, "a red circle to the right of a blue star")["relation"]
    assert not score(img, "a blue circle to the left of a red star")["relation"]  # the relation binds colours too
    facts = score(img, "a large red circle and a dotted blue star")
    assert facts["color0"] and not facts["size0"] and facts["color1"] and not facts["texture1"]


def test_counts_are_exact():
    objs = tuple(Obj("green", "triangle", "small", x=x, y=0.5) for x in (0.2, 0.5, 0.8))
    img = render_image(Scene(objs, "count", count=3), SIDE)
    assert score(img, "three green triangles") == {"object0": True, "color0": True, "count": True}
    assert not score(img, "two green triangles")["count"]
    assert not score(img, "four green triangles")["count"]
    assert not score(img, "three blue triangles")["count"]


def test_blank_image_scores_zero(stills):
    blank = np.full((SIDE, SIDE, 3), BACKGROUND, dtype=np.uint8)
    assert detect(blank) == []
    report = evaluate((blank, cap) for _, _, cap in stills[:50])
    assert report.accuracy == 0.0
    assert all(acc == 0.0 for acc in report.per_fact.values())
    assert not any(score(np.zeros((SIDE, SIDE, 3)), "a red circle").values())  # black: no colour either


def test_degraded_images_still_score_high(stills):
    rng = np.random.default_rng(0)
    report = evaluate((_degrade(img, rng), cap) for _, img, cap in stills)
    _show("degraded ground truth (blur 0.7 px + noise 6/255, uint8)", report)
    assert report.accuracy >= 0.90


def test_inputs_and_categories(stills):
    scene, img, cap = stills[3]
    assert score(img.astype(np.float32) / 255, cap) == score(img, cap)  # float in [0, 1]
    assert score(img, spec_of(scene)) == score(img, cap)  # spec or text
    assert score(np.moveaxis(img, -1, 0), cap) == score(img, cap)  # channels first
    assert category(cap) == parse_caption(cap).category
    assert category("two red circles") == "count" and category("a red circle above a blue star") == "spatial"
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        score(img, "a photo of a cat")
    with pytest.raises(ValueError):
        detect(np.zeros((SIDE, SIDE)))
    table = evaluate([(img, cap)]).table()
    assert table.startswith("| group") and "overall" in table


def test_fast_enough(stills):
    images = [img for _, img, _ in stills[:100]]
    captions = [cap for _, _, cap in stills[:100]]
    score(images[0], captions[0])  # prototypes are built once per resolution
    start = time.perf_counter()
    for img, cap in zip(images, captions, strict=True):
        score(img, cap)
    ms = (time.perf_counter() - start) / len(images) * 1000
    print(f"\nscore: {ms:.2f} ms per {SIDE} px image")
    assert ms < 5
