"""Lumina-Image 2.0 (Lumina2Pipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one
stage is the stock call (system prompt, CFG truncation and renormalization as the call sets them) and its stages run
at their token counts, noise search draws the pipeline's own noise and takes a gradient step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import unbottle
from unbottle.attention_processors.enable import attention_processors
from unbottle.families import UnsupportedModelError, family_for_pipeline, family_named
from unbottle.pipelines import noise_search
from unbottle.testing.lumina2 import tiny_lumina2_pipeline

Stage = unbottle.Stage
PROMPT = "a red circle left of a blue square"
CALL = dict(height=64, width=64, max_sequence_length=48)  # 64×64 px → 8×8 latents → 16 patch tokens
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=8, full_steps=1, refresh_every=0,
                                             reshape=False)  # fmt: skip
LAYERS = {"layers.0.attn", "layers.1.attn", "noise_refiner.0.attn"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_lumina2_pipeline()
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
    """A transformer forward pre-hook recording (timestep, hidden_states) of every call."""

    def __init__(self, pipe):
        self.calls = []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.calls.append((float(kwargs["timestep"].flatten()[0]), hidden.detach().clone()))

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
def test_the_pipeline_resolves_to_lumina2_for_bottleneck_and_noise_not_guidance(pipe):
    family = family_named("Lumina2")
    assert family_for_pipeline(pipe, "bottleneck") is family and family_for_pipeline(pipe, "noise") is family
    with pytest.raises(UnsupportedModelError, match="Lumina2Pipeline"):
        family_for_pipeline(pipe, "guidance")  # joint attention: no cross-attention to text to guide
    assert family.latents.multiple(pipe) == 16  # check_inputs' 2 × vae_scale_factor (fixed ×8)
    assert family.latents.default_size(pipe) == (64, 64)  # default_sample_size × 8, as the call's default
    with Recorder(pipe) as rec:
        stock(pipe, height=None, width=None)
    assert tuple(rec.calls[0][1].shape) == (1, 4, 8, 8)  # no size given: the default size


def test_drawn_noise_is_what_the_denoiser_first_sees(pipe):
    family = family_named("Lumina2")
    with Recorder(pipe) as rec:
        stock(pipe, s=3, height=80, width=48)
    noise, state = noise_search.draw_noise(pipe, family, dict(CALL, height=80, width=48), 3, torch.float32)
    first = rec.calls[0][1]  # the conditional forward of the first step (CFG: the unconditional one follows)
    assert noise.shape == first.shape == (1, 4, 10, 6)
    assert torch.equal(first, noise)
    generator = seed(3)
    torch.randn(1, 4, 10, 6, generator=generator)
    assert torch.equal(state, generator.get_state())


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_matches_stock_and_disable_restores_the_processors(pipe):
    base = stock(pipe)
    originals = dict(attention_processors(pipe.transformer))
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        wrapped = {k for k, p in attention_processors(pipe.transformer).items()
                   if isinstance(p, unbottle.SparseAttnProcessor)}  # fmt: skip
        assert wrapped == {f"{name}.processor" for name in LAYERS}
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert out.shape == base.shape and max_diff(out, base) <= 1e-5
    after = attention_processors(pipe.transformer)
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert set(handle.pattern_computations) == LAYERS and all(n > 0 for n in handle.pattern_computations.values())
    assert max_diff(out, base) <= 1e-5  # the block-sparse path, every block kept


# -- bottleneck sampling -------------------------------------------------------------------------------------------
ONE_STAGE = {
    "cfg": {},
    "negative": dict(negative_prompt="a green cube"),
    "system-prompt": dict(system_prompt="a photo of the image"),
    "truncated-cfg-no-renormalization": dict(cfg_trunc_ratio=0.5, cfg_normalization=False),
    "no-cfg-two-per-prompt": dict(guidance_scale=1.0, num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    extra = ONE_STAGE[case]
    base = stock(pipe, **extra)
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(PROMPT, generator=seed(), output_type="np", **{**CALL, **extra}).images
    assert out.shape == base.shape
    np.testing.assert_array_equal(out, base)
    if case in ("negative", "system-prompt", "truncated-cfg-no-renormalization"):
        assert max_diff(base, stock(pipe)) > 1e-6  # the option changes the image, so the equality above saw it used


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=2, strength=0.7, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    assert [(p.height, p.width) for p in sampler.plan(64, 64)] == [(32, 32), (64, 64)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    shapes = [tuple(h.shape) for _, h in rec.calls]
    assert shapes == [(1, 4, 4, 4)] * 4 + [(1, 4, 8, 8)] * 4  # cond + uncond per step; 4 then 16 patch tokens
    # Lumina's timestep rises over denoising (1 − σ): the second stage restarts at σ = its strength
    assert rec.calls[4][0] == pytest.approx(1.0 - 0.7, abs=1e-6)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    family = family_named("Lumina2")
    expected = stock(pipe, s=3, output_type="pt")
    noise, state = noise_search.draw_noise(pipe, family, CALL, 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    image = noise_search.differentiable_call(pipe, PROMPT, num_inference_steps=2, latents=eps, generator=generator,
                                             output_type="pt", **CALL).images  # fmt: skip
    assert image.requires_grad and image.shape == expected.shape == (1, 3, 64, 64)
    torch.testing.assert_close(image.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(image[:, 0].mean(), eps)
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[5], iterations=2, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **CALL)
    first, second = result.history[5]
    assert set(first.grad_norms) == {"red"} and math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert first.loss != second.loss
    base = stock(pipe, s=5, output_type="pt")  # iteration 0 is the stock image of seed 5
    assert first.loss == pytest.approx(1.0 - float(base[:, 0].mean()), abs=1e-5)
    assert result.latents.shape == (1, 4, 8, 8)  # the chosen noise in the pipeline's `latents=` format
