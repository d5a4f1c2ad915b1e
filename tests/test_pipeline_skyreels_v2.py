"""SkyReels-V2 text-to-video (SkyReelsV2Pipeline) on a tiny stock pipeline: its family record, sparse attention
through the pipeline, bottleneck sampling (the pipeline's UniPC in flow mode replaced per stage by the stage
scheduler, as Wan's), noise search (noise with the pipeline's own frame rounding) and structured guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler
from pipeline_checks import Channel, max_diff, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_pipeline
from unbottle.pipelines.noise_search import differentiable_call, draw_noise
from unbottle.testing.skyreels_v2 import tiny_skyreels_v2_pipeline

PROMPT = "a red circle left of a blue square"
# 32×32×5: latents (1, 16, 2, 4, 4) → tokens (2, 2, 2); 16 text tokens keep the calls quick
CALL = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=16)
BLOCK = 4
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=BLOCK, full_steps=0)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=BLOCK, reshape=False, full_steps=0)
Stage = unbottle.Stage


@pytest.fixture(scope="module")
def pipe():
    return tiny_skyreels_v2_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    return pipe(**CALL, generator=seed(), output_type="np").frames


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)
    unbottle.disable_structured_guidance(pipe)


class Inputs:
    """Records (hidden_states shape, timestep) of every denoiser forward, and the first forward's hidden_states."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[tuple[int, ...], float]] = []
        self.first: torch.Tensor | None = None
        self.hook = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs) -> None:
        x = kwargs["hidden_states"]
        if self.first is None:
            self.first = x.detach().clone()
        self.calls.append((tuple(x.shape), float(kwargs["timestep"].flatten()[0])))


def test_the_pipeline_has_its_record_and_diffusion_forcing_has_none(pipe):
    for feature in ("bottleneck", "noise", "guidance"):
        assert family_for_pipeline(pipe, feature).name == "SkyReels-V2"
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler) and pipe.scheduler.config.use_flow_sigmas
    forcing = SkyReelsV2DiffusionForcingPipeline.__new__(SkyReelsV2DiffusionForcingPipeline)
    with pytest.raises(UnsupportedModelError, match="SkyReelsV2DiffusionForcingPipeline"):
        family_for_pipeline(forcing, "bottleneck")


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


def test_every_block_kept_runs_the_sparse_path_and_is_stock(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = pipe(**CALL, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {"blocks.0.attn1": 1, "blocks.1.attn1": 1}
    assert {key[3:] for key in handle.store.patterns} == {(2, 2, 2, 0, True)}  # the (2, 2, 2) video grid, no text
    assert max_diff(out, stock) <= 1e-5


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
def test_one_stage_bottleneck_is_the_stock_call(pipe, stock):
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(**{k: v for k, v in CALL.items() if k != "num_inference_steps"}, generator=seed(), output_type="np")
    assert type(out).__name__ == "SkyReelsV2PipelineOutput"
    np.testing.assert_array_equal(out.frames, stock)


def shifted(sigma: float, k: float) -> float:
    """The flow-matching time shift σ' = kσ / (1 + (k − 1)σ)."""
    return k * sigma / (1 + (k - 1) * sigma)


def test_two_stages_replace_unipc_by_the_stage_grid_small_then_full(pipe):
    own = pipe.scheduler
    inputs = Inputs(pipe.transformer)
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=6.0), Stage(scale=1.0, steps=1, strength=0.7, shift=9.0)]
    try:
        out = unbottle.BottleneckSampler(pipe, stages)(
            PROMPT, height=64, width=64, num_frames=5, max_sequence_length=16, generator=seed(), output_type="np"
        )
    finally:
        inputs.hook.remove()
    # 32 px (2 × 2 × 2 tokens) for 2 steps, then 64 px (2 × 4 × 4 tokens) for 1; CFG: two calls a step
    small, full = (1, 16, 2, 4, 4), (1, 16, 2, 8, 8)
    assert [shape for shape, _ in inputs.calls] == [small] * 4 + [full] * 2
    # the stage grids, not UniPC's: σ = 1 and the shift-6 midpoint, then the restart at 0.7 (timestep = 1000 σ)
    expected = [1000.0] * 2 + [1000 * shifted(0.5, 6.0)] * 2 + [700.0] * 2
    np.testing.assert_allclose([t for _, t in inputs.calls], expected, rtol=1e-5)
    assert pipe.scheduler is own
    assert out.frames.shape == (1, 5, 64, 64, 3) and np.isfinite(out.frames).all()


def test_a_stage_without_shift_uses_the_unipc_flow_shift(pipe):
    sampler = unbottle.BottleneckSampler(pipe, [Stage(0.5, 2), Stage(1.0, 2, strength=0.6, shift=None)])
    plans = sampler.plan(64, 64, 5)
    k = pipe.scheduler.config.flow_shift  # 8: the checkpoint's static flow shift
    t0 = 0.6 / (k - (k - 1) * 0.6)  # the unshifted time whose shifted σ is 0.6
    assert plans[0].sigmas is None  # full strength, no shift: UniPC's own schedule
    np.testing.assert_allclose(plans[1].sigmas, [0.6, shifted(t0 / 2, k)], rtol=1e-6)


# -- noise search -----------------------------------------------------------------------------------------------------
NOISE_CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=16)


@pytest.mark.parametrize(("frames", "latent_frames"), [(5, 2), (8, 3)])  # 8: the pipeline rounds it to 9 frames
def test_the_drawn_noise_is_the_pipelines_own(pipe, frames, latent_frames):
    family = family_for_pipeline(pipe, "noise")
    call = dict(NOISE_CALL, num_frames=frames, num_inference_steps=1)
    noise, _ = draw_noise(pipe, family, call, 3, torch.float32)
    inputs = Inputs(pipe.transformer)
    try:
        pipe(prompt=PROMPT, **call, generator=seed(3), output_type="latent")
    finally:
        inputs.hook.remove()
    assert noise.shape == (1, 16, latent_frames, 4, 4)
    torch.testing.assert_close(inputs.first, noise, atol=0, rtol=0)  # the first denoiser input is the noise


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
    (grad,) = torch.autograd.grad(out.frames[:, :, 0].mean(), eps)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[1], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", **NOISE_CALL)
    first, second = result.history[1]
    assert math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert math.isfinite(first.update_norm) and first.update_norm > 0
    assert second.loss != first.loss
    assert result.latents.shape == (1, 16, 2, 4, 4)


# -- structured guidance ----------------------------------------------------------------------------------------------
def test_structured_guidance_keeps_stock_without_phrases_and_restores_on_disable(pipe):
    def run(prompt):
        return pipe(**{**CALL, "prompt": prompt}, generator=seed(), output_type="np").frames

    stock_one, stock_two = run("circle"), run("a red circle and a blue square")
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        wrapped = {k for k, p in pipe.transformer.attn_processors.items() if p is not originals[k]}
        assert wrapped == {"blocks.0.attn2.processor", "blocks.1.attn2.processor"}  # cross-attention only
        one, two = run("circle"), run("a red circle and a blue square")
        assert handle.stash is not None and handle.stash.rows[0][0].shape[0] == 3  # the prompt and its 2 phrases
    finally:
        unbottle.disable_structured_guidance(pipe)
    np.testing.assert_array_equal(stock_one, one)  # no phrase: stock
    assert max_diff(stock_two, two) > 1e-6  # phrases: the structured values change the video
    np.testing.assert_array_equal(stock_two, run("a red circle and a blue square"))
    assert all(pipe.transformer.attn_processors[k] is originals[k] for k in originals)
