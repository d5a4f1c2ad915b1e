"""ChronoEdit (ChronoEditPipeline) on a tiny stock pipeline: image editing as a 5-frame image-to-video generation.
Its family record, sparse attention that keeps the conditioning frame (the input image's latent frame) as Wan I2V's
layout does, bottleneck sampling and noise search through the pipeline's own seams (noise drawn with the VAE's 16
channels, 5 frames whatever `num_frames` says)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_checks import Channel, max_diff, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_model, family_for_pipeline
from unbottle.pipelines.noise_search import differentiable_call, draw_noise
from unbottle.testing.chronoedit import tiny_chronoedit_pipeline

PROMPT = "a red circle left of a blue square"
IMAGE = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
# 32×32 edit: 5 frames → latents (1, 16, 2, 4, 4) → tokens (2, 2, 2); the first latent frame is 4 tokens, one block
CALL = dict(image=IMAGE, prompt=PROMPT, height=32, width=32, num_inference_steps=2)
BLOCK = 4
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=BLOCK, full_steps=0)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=BLOCK, reshape=False, full_steps=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.25, block_size=BLOCK, reshape=False, full_steps=0)
Stage = unbottle.Stage


@pytest.fixture(scope="module")
def pipe():
    return tiny_chronoedit_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    return pipe(**CALL, generator=seed(), output_type="np").frames


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


class Inputs:
    """Records the hidden_states shape of every denoiser forward, and the first forward's hidden_states."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.first: torch.Tensor | None = None
        self.hook = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs) -> None:
        x = kwargs["hidden_states"]
        if self.first is None:
            self.first = x.detach().clone()
        self.shapes.append(tuple(x.shape))


def kept_tiles(pattern) -> torch.Tensor:
    """(B, H, nQ, nK) bool: the key blocks each query block keeps, from a stored (indices, counts) pattern."""
    indices, counts = pattern
    slots = torch.arange(indices.shape[-1])
    valid = slots < counts[..., None].long()  # (B, H, nQ, K)
    n_k = indices.shape[-2]  # self-attention: as many key blocks as query blocks
    kept = torch.zeros(*indices.shape[:-1], n_k + 1, dtype=torch.bool)
    kept.scatter_(-1, torch.where(valid, indices.long(), n_k), True)  # padding → a spare column
    return kept[..., :n_k]


def test_the_pipeline_has_its_record(pipe):
    for feature in ("bottleneck", "noise"):
        assert family_for_pipeline(pipe, feature).name == "ChronoEdit"
    with pytest.raises(UnsupportedModelError, match="ChronoEditPipeline"):
        family_for_pipeline(pipe, "guidance")  # its cross-attention sees the image tokens and the text joined
    assert family_for_model(pipe.transformer, "sparse").name == "ChronoEdit"


# -- sparse attention -------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        assert set(handle.layer_hooks) == {"blocks.0.attn1", "blocks.1.attn1"}
        out = pipe(**CALL, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert out.shape == stock.shape == (1, 5, 32, 32, 3) and max_diff(out, stock) <= 1e-5
    after = pipe.transformer.attn_processors
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())


def test_every_block_kept_runs_the_sparse_path_with_the_conditioning_frame_as_prompt(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = pipe(**CALL, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {"blocks.0.attn1": 1, "blocks.1.attn1": 1}
    # (f, h, w, text_len, text_first): the edited frame's 2 × 2 grid, the input image's 4 tokens laid out first
    assert {key[3:] for key in handle.store.patterns} == {(1, 2, 2, 4, True)}
    assert max_diff(out, stock) <= 1e-5


def test_low_density_keeps_the_conditioning_frame(pipe):
    # 64×64: latents (2, 8, 8) → tokens (2, 4, 4) = 32 tokens, 8 blocks of 4; blocks 0–3 are the input image
    call = dict(CALL, height=64, width=64)
    base = pipe(**call, generator=seed(), output_type="np").frames
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        out = pipe(**call, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert np.isfinite(out).all() and max_diff(out, base) > 1e-5
    assert len(handle.store.patterns) == 2
    for pattern in handle.store.patterns.values():
        kept = kept_tiles(pattern)  # (1, 2 heads, 8, 8)
        assert kept.shape[-2:] == (8, 8)
        assert kept[..., :4, :].all() and kept[..., :, :4].all()  # the image's rows dense, its columns kept
        assert not kept[..., 4:, 4:].all()  # the edited frame's own tiles really sparse


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
def test_one_stage_bottleneck_is_the_stock_call(pipe, stock):
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(**{k: v for k, v in CALL.items() if k != "num_inference_steps"}, generator=seed(), output_type="np")
    assert type(out).__name__ == "ChronoEditPipelineOutput"
    np.testing.assert_array_equal(out.frames, stock)


def test_two_stages_call_the_denoiser_small_then_full(pipe):
    inputs = Inputs(pipe.transformer)
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=6.0), Stage(scale=1.0, steps=1, strength=0.7, shift=9.0)]
    try:
        out = unbottle.BottleneckSampler(pipe, stages)(
            image=IMAGE, prompt=PROMPT, height=64, width=64, generator=seed(), output_type="np"
        )
    finally:
        inputs.hook.remove()
    # 36 channels (noise, mask, condition): 32 px (2 × 2 × 2 tokens) for 2 steps, then 64 px (2 × 4 × 4) for 1
    assert inputs.shapes == [(1, 36, 2, 4, 4)] * 4 + [(1, 36, 2, 8, 8)] * 2
    assert out.frames.shape == (1, 5, 64, 64, 3) and np.isfinite(out.frames).all()


# -- noise search -----------------------------------------------------------------------------------------------------
NOISE_CALL = dict(image=IMAGE, height=32, width=32, num_inference_steps=2, guidance_scale=4.0)


@pytest.mark.parametrize("frames", [None, 9])  # an edit is 5 frames: the default 81 and 9 are not read
def test_the_drawn_noise_is_the_pipelines_own(pipe, frames):
    family = family_for_pipeline(pipe, "noise")
    call = dict(NOISE_CALL, num_inference_steps=1, **({} if frames is None else {"num_frames": frames}))
    noise, _ = draw_noise(pipe, family, call, 3, torch.float32)
    assert noise.shape == (1, 16, 2, 4, 4)  # the VAE's 16 channels (the transformer takes 36), 2 latent frames
    inputs = Inputs(pipe.transformer)
    try:
        pipe(prompt=PROMPT, **call, generator=seed(3), output_type="latent")
    finally:
        inputs.hook.remove()
    torch.testing.assert_close(inputs.first[:, :16], noise, atol=0, rtol=0)  # the noise part of the first input


def test_the_differentiable_call_is_the_stock_call(pipe):
    family = family_for_pipeline(pipe, "noise")
    noise, state = draw_noise(pipe, family, NOISE_CALL, 3, torch.float32)
    expected = pipe(prompt=PROMPT, **NOISE_CALL, generator=seed(3), output_type="pt").frames
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    out = differentiable_call(pipe, prompt=PROMPT, **NOISE_CALL, latents=eps, generator=generator, output_type="pt")
    assert out.frames.requires_grad and out.frames.shape == expected.shape == (1, 5, 3, 32, 32)
    torch.testing.assert_close(out.frames.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(out.frames[:, -1, 0].mean(), eps)  # the edited frame's red channel
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[1], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", **NOISE_CALL)
    first, second = result.history[1]
    assert math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert math.isfinite(first.update_norm) and first.update_norm > 0
    assert second.loss != first.loss
    assert result.latents.shape == (1, 16, 2, 4, 4)
