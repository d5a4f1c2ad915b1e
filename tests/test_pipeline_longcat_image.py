"""LongCat-Image (LongCatImagePipeline) at pipeline level: sparse attention matches stock through the pipeline;
bottleneck sampling and gradient noise search refuse it with their clear errors, because the stock pipeline cannot
take an encoded prompt (which both pass); noise exploration (best of N seeds) runs through plain calls."""

from __future__ import annotations

import pipeline_checks as checks
import pytest
from pipeline_checks import PROMPT, Channel, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_model, family_for_pipeline, family_named
from unbottle.testing.longcat_image import tiny_longcat_image_pipeline

# 32×32 px → 16×16 latents → 64 packed tokens; the prompt rewrite needs a text processor the tiny pipeline lacks
CALL = dict(height=32, width=32, enable_prompt_rewrite=False)
LAYERS = {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_longcat_image_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def stock(pipe, prompt=PROMPT, **kwargs):
    return checks.stock(pipe, prompt, call=CALL, **kwargs)


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_model_is_longcat_for_sparse_and_the_pipeline_for_no_pipeline_feature(pipe):
    assert family_for_model(pipe.transformer, "sparse") is family_named("LongCat-Image")
    for feature in ("bottleneck", "noise", "guidance"):
        with pytest.raises(UnsupportedModelError, match="LongCatImagePipeline"):
            family_for_pipeline(pipe, feature)


def test_the_stock_pipeline_cannot_take_an_encoded_prompt(pipe):
    """Why the pipeline parts are left out: prompt_embeds without prompt fails inside the stock encode_prompt, and
    check_inputs refuses both together; bottleneck sampling and noise search call the pipeline with the encoding."""
    embeds, _ = pipe.encode_prompt(PROMPT)
    with pytest.raises(TypeError, match="NoneType"):
        pipe(prompt_embeds=embeds, num_inference_steps=1, generator=seed(), output_type="np", **CALL)
    with pytest.raises(ValueError, match="Cannot forward both `prompt`"):
        pipe(PROMPT, prompt_embeds=embeds, num_inference_steps=1, generator=seed(), output_type="np", **CALL)


def test_bottleneck_sampling_and_noise_optimization_refuse_the_pipeline(pipe):
    with pytest.raises(UnsupportedModelError, match="LongCatImagePipeline"):
        unbottle.BottleneckSampler(pipe, [unbottle.Stage(scale=1.0, steps=2)])
    with pytest.raises(UnsupportedModelError, match=r"LongCatImagePipeline \(iterations=2\)"):
        unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, seeds=[5], iterations=2, progress=False)


def test_noise_exploration_scores_the_stock_images_of_its_seeds(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, seeds=[3, 5], iterations=0, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **CALL)
    reds = {s: float(stock(pipe, s=s, output_type="pt")[:, 0].mean()) for s in (3, 5)}
    assert {s: steps[0].scores["red"] for s, steps in result.history.items()} == pytest.approx(reds, abs=1e-6)
    assert result.seed == max(reds, key=reds.get) and result.latents is None  # no family: the noise is not known


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    checks.check_sparse_density_one(pipe, stock, LAYERS)


def test_sparse_path_keeping_every_block_matches_stock_and_a_low_density_does_not(pipe):
    # the block-sparse path ran in every layer: one pattern each (both CFG branches pad their text to 16 tokens)
    checks.check_sparse_every_block(pipe, stock, LAYERS, patterns=1, steps=3)
