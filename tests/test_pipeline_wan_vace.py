"""Wan VACE (WanVACEPipeline) on a tiny stock pipeline, text-to-video without a control video: its family record, the
conditioning the pipeline builds when given none (an all-zero video under an all-ones mask), sparse attention through
the main and the control blocks, bottleneck sampling (control stream rebuilt at each stage's size), noise search
through `latents=` and structured guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pipeline_checks import Channel, max_diff, seed

import unbottle
from unbottle.families import family_for_pipeline
from unbottle.pipelines.noise_search import differentiable_call, draw_noise
from unbottle.testing.wan_vace import tiny_wan_vace_pipeline

PROMPT = "a red circle left of a blue square"
# 32×32×5: latents (1, 16, 2, 4, 4) → tokens (2, 2, 2); 16 text tokens keep the calls quick
CALL = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=16)
BLOCK = 4
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=BLOCK, full_steps=0)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=BLOCK, reshape=False, full_steps=0)
SELF_ATTENTION = {"blocks.0.attn1", "blocks.1.attn1", "vace_blocks.0.attn1", "vace_blocks.1.attn1"}
Stage = unbottle.Stage


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_vace_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    return pipe(**CALL, generator=seed(), output_type="np").frames


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)
    unbottle.disable_structured_guidance(pipe)


class Inputs:
    """Records the latents and control shapes of every denoiser forward, and the first forward's tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.first: dict[str, torch.Tensor] = {}
        self.hook = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs) -> None:
        x, control = kwargs["hidden_states"], kwargs["control_hidden_states"]
        if not self.first:
            self.first = {"hidden_states": x.detach().clone(), "control": control.detach().clone()}
        self.shapes.append((tuple(x.shape), tuple(control.shape)))


def test_the_pipeline_has_its_record(pipe):
    for feature in ("bottleneck", "noise", "guidance"):
        assert family_for_pipeline(pipe, feature).name == "Wan-VACE"
    assert family_for_pipeline(pipe, "noise").stock_steps == 50


def test_without_a_control_video_the_control_is_a_zero_video_under_a_full_mask(pipe):
    inputs = Inputs(pipe.transformer)
    try:
        pipe(**{**CALL, "num_inference_steps": 1}, generator=seed(), output_type="latent")
    finally:
        inputs.hook.remove()
    control = inputs.first["control"]
    assert control.shape == (1, 96, 2, 4, 4)  # inactive 16 + reactive 16 latents, the mask folded to 8 × 8 = 64
    # video × (1 − mask) and video × mask are both the zero video: one encoding twice, normalized like the latents
    zero = torch.zeros(1, 3, 5, 32, 32)
    with torch.no_grad():
        encoded = pipe.vae.encode(zero).latent_dist.mode()  # (1, 16, 2, 4, 4)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(control[:, :16], (encoded - mean) / std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(control[:, 16:32], control[:, :16], atol=0, rtol=0)
    assert bool((control[:, 32:] == 1).all())  # every pixel to be generated


# -- sparse attention -------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        assert set(handle.layer_hooks) == SELF_ATTENTION  # the main and the control blocks
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
    assert handle.pattern_computations == dict.fromkeys(SELF_ATTENTION, 1)
    assert {key[3:] for key in handle.store.patterns} == {(2, 2, 2, 0, True)}  # the (2, 2, 2) video grid
    assert max_diff(out, stock) <= 1e-5


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
def test_one_stage_bottleneck_is_the_stock_call(pipe, stock):
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(**{k: v for k, v in CALL.items() if k != "num_inference_steps"}, generator=seed(), output_type="np")
    assert type(out).__name__ == "WanPipelineOutput"
    np.testing.assert_array_equal(out.frames, stock)


def test_two_stages_call_the_denoiser_small_then_full_with_the_control_at_each_size(pipe):
    inputs = Inputs(pipe.transformer)
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=6.0), Stage(scale=1.0, steps=1, strength=0.7, shift=9.0)]
    try:
        out = unbottle.BottleneckSampler(pipe, stages)(
            PROMPT, height=64, width=64, num_frames=5, max_sequence_length=16, generator=seed(), output_type="np"
        )
    finally:
        inputs.hook.remove()
    # 32 px (2 × 2 × 2 tokens) for 2 steps, then 64 px (2 × 4 × 4 tokens) for 1; CFG: two calls a step
    small, full = ((1, 16, 2, 4, 4), (1, 96, 2, 4, 4)), ((1, 16, 2, 8, 8), (1, 96, 2, 8, 8))
    assert inputs.shapes == [small] * 4 + [full] * 2
    assert out.frames.shape == (1, 5, 64, 64, 3) and np.isfinite(out.frames).all()


# -- noise search -----------------------------------------------------------------------------------------------------
NOISE_CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=16)


def test_the_drawn_noise_is_the_pipelines_own_and_latents_flow_through(pipe):
    family = family_for_pipeline(pipe, "noise")
    noise, state = draw_noise(pipe, family, NOISE_CALL, 3, torch.float32)
    assert noise.shape == (1, 16, 2, 4, 4)
    inputs = Inputs(pipe.transformer)
    try:
        expected = pipe(prompt=PROMPT, **NOISE_CALL, generator=seed(3), output_type="pt").frames
    finally:
        inputs.hook.remove()
    torch.testing.assert_close(inputs.first["hidden_states"], noise, atol=0, rtol=0)  # the pipeline's own draw
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
        wrapped = {k.removesuffix(".processor") for k, p in pipe.transformer.attn_processors.items()
                   if p is not originals[k]}  # fmt: skip
        assert wrapped == {"blocks.0.attn2", "blocks.1.attn2", "vace_blocks.0.attn2", "vace_blocks.1.attn2"}
        one, two = run("circle"), run("a red circle and a blue square")
        assert handle.stash is not None and handle.stash.rows[0][0].shape[0] == 3  # the prompt and its 2 phrases
    finally:
        unbottle.disable_structured_guidance(pipe)
    np.testing.assert_array_equal(stock_one, one)  # no phrase: stock
    assert max_diff(stock_two, two) > 1e-6  # phrases: the structured values change the video
    np.testing.assert_array_equal(stock_two, run("a red circle and a blue square"))
    assert all(pipe.transformer.attn_processors[k] is originals[k] for k in originals)
