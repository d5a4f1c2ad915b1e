"""CogView4 (CogView4Pipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage is
the stock call and its stages run at their token counts on the stage's own σ grid (the pipeline builds its own
timesteps and μ), noise search draws the pipeline's own float32 noise and takes a gradient step."""

from __future__ import annotations

import numpy as np
import pipeline_checks as checks
import pytest
import torch
from pipeline_checks import PROMPT, Recorder, max_diff, seed

import unbottle
from unbottle.families import family_named
from unbottle.pipelines import noise_search
from unbottle.testing.cogview4 import tiny_cogview4_pipeline

Stage = unbottle.Stage
CALL = dict(height=32, width=32, max_sequence_length=16)  # 32×32 px → 8×8 latents → 16 patch tokens
LAYERS = {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_cogview4_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def stock(pipe, prompt=PROMPT, **kwargs):
    return checks.stock(pipe, prompt, call=CALL, **kwargs)


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_resolves_to_cogview4_for_bottleneck_and_noise_not_guidance(pipe):
    family = checks.check_resolution(pipe, "CogView4")  # joint attention: no cross-attention to text to guide
    assert family.latents.multiple(pipe) == 16  # check_inputs' multiple of 16 (VAE ×4 × patch 2 would be 8)
    assert family.latents.default_size(pipe) == (32, 32)  # transformer sample_size × VAE factor, as the call's default
    assert family.latents.noise_dtype({"prompt_embeds": torch.zeros(1, dtype=torch.bfloat16)}) == torch.float32
    with Recorder(pipe) as rec:
        stock(pipe, height=None, width=None)
    assert rec.calls[0][1] == (1, 4, 8, 8)  # no size given: the default size


def test_drawn_noise_is_what_the_denoiser_first_sees(pipe):
    family = family_named("CogView4")
    with Recorder(pipe) as rec:
        stock(pipe, s=3, height=48, width=32)
    noise, state = noise_search.draw_noise(pipe, family, dict(CALL, height=48, width=32), 3, torch.float32)
    first = rec.inputs[0]  # the conditional forward of the first step (CFG: the unconditional one follows)
    assert noise.shape == first.shape == (1, 4, 12, 8) and noise.dtype == torch.float32
    assert torch.equal(first, noise)
    generator = seed(3)
    torch.randn(1, 4, 12, 8, generator=generator)
    assert torch.equal(state, generator.get_state())


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_matches_stock_and_disable_restores_the_processors(pipe):
    base = checks.check_sparse_density_one(pipe, stock, LAYERS)
    checks.check_sparse_every_block(pipe, stock, LAYERS, low=False, base=base)  # block-sparse, every block kept


# -- bottleneck sampling -------------------------------------------------------------------------------------------
ONE_STAGE = {
    "cfg": {},
    "negative": dict(negative_prompt="a green cube"),
    "no-cfg-two-per-prompt": dict(guidance_scale=1.0, num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    extra = ONE_STAGE[case]
    base = checks.check_one_stage(pipe, stock, CALL, **extra)
    if case == "negative":  # the negative changes the image, so the equality above saw it used
        assert max_diff(base, stock(pipe)) > 1e-6


def test_two_stages_run_their_token_counts_on_the_stage_grid(pipe):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=3, strength=0.7, shift=3.0)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    plans = sampler.plan(32, 32)
    assert [(p.height, p.width) for p in plans] == [(16, 16), (32, 32)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    shapes = [shape for _, shape in rec.calls]
    assert shapes == [(1, 4, 4, 4)] * 4 + [(1, 4, 8, 8)] * 6  # cond + uncond per step; 4 then 16 patch tokens
    # the pipeline computes timesteps and μ of its own, yet the second stage runs exactly its grid: σ × 1000
    timesteps = [t for t, _ in rec.calls[4::2]]
    assert timesteps == pytest.approx([1000.0 * s for s in plans[1].sigmas], abs=1e-3)
    assert timesteps[0] == pytest.approx(700.0, abs=1e-3)  # the second stage restarts at its strength
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, stock, "CogView4", CALL)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe, stock, CALL, (1, 4, 8, 8))  # the pipeline's `latents=` format
