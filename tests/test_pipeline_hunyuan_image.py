"""HunyuanImage 2.1 (HunyuanImagePipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one
stage is the stock call (the guider's negative encoded separately, prompt batches encoded with their count, quoted
text through the OCR guider) and its stages run at their latent sizes, noise search draws the latents the pipeline
feeds its transformer and takes a gradient step through them."""

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
from unbottle.testing.hunyuan_image import tiny_hunyuan_image_pipeline

Stage = unbottle.Stage
GLYPH = 'a sign says "hello"'  # quoted text: ByT5 glyph tokens and the OCR guider
CALL = dict(height=16, width=16)  # 16×16 px → 8×8 latents → 64 image tokens (patch 1 × 1)
NEGATIVE = dict(negative_prompt="a green cube")  # the guiders run CFG: two transformer calls per step
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


def stock(pipe, prompt=PROMPT, **kwargs):
    return checks.stock(pipe, prompt, call=CALL, **kwargs)


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_is_hunyuan_image_for_bottleneck_and_noise_not_guidance(pipe):
    family = checks.check_resolution(pipe, "HunyuanImage")  # joint attention: no cross-attention to text to guide
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
    checks.check_sparse_density_one(pipe, stock, LAYERS)


def test_sparse_path_keeping_every_block_matches_stock_and_a_low_density_does_not(pipe):
    # the block-sparse path ran in every layer: one pattern each (both guider branches pad their text alike)
    checks.check_sparse_every_block(pipe, stock, LAYERS, patterns=1, steps=3)


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
    base = checks.check_one_stage(pipe, stock, CALL, prompt, **extra)
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
    checks.check_differentiable_call(pipe, stock, "HunyuanImage", CALL, **NEGATIVE)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe, stock, CALL, (1, 4, 8, 8), **NEGATIVE)  # CFG included
