"""shapes-clip: the open_clip config registers and builds, weights round-trip, preprocessing is differentiable and
matches open_clip's PIL transform, text pooling reads the end token, and the training script runs and saves."""

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from unbottle.shapes import caption, render_image, sample_scene
from unbottle.shapes.clip import (
    CLIP_CONFIG,
    MODEL_NAME,
    ShapesTokenizer,
    build_shapes_clip,
    load_shapes_clip,
    preprocess,
    register_shapes_clip,
    save_shapes_clip,
)

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "train_clip.py"


def _scene_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = random.Random(seed)
    return np.stack([render_image(sample_scene(rng), size) for _ in range(n)])


def _script():
    spec = importlib.util.spec_from_file_location("train_clip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_shipped_weights_are_a_clear_error(monkeypatch, tmp_path):
    import unbottle.shapes.clip as clip_module

    monkeypatch.setattr(clip_module, "SHIPPED_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="shipped shapes CLIP weights are missing.*pretrained=False"):
        load_shapes_clip()


def test_shipped_weights_load_in_fp32_frozen():
    model, _, _ = load_shapes_clip()
    params = list(model.parameters())
    assert params and all(p.dtype == torch.float32 and not p.requires_grad for p in params) and not model.training


def test_config_registers_and_builds_within_budget():
    assert register_shapes_clip() == MODEL_NAME == "shapes-clip"
    assert register_shapes_clip() == MODEL_NAME  # idempotent
    assert MODEL_NAME in open_clip.list_models()
    assert open_clip.get_model_config(MODEL_NAME) == CLIP_CONFIG
    model = open_clip.create_model("shapes-clip")
    assert isinstance(model, open_clip.CLIP)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 2 <= 8 * 2**20, f"{n_params * 2 / 2**20:.2f} MiB in fp16"
    tokenizer = ShapesTokenizer()
    text_cfg = CLIP_CONFIG["text_cfg"]
    assert text_cfg["vocab_size"] == tokenizer.vocab_size == model.vocab_size
    assert text_cfg["context_length"] == tokenizer.context_length == model.context_length
    assert (model.text_pool_type, model.text_eos_id) == ("eos", tokenizer.eos_id)
    with torch.no_grad():
        image_f, text_f, scale = model(torch.zeros(2, 3, 128, 128), tokenizer(["a red circle", "two blue stars"]))
    assert image_f.shape == text_f.shape == (2, CLIP_CONFIG["embed_dim"])


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = build_shapes_clip().eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    path = save_shapes_clip(model, tmp_path / "shapes_clip.safetensors")
    assert path.stat().st_size <= 8 * 2**20
    # what the fp16 file holds, frozen like the loaded model (a frozen nn.MultiheadAttention with a mask takes
    # another kernel path under no_grad than a trainable one: the same weights then differ by ~1e-7 in the text tower)
    reference = model.half().float().requires_grad_(False)
    loaded, preprocess_fn, tokenize = load_shapes_clip(path)
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    pixels = torch.from_numpy(_scene_images(3, 128)).permute(0, 3, 1, 2).float() / 255
    tokens = tokenize(["a red circle", "a small striped blue star and a green cross", "three pink diamonds"])
    with torch.no_grad():
        expected = reference(preprocess(pixels), tokens)
        got = loaded(preprocess_fn(pixels), tokens)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    # an untrained model is a different one
    other, _, _ = load_shapes_clip(None, pretrained=False)
    assert not torch.equal(other.visual.conv1.weight, loaded.visual.conv1.weight)


@pytest.mark.parametrize("shape", [(128, 128), (256, 256), (200, 160), (96, 96)])
def test_preprocess_matches_open_clip_pil_transform(shape):
    h, w = shape
    images = _scene_images(4, max(h, w), seed=1)[:, :h, :w]  # non-square: a crop of a rendered scene
    reference_transform = open_clip.image_transform(128, is_train=False)  # PIL Resize(bicubic), CenterCrop, Normalize
    reference = torch.stack([reference_transform(Image.fromarray(np.ascontiguousarray(im))) for im in images])
    got = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert got.shape == reference.shape == (4, 3, 128, 128)
    diff = (got - reference).abs()
    # normalized units (1/255 of a pixel ≈ 0.015): torch's antialiased bicubic vs PIL's, plus PIL's uint8 rounding
    # (seen: mean ≤ 0.0002, max ≤ 0.016, i.e. within about one grey level)
    assert diff.mean() < 0.002, diff.mean()
    assert diff.max() < 0.03, diff.max()
    if shape == (128, 128):
        assert diff.max() < 1e-5  # no resize: only the normalization


@pytest.mark.parametrize("size", [128, 160])
def test_preprocess_is_differentiable(size):
    torch.manual_seed(0)
    model, preprocess_fn, tokenize = load_shapes_clip(pretrained=False)  # frozen, as a reward uses it
    tokens = tokenize(["a red circle and a blue square"])
    pixels = (torch.from_numpy(_scene_images(2, size)).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    image_f = model.encode_image(preprocess_fn(pixels), normalize=True)
    reward = (image_f @ model.encode_text(tokens, normalize=True).T).sum()
    reward.backward()
    assert pixels.grad is not None
    assert torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0
    assert (pixels.grad.abs().flatten(1).sum(1) > 0).all()  # every image gets a gradient


def test_tokenizer_ends_where_the_text_tower_pools():
    tokenizer = ShapesTokenizer()
    torch.manual_seed(0)
    model = build_shapes_clip().eval()
    ids = tokenizer(["a red circle", "A small striped blue star to the left of a green cross"])
    assert ids.dtype == torch.long and ids.shape == (2, tokenizer.context_length)
    assert (ids == tokenizer.unk_id).sum() == 0
    end = (ids == tokenizer.eos_id).int().argmax(-1)
    assert end.tolist() == [3, 12]
    assert (ids[0, 4:] == tokenizer.pad_id).all()
    assert (ids.argmax(-1) != end).all()  # why pool_type="eos": open_clip's default argmax would read a word
    with torch.no_grad():
        pooled = model.encode_text(ids)
        # the pooled feature is the end token's hidden state, projected
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        manual = x[torch.arange(2), end] @ model.text_projection
        assert torch.allclose(pooled, manual, atol=1e-5)
        # a word before the end changes it ...
        changed = ids.clone()
        changed[:, 1] = tokenizer(["green"])[0, 0]
        assert (model.encode_text(changed) - pooled).abs().amax(-1).min() > 1e-3
        # ... and anything after the end does not
        padded = ids.clone()
        after = torch.arange(ids.shape[1])[None] > end[:, None]
        padded[after] = tokenizer(["blue"])[0, 0]
        assert torch.allclose(model.encode_text(padded), pooled, atol=1e-6)
    # the shapes captions are all in the vocabulary, each with exactly one end token, and fit the context
    rng = random.Random(3)
    captions = [caption(sample_scene(rng, video=i % 5 == 4), rng) for i in range(500)]
    ids = tokenizer(captions)
    assert (ids == tokenizer.unk_id).sum() == 0
    assert ((ids == tokenizer.eos_id).sum(-1) == 1).all()
    # over-long text is cut, keeping the end token last
    long = tokenizer(["red " * 100])[0]
    assert long[-1] == tokenizer.eos_id and (long[:-1] == tokenizer(["red"])[0, 0]).all()


def test_loss_is_clip_loss_without_repeats_or_negatives():
    from open_clip.loss import ClipLoss

    script = _script()
    torch.manual_seed(0)
    image_f = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    text_f = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    ids = torch.arange(6)[:, None].repeat(1, 4)  # all different
    scale = torch.tensor(10.0)
    expected = ClipLoss()(image_f, text_f, scale)
    assert torch.allclose(script.BindingClipLoss()(image_f, text_f, scale, text_ids=ids), expected)
    # a hard negative only ever adds to the image→text term
    negative = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    has = torch.tensor([True, False, True, False, False, True])
    assert script.BindingClipLoss()(image_f, text_f, scale, ids, negative, has) > expected
    # hard negatives swap the two objects' colours (or shapes when the colours match)
    rng = random.Random(0)
    scene = next(s for s in (sample_scene(rng, "pair") for _ in range(100)) if len({o.color for o in s.objects}) == 2)
    a, b = scene.objects
    text, swapped = caption(scene), script.hard_negative(scene)
    assert swapped != text and swapped.replace(a.color, "@").replace(b.color, a.color).replace("@", b.color) == text
    assert script.hard_negative(sample_scene(rng, "single")) == ""


def test_training_script_runs_saves_and_resumes(tmp_path, monkeypatch):
    script = _script()
    out = tmp_path / "clip"
    argv = ["train_clip.py", "--out", str(out), "--minutes", "1", "--batch", "4", "--workers", "0"]
    argv += ["--eval-size", "12"]
    monkeypatch.setattr(sys, "argv", [*argv, "--max-steps", "2"])
    script.main()
    record = json.loads((out / "clip_training.json").read_text())
    assert record["step"] == 2 and np.isfinite(record["loss"])
    assert 0 <= record["heldout_top1"] <= 1 and record["heldout_n"] == 12
    assert record["fp16_bytes"] <= 8 * 2**20
    model, _, _ = load_shapes_clip(out / "shapes_clip.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (out / "checkpoint.pt").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "--max-steps", "3", "--resume"])
    script.main()
    assert json.loads((out / "clip_training.json").read_text())["step"] == 3
    assert "resumed at step 2" in (out / "train.log").read_text()
