"""The rewards API: registry and its errors, offline-safe loaders (missing files name the path and the file expected),
the "NAME[:WEIGHT],..." parser, category-aware weights, and the differentiable preprocessing against PIL."""

import random

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import unbottle
from unbottle.rewards import (
    CORRELATIONS,
    REWARDS,
    ImagePreprocess,
    Reward,
    category_rewards,
    load_reward,
    parse_rewards,
    preprocess,
    register_reward,
)
from unbottle.shapes import render_image, sample_scene

NAMES = ("shapes-clip", "clip", "hps", "pickscore", "imagereward", "aesthetic")


# ------------------------------------------------------------------------------------------------ registry
def test_public_names():
    assert unbottle.load_reward is load_reward and unbottle.category_rewards is category_rewards
    assert unbottle.rewards.DEFAULT == "shapes-clip"
    assert set(NAMES) <= set(REWARDS)


def test_unknown_reward_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown reward 'blip-vqa'") as info:
        load_reward("blip-vqa")
    for name in NAMES:
        assert name in str(info.value)


class _Constant(Reward):
    name = "constant"

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))

    def forward(self, images, prompts):
        pixels = self.pixels(images)
        self.prompt_list(prompts, pixels.shape[0])
        return pixels.mean((1, 2, 3)) * self.value

    def unit(self, scores):
        return scores


def test_register_reward_and_load_it(monkeypatch):
    monkeypatch.setattr(unbottle.rewards.registry, "REWARDS", dict(REWARDS))
    seen = {}

    def loader(path=None, device=None, dtype=None, value=2.0):
        seen.update(path=path, device=device, dtype=dtype)
        return _Constant(value)

    register_reward("Mine", loader)
    reward = load_reward("mine", path="x", value=3.0)
    assert isinstance(reward, _Constant) and reward.name == "mine" and seen["path"] == "x"
    assert not reward.value.requires_grad and not reward.training  # frozen by load_reward
    assert parse_rewards("mine:2,hps") == {"mine": 2.0, "hps": 1.0}
    with pytest.raises(ValueError, match="already registered"):
        register_reward("mine", loader)
    register_reward("mine", lambda **kw: "not a reward", replace=True)
    with pytest.raises(TypeError, match="not a unbottle Reward"):
        load_reward("mine")
    with pytest.raises(ValueError, match="without ',' or ':'"):
        register_reward("a:b", loader)


# ------------------------------------------------------------------------------------------------- parse_rewards
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("clip:2,hps", {"clip": 2.0, "hps": 1.0}),
        (" HPS : 5 , imagereward:0.5 ", {"hps": 5.0, "imagereward": 0.5}),
        ("shapes-clip", {"shapes-clip": 1.0}),
        ("pickscore:1e-2", {"pickscore": 0.01}),
    ],
)
def test_parse_rewards(spec, expected):
    assert parse_rewards(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("clip:x,hps", r"'clip:x'.*'x' is not a number"),
        ("clip:2,,hps", r"bad reward item ''"),
        ("clip:-1", r"'clip:-1'.*> 0"),
        ("clip:inf", r"'clip:inf'.*finite"),
        ("hps,clip:2,hps:3", r"'hps:3'.*given twice"),
        ("clip,vqascore:2", r"'vqascore:2'.*unknown reward 'vqascore'.*shapes-clip"),
        (":2", r"bad reward item ':2'"),
        ("", r"NAME\[:WEIGHT\]"),
    ],
)
def test_parse_rewards_names_the_bad_item(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_rewards(spec)


# ------------------------------------------------------------------------------------------ category_rewards
def test_category_weights_follow_the_correlation_table():
    # texture: every reward reaches r >= 0.3; weights ∝ r, summing to 4
    row = CORRELATIONS["texture"]
    weights = category_rewards("texture")
    assert set(weights) == set(row)
    total = sum(row.values())
    for name, r in row.items():
        assert weights[name] == pytest.approx(4 * r / total, abs=1e-4)
    assert max(weights, key=weights.get) == "imagereward"
    # colour: only ImageReward correlates moderately (HPS .24, CLIP .275, PickScore .227 are below the floor)
    assert category_rewards("color") == {"imagereward": 1.0}
    # non-spatial: CLIP correlates best there
    assert max(category_rewards("non_spatial").items(), key=lambda kv: kv[1])[0] == "clip"
    # numeracy: CLIP (.21) is dropped, PickScore (.376) kept
    assert set(category_rewards("numeracy")) == {"hps", "imagereward", "pickscore"}
    # a lower floor keeps more rewards
    assert set(category_rewards("color", floor=0.2)) == set(row)


@pytest.mark.parametrize("category", list(CORRELATIONS))
def test_category_weights_are_registered_rewards_with_mean_one(category):
    weights = category_rewards(category)
    assert weights and set(weights) <= set(REWARDS)
    assert sum(weights.values()) == pytest.approx(len(weights), abs=1e-3)
    assert all(w > 0 for w in weights.values())


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("2d_spatial", "spatial"),
        ("2D-spatial", "spatial"),
        ("count", "numeracy"),
        ("non-spatial", "non_spatial"),
        ("3D spatial", "3d_spatial"),
        ("COLOR", "color"),
        # the shapes evaluator's categories
        ("color_binding", "color"),
        ("single", "shape"),
        ("attribute", "texture"),
        ("motion", "non_spatial"),
        ("spatial", "spatial"),
    ],
)
def test_category_aliases(alias, canonical):
    assert category_rewards(alias) == category_rewards(canonical)


def test_unknown_category_lists_the_categories():
    with pytest.raises(ValueError, match="unknown category 'style'") as info:
        category_rewards("style")
    for name in (*CORRELATIONS, "2d_spatial", "count", "color_binding", "motion"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="floor"):
        category_rewards("color", floor=1.5)


# ------------------------------------------------------------------------------- offline loaders, missing files
def test_missing_local_files_name_the_path_and_the_file_expected(tmp_path):
    missing = str(tmp_path / "nowhere" / "weights.pt")
    expected = {
        "hps": "HPS_v2.1_compressed.pt",
        "aesthetic": "sac\\+logos\\+ava1-l14-linearMSE.pth",
        "shapes-clip": "shapes_clip.safetensors",
        "clip": "open_clip checkpoint",
    }
    for name, what in expected.items():
        with pytest.raises(FileNotFoundError, match=f"{name}: no such file '{missing}'.*{what}"):
            load_reward(name, path=missing)
    with pytest.raises(FileNotFoundError, match=f"no such folder '{missing}'.*PickScore"):
        load_reward("pickscore", path=missing)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("hps", r"HPS_v2\.1_compressed\.pt .*huggingface\.co/xswu/HPSv2.*path='hf-hub:xswu/HPSv2'"),
        ("clip", r"ViT-H-14 / laion2B-s32B-b79K .*path='hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K'"),
        ("pickscore", r"yuvalkirstain/PickScore_v1.*path='hf-hub:yuvalkirstain/PickScore_v1'"),
        ("aesthetic", r"improved-aesthetic-predictor"),
    ],
)
def test_no_path_and_empty_cache_never_downloads(name, hint, tmp_path):
    # with path=None only the local hub cache is read (here: an empty one); the error says how to get the file
    with pytest.raises(FileNotFoundError, match=hint):
        load_reward(name, cache_dir=str(tmp_path))


def test_default_weights_are_found_in_the_hub_cache(tmp_path, monkeypatch):
    from unbottle.rewards import weights

    seen = {}

    def fake_cache(repo, filename, cache_dir=None):
        seen[repo] = filename
        return None

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", fake_cache)
    with pytest.raises(FileNotFoundError):
        weights.resolve_file(None, weights.WeightsFile("hps", "HPS_v2.1_compressed.pt", "xswu/HPSv2"))
    assert seen == {"xswu/HPSv2": "HPS_v2.1_compressed.pt"}
    file = tmp_path / "HPS_v2.1_compressed.pt"
    file.write_bytes(b"x")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, filename, cache_dir=None: str(file))
    assert weights.resolve_file(None, weights.WeightsFile("hps", "HPS_v2.1_compressed.pt", "xswu/HPSv2")) == str(file)


def test_hub_ids_are_parsed():
    from unbottle.rewards.weights import split_hub_id

    assert split_hub_id("hf-hub:xswu/HPSv2") == ("xswu/HPSv2", None)
    assert split_hub_id("hf-hub:xswu/HPSv2/HPS_v2.1_compressed.pt") == ("xswu/HPSv2", "HPS_v2.1_compressed.pt")
    with pytest.raises(ValueError, match="hf-hub:owner/name"):
        split_hub_id("hf-hub:xswu")


# --------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("shape, size", [((224, 224), 224), ((300, 256), 224), ((120, 200), 64), ((50, 40), 96)])
def test_preprocess_matches_the_pil_transform(shape, size):
    rng = random.Random(0)
    h, w = shape
    images = np.stack([render_image(sample_scene(rng), max(h, w))[:h, :w] for _ in range(2)])
    reference = open_clip.image_transform(size, is_train=False)  # PIL bicubic Resize, CenterCrop, Normalize
    expected = torch.stack([reference(Image.fromarray(np.ascontiguousarray(im))) for im in images])
    got = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size)
    assert got.shape == expected.shape == (2, 3, size, size)
    diff = (got - expected).abs()
    # normalized units (one grey level ≈ 0.015); upsampling (the last case) differs more at hard edges
    assert diff.mean() < 0.005 and diff.max() < 0.1, (diff.mean(), diff.max())
    if shape == (size, size):
        assert diff.max() < 1e-5  # no resize: only the normalization


def test_preprocess_shortest_edge_then_crop():
    images = torch.rand(1, 3, 300, 400)
    out = ImagePreprocess(size=224, shortest_edge=256)(images)
    assert out.shape == (1, 3, 224, 224)
    resized = torch.nn.functional.interpolate(images, size=(256, 341), mode="bicubic", antialias=True).clamp(0, 1)
    crop = resized[..., 16:240, 58:282]
    mean = torch.tensor(ImagePreprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(ImagePreprocess.std).view(1, 3, 1, 1)
    assert torch.allclose(out, (crop - mean) / std, atol=1e-6)


def test_image_preprocess_validates_its_fields():
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocess(interpolation="lanczos")
    with pytest.raises(ValueError, match="resize_mode"):
        ImagePreprocess(resize_mode="longest")
    with pytest.raises(ValueError, match="std"):
        ImagePreprocess(std=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shortest_edge"):
        ImagePreprocess(size=224, shortest_edge=200)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        preprocess(torch.rand(2, 4, 8, 8))
