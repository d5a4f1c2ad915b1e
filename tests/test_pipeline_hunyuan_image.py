"""HunyuanImage 2.1 (HunyuanImagePipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one
stage is the stock call (the guider's negative encoded separately, prompt batches encoded with their count, quoted
text through the OCR guider) and its stages run at their latent sizes, noise search draws the latents the pipeline
feeds its transformer and takes a gradient step through them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import unbottle
from unbottle.families import UnsupportedModelError, family_for_pipeline, family_named
from unbottle.families.prompt import encode_prompt_once
from unbottle.pipelines import noise_search
from unbottle.testing.hunyuan_image import tiny_hunyuan_image_pipeline

Stage = unbottle.Stage
PROMPT = "a red circle left of a blue square"
GLYPH = 'a sign says "hello"'  # quoted text: ByT5 glyph tokens and the OCR guider
CALL = dict(height=16, width=16)  # 16×16 px → 8×8 latents → 64 image tokens (patch 1 × 1)
NEGATIVE = dict(negative_prompt="a green cube")  # the guiders run CFG: two transformer calls per step
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=8, full_steps=1, refresh_every=0,
                                             reshape=False)  # fmt: skip
LAYERS = {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_hunyuan_image_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def seed(s=0):
    return torch.Generator().manual_seed(s)


def stock(pipe, prompt=PROMPT, steps=2, s=0, output_type="np", **kwargs):
    return pipe(prompt, num_inference_steps=steps, generator=seed(s), output_type=output_type,
                **{**CALL, **kwargs}).images  # fmt: skip


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


class Recorder:
    """A transformer forward pre-hook recording (timestep, hidden_states shape) and the hidden states of every call."""

    def __init__(self, pipe):
        self.calls, self.inputs = [], []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((float(kwargs["timestep"].flatten()[0]), tuple(kwargs["hidden_states"].shape)))
        self.inputs.append(kwargs["hidden_states"].detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class Channel(torch.nn.Module):
    """Mean of one colour channel: a simple differentiable reward, already in [0, 1]."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, images, prompts):
        return images[:, self.channel].mean((-2, -1))  # (B,)

    def unit(self, scores):
        return scores


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_is_hunyuan_image_for_bottleneck_and_noise_not_guidance(pipe):
    family = family_named("HunyuanImage")
    assert family_for_pipeline(pipe, "bottleneck") is family and family_for_pipeline(pipe, "noise") is family
    with pytest.raises(UnsupportedModelError, match="HunyuanImagePipeline"):
        family_for_pipeline(pipe, "guidance")  # joint attention: no cross-attention to text to guide
    latents = family.latents
    assert latents.multiple(pipe) == 2  # VAE ×2 × patch 1 × 1
    assert latents.default_size(pipe) == (16, 16)  # the pipeline's default_sample_size × vae_scale_factor
    assert latents.tokens(pipe, (1, 4, 8, 8)) == 64


@pytest.mark.parametrize(("height", "width"), [(16, 16), (20, 12)])
def test_drawn_noise_is_the_latent_the_transformer_gets_first(pipe, height, width):
    family = family_named("HunyuanImage")
    noise, state = noise_search.draw_noise(pipe, family, dict(height=height, width=width), 3, torch.float32)
    assert noise.shape == (1, 4, height // 2, width // 2)
    with Recorder(pipe) as rec:
        stock(pipe, s=3, steps=1, height=height, width=width)
    assert torch.equal(rec.inputs[0], noise)
    generator = seed(3)
    pipe.prepare_latents(1, 4, height, width, torch.float32, torch.device("cpu"), generator)
    assert torch.equal(state, generator.get_state())


def test_a_prompt_batch_is_encoded_with_its_count_and_the_negative_separately(pipe):
    kwargs = dict(prompt=["a red circle", GLYPH], negative_prompt=["a green cube", "a"])
    embeds = encode_prompt_once(pipe, family_named("HunyuanImage").prompt, kwargs, always_negative=False)
    with torch.no_grad():  # as encode_prompt_once runs it
        expected = pipe.encode_prompt(["a red circle", GLYPH], batch_size=2)
        negative = pipe.encode_prompt(["a green cube", "a"], batch_size=2)  # as the stock call encodes it
    keys = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")
    assert set(embeds) == set(keys) | {f"negative_{k}" for k in keys}
    assert embeds["prompt_embeds"].shape == (2, 16, 16) and embeds["prompt_embeds_2"].shape == (2, 16, 8)
    assert all(torch.equal(embeds[k], e) for k, e in zip(keys, expected, strict=True))
    assert embeds["prompt_embeds_mask_2"][0].sum() == 0 < embeds["prompt_embeds_mask_2"][1].sum()  # glyphs: 2nd only
    assert all(torch.equal(embeds[f"negative_{k}"], e) for k, e in zip(keys, negative, strict=True))


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    base = stock(pipe)
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        current = pipe.transformer.attn_processors
        wrapped = {k for k, p in current.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {f"{name}.processor" for name in LAYERS}
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert max_diff(out, base) <= 1e-5
    after = pipe.transformer.attn_processors
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())


def test_sparse_path_keeping_every_block_matches_stock_and_a_low_density_does_not(pipe):
    base = stock(pipe, steps=3)
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = stock(pipe, steps=3)
    finally:
        unbottle.disable_sparse_attention(pipe)
    # the block-sparse path ran in every layer: one pattern each (both guider branches pad their text alike)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)
    assert max_diff(out, base) <= 1e-5
    low = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=0, reshape=False)
    unbottle.enable_sparse_attention(pipe, low)
    try:
        assert max_diff(stock(pipe, steps=3), base) > 1e-5  # the same path at a low density does change the image
    finally:
        unbottle.disable_sparse_attention(pipe)


# -- bottleneck sampling -------------------------------------------------------------------------------------------
ONE_STAGE = {
    "plain": (PROMPT, {}),
    "negative": (PROMPT, NEGATIVE),
    "glyph-ocr-guider": (GLYPH, NEGATIVE),
    # a prompt list takes a negative list (the stock encode_prompt reshapes a single negative to the prompt count)
    "two-prompts-two-each": (["a red circle", GLYPH], dict(num_images_per_prompt=2, negative_prompt=["a", "a cube"])),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = ONE_STAGE[case]
    base = stock(pipe, prompt, **extra)
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(prompt, generator=seed(), output_type="np", **{**CALL, **extra}).images
    assert out.shape == base.shape
    np.testing.assert_array_equal(out, base)
    if case == "negative":  # the negative reached the call: it changes the image
        assert max_diff(base, stock(pipe)) > 1e-6


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_size(pipe):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=2, strength=0.7, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    assert [(p.height, p.width) for p in sampler.plan(16, 16)] == [(8, 8), (16, 16)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    # the guider's conditional and unconditional calls per step; 4×4 then 8×8 latents
    assert [shape for _, shape in rec.calls] == [(1, 4, 4, 4)] * 4 + [(1, 4, 8, 8)] * 4
    assert rec.calls[4][0] == pytest.approx(700.0, abs=1e-3)  # the second stage restarts at its strength (σ × 1000)
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    family = family_named("HunyuanImage")
    call = dict(num_inference_steps=2, **CALL, **NEGATIVE)
    expected = stock(pipe, s=3, output_type="pt", **NEGATIVE)
    noise, state = noise_search.draw_noise(pipe, family, call, 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    image = noise_search.differentiable_call(pipe, PROMPT, latents=eps, generator=generator, output_type="pt",
                                             **call).images  # fmt: skip
    assert image.requires_grad and image.shape == expected.shape == (1, 3, 16, 16)
    torch.testing.assert_close(image.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(image[:, 0].mean(), eps)
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[5], iterations=2, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **CALL, **NEGATIVE)
    first, second = result.history[5]
    assert math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert first.loss != second.loss
    base = stock(pipe, s=5, output_type="pt", **NEGATIVE)  # iteration 0 is the stock image of seed 5, CFG included
    assert first.loss == pytest.approx(1.0 - float(base[:, 0].mean()), abs=1e-5)
    assert result.latents.shape == (1, 4, 8, 8)
