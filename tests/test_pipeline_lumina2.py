"""Lumina-Image 2.0 (Lumina2Pipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one
stage is the stock call (system prompt, CFG truncation and renormalization as the call sets them) and its stages run
at their token counts, noise search draws the pipeline's own noise and takes a gradient step."""

from __future__ import annotations

import numpy as np
import pipeline_checks as checks
import pytest
import torch
from pipeline_checks import PROMPT, Recorder, max_diff, seed

import unbottle
from unbottle.families import family_named
from unbottle.pipelines import noise_search
from unbottle.testing.lumina2 import tiny_lumina2_pipeline

Stage = unbottle.Stage
CALL = dict(height=64, width=64, max_sequence_length=48)  # 64×64 px → 8×8 latents → 16 patch tokens
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


def stock(pipe, prompt=PROMPT, **kwargs):
    return checks.stock(pipe, prompt, call=CALL, **kwargs)


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_resolves_to_lumina2_for_bottleneck_and_noise_not_guidance(pipe):
    family = checks.check_resolution(pipe, "Lumina2")  # joint attention: no cross-attention to text to guide
    assert family.latents.multiple(pipe) == 16  # check_inputs' 2 × vae_scale_factor (fixed ×8)
    assert family.latents.default_size(pipe) == (64, 64)  # default_sample_size × 8, as the call's default
    with Recorder(pipe) as rec:
        stock(pipe, height=None, width=None)
    assert rec.calls[0][1] == (1, 4, 8, 8)  # no size given: the default size


def test_drawn_noise_is_what_the_denoiser_first_sees(pipe):
    family = family_named("Lumina2")
    with Recorder(pipe) as rec:
        stock(pipe, s=3, height=80, width=48)
    noise, state = noise_search.draw_noise(pipe, family, dict(CALL, height=80, width=48), 3, torch.float32)
    first = rec.inputs[0]  # the conditional forward of the first step (CFG: the unconditional one follows)
    assert noise.shape == first.shape == (1, 4, 10, 6)
    assert torch.equal(first, noise)
    generator = seed(3)
    torch.randn(1, 4, 10, 6, generator=generator)
    assert torch.equal(state, generator.get_state())


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_matches_stock_and_disable_restores_the_processors(pipe):
    base = checks.check_sparse_density_one(pipe, stock, LAYERS)
    checks.check_sparse_every_block(pipe, stock, LAYERS, low=False, base=base)  # block-sparse, every block kept


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
    base = checks.check_one_stage(pipe, stock, CALL, **extra)
    if case in ("negative", "system-prompt", "truncated-cfg-no-renormalization"):
        assert max_diff(base, stock(pipe)) > 1e-6  # the option changes the image, so the equality above saw it used


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=2, strength=0.7, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    assert [(p.height, p.width) for p in sampler.plan(64, 64)] == [(32, 32), (64, 64)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    shapes = [shape for _, shape in rec.calls]
    assert shapes == [(1, 4, 4, 4)] * 4 + [(1, 4, 8, 8)] * 4  # cond + uncond per step; 4 then 16 patch tokens
    # Lumina's timestep rises over denoising (1 − σ): the second stage restarts at σ = its strength
    assert rec.calls[4][0] == pytest.approx(1.0 - 0.7, abs=1e-6)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, stock, "Lumina2", CALL)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe, stock, CALL, (1, 4, 8, 8))  # the pipeline's `latents=` format
