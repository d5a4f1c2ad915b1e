"""AuraFlow (AuraFlowPipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage is
the stock call and its stages run at their token counts, noise search draws the pipeline's own noise and takes a
gradient step; the encoding maps encode_prompt's embeddings, masks and CFG negatives onto the call's keywords."""

from __future__ import annotations

import numpy as np
import pipeline_checks as checks
import pytest
import torch
from pipeline_checks import PROMPT, Recorder, max_diff, seed

import unbottle
from unbottle.families import family_named
from unbottle.pipelines import noise_search
from unbottle.testing.auraflow import tiny_auraflow_pipeline

Stage = unbottle.Stage
CALL = dict(height=32, width=32, max_sequence_length=16)  # 32×32 px → 8×8 latents → 16 patch tokens
LAYERS = {"joint_transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_auraflow_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def stock(pipe, prompt=PROMPT, **kwargs):
    return checks.stock(pipe, prompt, call=CALL, **kwargs)


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_resolves_to_auraflow_for_bottleneck_and_noise_not_guidance(pipe):
    family = checks.check_resolution(pipe, "AuraFlow")  # joint attention: no cross-attention to text to guide
    assert family.latents.multiple(pipe) == 8  # check_inputs' 2 × vae_scale_factor (VAE ×4)
    assert family.latents.default_size(pipe) == (1024, 1024)  # the signature's defaults


def test_drawn_noise_is_what_the_denoiser_first_sees(pipe):
    family = family_named("AuraFlow")
    with Recorder(pipe) as rec:
        stock(pipe, s=3, height=40, width=24)
    noise, state = noise_search.draw_noise(pipe, family, dict(CALL, height=40, width=24), 3, torch.float32)
    first = rec.inputs[0]  # (2, 4, 10, 6): CFG's unconditional and conditional copies of the noise
    assert noise.shape == (1, 4, 10, 6) and first.shape == (2, 4, 10, 6)
    assert torch.equal(first[0:1], noise) and torch.equal(first[1:2], noise)
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
    "no-cfg-two-per-prompt": dict(guidance_scale=1.0, num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    extra = ONE_STAGE[case]
    base = checks.check_one_stage(pipe, stock, CALL, **extra)
    if case == "negative":  # the negative changes the image, so the equality above saw it used
        assert max_diff(base, stock(pipe)) > 1e-6


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=2, strength=0.7, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    assert [(p.height, p.width) for p in sampler.plan(32, 32)] == [(16, 16), (32, 32)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    shapes = [shape for _, shape in rec.calls]
    assert shapes == [(2, 4, 4, 4)] * 2 + [(2, 4, 8, 8)] * 2  # CFG batch of 2; 4 then 16 patch tokens
    assert rec.calls[2][0] == pytest.approx(0.7, abs=1e-6)  # the second stage restarts at its strength (t / 1000)
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, stock, "AuraFlow", CALL)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe, stock, CALL, (1, 4, 8, 8))  # the pipeline's `latents=` format
