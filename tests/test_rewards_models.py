"""Each reward on tiny offline models (shapes-clip on its shipped weights): scores match the model's own
non-differentiable path (PIL resize + open_clip / transformers / torchvision preprocessing), gradients reach the
pixels, batches equal singles, a single prompt broadcasts, parameters stay frozen, text features are cached."""

import json
import random
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T

import unbottle
from unbottle.rewards import (
    AestheticHead,
    ImageRewardReward,
    MissingDependencyError,
    Reward,
    ShapesClipReward,
    imagereward_score,
    load_reward,
)
from unbottle.rewards.imagereward import MEAN, STD
from unbottle.shapes import caption, render_image, sample_scene
from unbottle.testing.tokenizers import tiny_clip_tokenizer

TINY = "unbottle-test-tiny-clip"  # a tiny open_clip architecture, registered below
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _register_tiny() -> None:
    if open_clip.get_model_config(TINY) == TINY_CONFIG:
        return
    with tempfile.TemporaryDirectory() as tmp:  # open_clip keeps what it read after the file is gone
        path = Path(tmp) / f"{TINY}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)


def _scenes(n: int, size: int, crop: tuple[int, int], seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """n rendered shapes scenes, cropped to (h, w) (non-square inputs), and their captions."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = [np.ascontiguousarray(render_image(s, size)[: crop[0], : crop[1]]) for s in scenes]
    return images, [caption(s, rng) for s in scenes]


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in [0, 1]


def _pil(images: list[np.ndarray]) -> list[Image.Image]:
    return [Image.fromarray(im) for im in images]


@dataclass
class Case:
    reward: Reward
    reference: Callable[[list[np.ndarray], list[str]], torch.Tensor]  # PIL path, no grad: (B,) raw scores
    tol: float  # |differentiable - reference| bound on the raw score (torch vs PIL resize, ~1 grey level)
    images: list[np.ndarray]
    prompts: list[str]


# ------------------------------------------------------------------------------------------------------ cases
def _shapes_case(tmp: Path) -> Case:
    reward = load_reward("shapes-clip")
    pil_transform = open_clip.image_transform(128, is_train=False)

    def reference(images, prompts):
        pixels = torch.stack([pil_transform(im) for im in _pil(images)])
        image_f = reward.model.encode_image(pixels, normalize=True)
        text_f = reward.model.encode_text(reward.tokenizer(prompts), normalize=True)
        return (image_f * text_f).sum(-1)

    images, prompts = _scenes(3, 160, (160, 144))
    return Case(reward, reference, 0.002, images, prompts)


def _tiny_open_clip(seed: int) -> torch.nn.Module:
    _register_tiny()
    torch.manual_seed(seed)
    return open_clip.create_model(TINY).eval()


def _open_clip_reference(model: torch.nn.Module, scale: float):
    pil_transform = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer(TINY)

    def reference(images, prompts):
        pixels = torch.stack([pil_transform(im) for im in _pil(images)])
        image_f = model.encode_image(pixels, normalize=True)
        return scale * (image_f * model.encode_text(tokenizer(prompts), normalize=True)).sum(-1)

    return reference


def _clip_case(tmp: Path) -> Case:
    model = _tiny_open_clip(1)
    file = tmp / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    reward = load_reward("clip", path=str(file), model_name=TINY)
    images, prompts = _scenes(3, 96, (80, 70), seed=1)
    return Case(reward, _open_clip_reference(model, 100.0), 0.05, images, prompts)


def _hps_case(tmp: Path) -> Case:
    model = _tiny_open_clip(2)
    file = tmp / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, file)  # as trained (DDP)
    reward = load_reward("hps", path=str(file), model_name=TINY)
    images, prompts = _scenes(3, 96, (70, 90), seed=2)
    return Case(reward, _open_clip_reference(model, 1.0), 0.0005, images, prompts)


def _tiny_transformers_clip(seed: int):
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=32,
    )  # fmt: skip
    return CLIPModel(config).eval(), tokenizer


def _pickscore_case(tmp: Path) -> Case:
    from transformers import CLIPImageProcessor, CLIPProcessor

    model, tokenizer = _tiny_transformers_clip(3)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(tmp / "pickscore")
    processor.save_pretrained(tmp / "pickscore")
    reward = load_reward("pickscore", path=str(tmp / "pickscore"))

    def reference(images, prompts):
        inputs = processor(images=_pil(images), text=prompts, padding=True, return_tensors="pt")
        image_f = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_f = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        cos = torch.nn.functional.cosine_similarity(image_f, text_f.pooler_output, dim=-1)
        return model.logit_scale.exp() * cos

    images, prompts = _scenes(3, 96, (90, 64), seed=3)
    return Case(reward, reference, 0.005, images, prompts)


def _aesthetic_case(tmp: Path) -> Case:
    model = _tiny_open_clip(4)
    clip_file = tmp / "tiny_clip_aesthetic.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(clip_file))
    torch.manual_seed(5)
    head = AestheticHead(TINY_CONFIG["embed_dim"]).eval()
    for layer in head.layers[::2]:  # a head whose rating varies across images (default init: nearly constant)
        torch.nn.init.normal_(layer.weight, std=3 / layer.in_features**0.5)
    torch.save(head.state_dict(), tmp / "sac+logos+ava1-l14-linearMSE.pth")
    reward = load_reward("aesthetic", path=str(tmp / "sac+logos+ava1-l14-linearMSE.pth"), clip_path=str(clip_file),
                         model_name=TINY)  # fmt: skip
    pil_transform = open_clip.image_transform(32, is_train=False)

    def reference(images, prompts):
        pixels = torch.stack([pil_transform(im) for im in _pil(images)])
        return head(model.encode_image(pixels, normalize=True))

    images, prompts = _scenes(3, 96, (64, 96), seed=4)
    return Case(reward, reference, 0.005, images, prompts)


class _FakeVisual(torch.nn.Module):
    """(B, 3, 224, 224) → (B, 1 + 49, 16) tokens, like BLIP's ViT (class token first)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 16, kernel_size=32, stride=32)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, 49, 16)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


class _FakeTextEncoder(torch.nn.Module):
    """BERT stand-in: token embeddings cross-attending to the image tokens; returns .last_hidden_state."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 16)
        self.cross = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict):
        assert return_dict and encoder_attention_mask.shape == encoder_hidden_states.shape[:2]
        h = self.embed(input_ids) * attention_mask[..., None]  # (B, L, 16)
        out, _ = self.cross(h, encoder_hidden_states, encoder_hidden_states)
        return types.SimpleNamespace(last_hidden_state=h + out)


class FakeImageReward(torch.nn.Module):
    """The attributes of ImageReward.ImageReward.ImageReward that the tensor path reads."""

    def __init__(self, med_config: str | None = None, device: str = "cpu") -> None:
        super().__init__()
        tokenizer = tiny_clip_tokenizer()
        self.blip = torch.nn.Module()
        self.blip.visual_encoder = _FakeVisual()
        self.blip.text_encoder = _FakeTextEncoder(len(tokenizer))
        self.blip.tokenizer = tokenizer
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 1))
        self.mean, self.std = MEAN, STD


def _imagereward_case(tmp: Path) -> Case:
    torch.manual_seed(6)
    model = FakeImageReward().eval()
    for layer in model.mlp:  # rewards spread over about one standard deviation across images
        torch.nn.init.normal_(layer.weight, std=0.5)
    reward = ImageRewardReward(model)
    pil_transform = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])  # fmt: skip  # ImageReward's own _transform(224)

    def reference(images, prompts):
        pixels = torch.stack([pil_transform(im) for im in _pil(images)])
        tokens = model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                                      return_tensors="pt")  # fmt: skip
        embeds = model.blip.visual_encoder(pixels)
        out = model.blip.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask,
                                      encoder_hidden_states=embeds,
                                      encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long),
                                      return_dict=True)  # fmt: skip
        return ((model.mlp(out.last_hidden_state[:, 0, :]) - MEAN) / STD).squeeze(-1)

    images, prompts = _scenes(3, 256, (256, 240), seed=5)
    return Case(reward, reference, 0.005, images, prompts)


BUILDERS = {
    "shapes-clip": _shapes_case,
    "clip": _clip_case,
    "hps": _hps_case,
    "pickscore": _pickscore_case,
    "aesthetic": _aesthetic_case,
    "imagereward": _imagereward_case,
}


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rewards")


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_module) -> Case:
    built = BUILDERS[request.param](tmp_module)
    assert built.reward.name == request.param
    return built


# ------------------------------------------------------------------------------------------------------ tests
TEXT_REWARDS = {"shapes-retrieval"}  # rewards on texts: tests/test_noise_search_text.py


def test_every_registered_reward_has_a_case():
    assert set(BUILDERS) == set(unbottle.rewards.REWARDS) - TEXT_REWARDS
    for name in TEXT_REWARDS:
        assert unbottle.load_reward(name).modality == "text"


def test_scores_match_the_non_differentiable_reference(case):
    with torch.no_grad():
        expected = case.reference(case.images, case.prompts).float()
        got = case.reward(_tensor(case.images), case.prompts)
    assert got.dtype == torch.float32 and got.shape == (len(case.images),)
    assert (got - expected).abs().max() < case.tol, (got, expected)


def test_gradient_reaches_every_image(case):
    pixels = _tensor(case.images).requires_grad_(True)
    case.reward(pixels, case.prompts).sum().backward()
    grad = pixels.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad.abs().flatten(1).sum(1) > 0).all()  # every image gets a gradient
    assert all(p.grad is None for p in case.reward.parameters())  # nothing accumulates in the reward


def test_unit_is_a_gradient_carrying_map_of_the_score(case):
    pixels = _tensor(case.images[:1]).requires_grad_(True)
    loss = 1 - case.reward.unit(case.reward(pixels, case.prompts[:1]))
    loss.sum().backward()
    assert pixels.grad.abs().sum() > 0


def test_batch_of_two_equals_two_singles(case):
    pixels = _tensor(case.images[:2])
    with torch.no_grad():
        batch = case.reward(pixels, case.prompts[:2])
        singles = torch.cat([case.reward(pixels[i : i + 1], case.prompts[i]) for i in range(2)])
    scale = max(1.0, batch.abs().max().item())
    assert torch.allclose(batch, singles, atol=1e-4 * scale), (batch, singles)


def test_single_prompt_broadcasts(case):
    pixels = _tensor(case.images)
    with torch.no_grad():
        broadcast = case.reward(pixels, case.prompts[0])
        listed = case.reward(pixels, [case.prompts[0]] * len(case.images))
    assert torch.allclose(broadcast, listed, atol=1e-5 * max(1.0, listed.abs().max().item()))
    with pytest.raises(ValueError, match="one prompt"):
        case.reward(pixels, case.prompts[:2])


def test_parameters_frozen_and_eval(case):
    params = list(case.reward.parameters())
    assert params and not any(p.requires_grad for p in params)
    case.reward.train()  # a parent calling .train() does not switch a reward to training
    assert not case.reward.training and not any(m.training for m in case.reward.modules())


def test_any_float_dtype_in_float32_out(case):
    pixels = _tensor(case.images[:2])
    with torch.no_grad():
        ref = case.reward(pixels, case.prompts[:2])
        for dtype in (torch.float64, torch.float16):
            got = case.reward(pixels.to(dtype), case.prompts[:2])
            assert got.dtype == torch.float32
            assert (got - ref).abs().max() < case.tol, dtype
    with pytest.raises(ValueError, match="float tensor"):
        case.reward((pixels * 255).to(torch.uint8), case.prompts[:2])


# ------------------------------------------------------------------------------------------- specific rewards
def test_default_reward_is_shapes_clip_offline():
    reward = load_reward(unbottle.rewards.DEFAULT)
    assert unbottle.rewards.DEFAULT == "shapes-clip" and isinstance(reward, ShapesClipReward)


def test_shapes_clip_prefers_the_true_caption():
    reward = load_reward("shapes-clip")
    images, prompts = _scenes(16, 128, (128, 128), seed=10_000)
    shuffled = prompts[1:] + prompts[:1]  # every image gets another scene's caption
    with torch.no_grad():
        true = reward.unit(reward(_tensor(images), prompts))
        other = reward.unit(reward(_tensor(images), shuffled))
    assert ((0 <= true) & (true <= 1)).all() and ((0 <= other) & (other <= 1)).all()
    assert (true > other).float().mean() >= 0.9, (true, other)
    assert (true - other).mean() > 0.25


def test_shapes_clip_gradient_ascent_raises_the_score():
    reward = load_reward("shapes-clip")
    images, prompts = _scenes(1, 128, (128, 128), seed=3)
    pixels = _tensor(images).requires_grad_(True)
    other = "three green hexagons"
    before = reward(pixels, other)
    (grad,) = torch.autograd.grad(before.sum(), pixels)
    after = reward((pixels + 0.02 * grad.sign()).clamp(0, 1), other)
    assert after.item() > before.item() + 0.01


def test_text_features_are_cached_per_prompt(case, monkeypatch):
    reward = case.reward
    reward._text_cache.clear()
    calls: list[list[str]] = []
    original = reward.cached_text

    def counting(prompts, encode):
        def wrapped(new):
            calls.append(list(new))
            return encode(new)

        return original(prompts, wrapped)

    monkeypatch.setattr(reward, "cached_text", counting)
    if isinstance(reward, unbottle.rewards.AestheticReward):
        pytest.skip("the aesthetic predictor reads no text")
    pixels = _tensor(case.images[:2])
    with torch.no_grad():
        reward(pixels, [case.prompts[0], case.prompts[0]])
        reward(pixels, [case.prompts[0], case.prompts[1]])
        reward(pixels, case.prompts[1])
    assert calls == [[case.prompts[0]], [case.prompts[1]]]
    assert all(not getattr(e, "requires_grad", False) for e in reward._text_cache.values())


def test_aesthetic_ignores_the_prompt():
    reward = BUILDERS["aesthetic"](Path(tempfile.mkdtemp())).reward
    images, _ = _scenes(2, 64, (64, 64), seed=7)
    with torch.no_grad():
        a = reward(_tensor(images), "a red circle")
        b = reward(_tensor(images), ["two blue stars", "anything at all"])
    assert torch.equal(a, b)


def test_imagereward_score_is_the_normalized_mlp_output():
    torch.manual_seed(0)
    model = FakeImageReward().eval().requires_grad_(False)
    pixels = torch.randn(2, 3, 224, 224)
    ids = torch.randint(0, 50, (2, 35))
    mask = torch.ones(2, 35, dtype=torch.long)
    embeds = model.blip.visual_encoder(pixels)
    hidden = model.blip.text_encoder(ids, mask, embeds, torch.ones(embeds.shape[:-1], dtype=torch.long), True)
    raw = model.mlp(hidden.last_hidden_state[:, 0]).squeeze(-1)
    got = imagereward_score(model.blip, model.mlp, pixels, ids, mask)
    assert torch.allclose(got, (raw - MEAN) / STD, atol=1e-6)
    assert not torch.allclose(got, raw, atol=1e-3)  # the normalization is applied


def test_imagereward_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install image-reward") as info:
        load_reward("imagereward")
    assert isinstance(info.value, ImportError)


def _fake_imagereward_package(monkeypatch) -> None:
    package = types.ModuleType("ImageReward")
    module = types.ModuleType("ImageReward.ImageReward")
    module.ImageReward = FakeImageReward
    package.ImageReward = module
    monkeypatch.setitem(sys.modules, "ImageReward", package)
    monkeypatch.setitem(sys.modules, "ImageReward.ImageReward", module)


def test_imagereward_loader_reads_checkpoint_and_config(monkeypatch, tmp_path):
    _fake_imagereward_package(monkeypatch)
    torch.manual_seed(1)
    trained = FakeImageReward()
    folder = tmp_path / "ir"
    folder.mkdir()
    torch.save(trained.state_dict(), folder / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match="med_config.json"):
        load_reward("imagereward", path=str(folder / "ImageReward.pt"), download_root=str(tmp_path / "empty"))
    (folder / "med_config.json").write_text("{}")
    for path in (folder, folder / "ImageReward.pt"):
        reward = load_reward("imagereward", path=str(path), download_root=str(tmp_path / "empty"))
        assert isinstance(reward, ImageRewardReward)
        assert torch.equal(reward.model.mlp[0].weight, trained.mlp[0].weight)  # the checkpoint was loaded
    with pytest.raises(FileNotFoundError, match=r"ImageReward\.pt is not in .*hf-hub:THUDM/ImageReward"):
        load_reward("imagereward", download_root=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_reward("imagereward", path=str(tmp_path / "missing.pt"))


def test_moving_the_reward_clears_the_text_cache():
    reward = load_reward("shapes-clip")
    with torch.no_grad():
        reward(torch.rand(1, 3, 128, 128), "a red circle")
    assert reward._text_cache
    reward.to(torch.float64)
    assert not reward._text_cache and reward.dtype == torch.float64
    with torch.no_grad():
        assert reward(torch.rand(1, 3, 128, 128), "a red circle").dtype == torch.float32


def test_loading_in_another_dtype_keeps_float32_scores_and_gradients():
    pixels = _tensor(_scenes(2, 128, (128, 128), seed=11)[0]).requires_grad_(True)
    full = load_reward("shapes-clip")(pixels, "a red circle")
    reward = load_reward("shapes-clip", dtype=torch.bfloat16)
    assert reward.dtype == torch.bfloat16
    half = reward(pixels, "a red circle")
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.02
    half.sum().backward()
    assert pixels.grad.dtype == torch.float32 and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["clip", "hps"])
def test_gradient_checkpointing_gives_the_same_gradient(name, tmp_path):
    model = _tiny_open_clip(8)
    if name == "clip":
        file = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    else:
        file = tmp_path / "HPS_v2.1_compressed.pt"
        torch.save({"state_dict": model.state_dict()}, file)
    images, prompts = _scenes(2, 64, (64, 48), seed=9)
    grads = []
    for checkpointing in (False, True):
        reward = load_reward(name, path=str(file), model_name=TINY, grad_checkpointing=checkpointing)
        pixels = _tensor(images).requires_grad_(True)
        reward(pixels, prompts).sum().backward()
        grads.append(pixels.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
