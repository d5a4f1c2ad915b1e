"""Qwen-Image (QwenImagePipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage
is the stock call and its stages run at their token counts, noise search draws the pipeline's own noise and takes a
gradient step; the encoding maps encode_prompt's (prompt_embeds, prompt_embeds_mask) and true CFG's separately
encoded negatives onto the call's keywords."""

from __future__ import annotations

import numpy as np
import pipeline_checks as checks
import pytest
import torch
from pipeline_checks import PROMPT, Recorder, max_diff, seed

import unbottle
from unbottle.families import family_named
from unbottle.families.prompt import encode_prompt_once
from unbottle.pipelines import noise_search
from unbottle.testing.qwen_image import tiny_qwen_image_pipeline

Stage = unbottle.Stage
NEGATIVE = dict(negative_prompt="a green cube", true_cfg_scale=2.0)  # true CFG: the negative through its own encode
CALL = dict(height=32, width=32, max_sequence_length=16)  # 32×32 px → 8×8 latents → 16 packed tokens
LAYERS = {"transformer_blocks.0.attn", "transformer_blocks.1.attn"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_qwen_image_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def stock(pipe, prompt=PROMPT, steps=3, **kwargs):
    return checks.stock(pipe, prompt, steps, call=CALL, **kwargs)


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_resolves_to_qwen_image_for_bottleneck_and_noise_not_guidance(pipe):
    checks.check_resolution(pipe, "QwenImage")  # joint attention: no cross-attention to text to guide


def test_size_granularity_default_size_and_token_count_are_the_pipelines(pipe):
    latents = family_named("QwenImage").latents
    assert latents.multiple(pipe) == 8  # VAE ×4 × the 2×2 packing: the pipeline's own `vae_scale_factor * 2`
    assert latents.default_size(pipe) == (32, 32)
    with Recorder(pipe) as rec:
        image = pipe(PROMPT, num_inference_steps=2, generator=seed(), output_type="np", max_sequence_length=16).images
    assert image.shape == (1, 32, 32, 3)  # no size given: the default size
    assert rec.calls[0][1] == (1, latents.tokens(pipe, (1, 4, 8, 8)), 16)  # 16 tokens of 4 channels × 2 × 2
    assert latents.tokens(pipe, (1, 4, 8, 8)) == 16


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 24), (36, 44)])  # 36 × 44: rounded down, as stock
def test_drawn_noise_is_the_pipelines_own_latents(pipe, height, width):
    family = family_named("QwenImage")
    noise, state = noise_search.draw_noise(pipe, family, dict(height=height, width=width), 3, torch.float32)
    generator = seed(3)
    expected = pipe.prepare_latents(1, 4, height, width, torch.float32, torch.device("cpu"), generator)
    assert noise.shape == expected.shape == (1, (height // 8) * (width // 8), 16)
    assert torch.equal(noise, expected)
    assert torch.equal(state, generator.get_state())  # later draws (none here) would continue alike


def test_grid_packing_puts_each_2x2_block_of_a_channel_in_one_token(pipe):
    latents = family_named("QwenImage").latents
    grid = torch.randn(2, 4, 10, 6, generator=seed())  # (B, C, h, w) for 40 × 24 px
    tokens = latents.from_grid(pipe, grid)  # (B, h/2 · w/2, 4C)
    assert tokens.shape == (2, 5 * 3, 16)
    b, c, y, x = 1, 2, 7, 4
    assert tokens[b, (y // 2) * 3 + x // 2, c * 4 + (y % 2) * 2 + x % 2] == grid[b, c, y, x]
    assert torch.equal(latents.to_grid(pipe, tokens, 40, 24, None), grid)


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    checks.check_sparse_density_one(pipe, stock, LAYERS, again=True)


@pytest.mark.parametrize("extra", [{}, NEGATIVE], ids=["plain", "true-cfg"])
def test_sparse_path_keeping_every_block_matches_stock(pipe, extra):
    # the block-sparse path ran in every layer: one pattern per sequence length, and true CFG's negative is shorter
    checks.check_sparse_every_block(pipe, stock, LAYERS, patterns=2 if extra else 1, **extra)


# -- bottleneck sampling -------------------------------------------------------------------------------------------
ONE_STAGE = {
    "plain": (PROMPT, {}),
    "true-cfg": (PROMPT, NEGATIVE),
    "negative-without-cfg": (PROMPT, dict(negative_prompt="a green cube", true_cfg_scale=1.0)),
    "two-per-prompt": (PROMPT, dict(num_images_per_prompt=2, **NEGATIVE)),
    "padded-batch": (["a red circle", PROMPT], NEGATIVE),  # unequal lengths: prompt_embeds_mask marks the padding
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = ONE_STAGE[case]
    checks.check_one_stage(pipe, stock, CALL, prompt, steps=3, **extra)


def test_true_cfg_negatives_are_encoded_separately_and_reach_the_call(pipe):
    kwargs = dict(prompt=["a red circle", PROMPT], **NEGATIVE, **CALL)
    embeds = encode_prompt_once(pipe, family_named("QwenImage").prompt, kwargs, always_negative=False)
    assert set(embeds) == {"prompt_embeds", "prompt_embeds_mask", "negative_prompt_embeds"}
    positive, mask = pipe.encode_prompt(["a red circle", PROMPT], max_sequence_length=16)
    negative, negative_mask = pipe.encode_prompt("a green cube", max_sequence_length=16)
    assert torch.equal(embeds["prompt_embeds"], positive) and torch.equal(embeds["prompt_embeds_mask"], mask)
    assert mask[0].tolist() != mask[1].tolist() and negative_mask is None  # one padded prompt; the negative unpadded
    assert torch.equal(embeds["negative_prompt_embeds"], negative)
    # the negative changes the image (so the one-stage equality above saw it used) and its mask matters
    with_negative, without = stock(pipe, kwargs["prompt"], **NEGATIVE), stock(pipe, kwargs["prompt"])
    assert max_diff(with_negative, without) > 1e-4
    unmasked = pipe(prompt_embeds=positive, num_inference_steps=3, generator=seed(), output_type="np",
                    **CALL).images  # fmt: skip
    assert max_diff(unmasked, without) > 1e-6
    no_cfg = encode_prompt_once(pipe, family_named("QwenImage").prompt, dict(kwargs, true_cfg_scale=1.0),
                                always_negative=False)  # fmt: skip
    assert "negative_prompt_embeds" not in no_cfg  # the stock call encodes no negative without true CFG


@pytest.mark.parametrize("extra", [{}, NEGATIVE], ids=["plain", "true-cfg"])
def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe, extra):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=3, strength=0.7, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    plans = sampler.plan(32, 32)
    assert [(p.height, p.width) for p in plans] == [(16, 16), (32, 32)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **{**CALL, **extra}).images
    branches = 2 if extra else 1  # true CFG: a conditional and an unconditional forward per step
    shapes = [shape for _, shape in rec.calls]
    assert shapes == [(1, 4, 16)] * (2 * branches) + [(1, 16, 16)] * (3 * branches)  # 2×2 then 4×4 packed tokens
    second = rec.calls[2 * branches][0]
    assert second == pytest.approx(0.7, abs=1e-6)  # the second stage restarts at its strength (timestep / 1000)
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, NEGATIVE], ids=["plain", "true-cfg"])
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe, extra):
    checks.check_differentiable_call(pipe, stock, "QwenImage", CALL, **extra)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    # iteration 0 is the stock image of seed 5, true CFG included (the negative came from the search's own encoding)
    checks.check_noise_search_step(pipe, stock, CALL, (1, 16, 16), **NEGATIVE)  # packed `latents=` format
