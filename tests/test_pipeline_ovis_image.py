"""Ovis-Image (OvisImagePipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage
is the stock call and its stages run at their token counts, noise search draws the pipeline's own noise and takes a
gradient step; the encoding maps encode_prompt's (prompt_embeds, negative_prompt_embeds, text_ids, negative_text_ids),
the negative being the call's default "" under CFG, and the stages pass no text beside the embeddings (the default
negative "" with `negative_prompt_embeds=` is an error of the pipeline's own checks)."""

from __future__ import annotations

import flux_like_checks as checks
import pytest
import torch
from flux_like_checks import CALL, NEGATIVE, PROMPT, max_diff, stock

import unbottle
from unbottle.families import family_named
from unbottle.families.prompt import encode_prompt_once
from unbottle.testing.flux_like import tiny_ovis_image_pipeline

NAME = "OvisImage"


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_ovis_image_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def test_the_family_record_matches_the_pipeline(pipe):
    checks.check_resolution(pipe, NAME)
    checks.check_sizes(pipe, NAME)
    checks.check_packing(pipe, NAME)
    assert family_named(NAME).stock_steps == 50


@pytest.mark.parametrize(("height", "width"), [(32, 32), (36, 22)])  # 36 × 22: rounded down to 4s, as stock
def test_drawn_noise_is_the_pipelines_own_latents(pipe, height, width):
    checks.check_drawn_noise(pipe, NAME, height, width)


def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    checks.check_sparse_density_one(pipe)


def test_sparse_path_keeping_every_block_matches_stock(pipe):
    checks.check_sparse_every_block(pipe, negative_prompt=NEGATIVE)  # CFG's two forwards per step


ONE_STAGE = {
    "cfg-default-negative": (PROMPT, {}),  # the call's own negative "": encoded once, then passed as embeddings
    "cfg-negative": (PROMPT, dict(negative_prompt=NEGATIVE)),
    "no-cfg": (PROMPT, dict(guidance_scale=1.0)),
    "batch-two-per-prompt": (["a red circle", PROMPT], dict(negative_prompt=NEGATIVE, num_images_per_prompt=2)),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = ONE_STAGE[case]
    checks.check_one_stage(pipe, prompt, **extra)


def test_the_encoding_maps_the_default_negative_under_cfg_only(pipe):
    embeds = encode_prompt_once(pipe, family_named(NAME).prompt, dict(prompt=PROMPT, **CALL), always_negative=False)
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds"}
    with torch.no_grad():  # as in the pipeline's own call
        positive, empty, _, _ = pipe.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=16)
        negative = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, max_sequence_length=16)[1]
    assert torch.equal(embeds["prompt_embeds"], positive) and torch.equal(embeds["negative_prompt_embeds"], empty)
    assert positive.shape == (1, 16, 16)  # the system prompt's tokens dropped: max_sequence_length left
    assert max_diff(empty, negative) > 1e-4  # "" is a negative of its own, not the given one
    given = encode_prompt_once(pipe, family_named(NAME).prompt, dict(prompt=PROMPT, negative_prompt=NEGATIVE, **CALL),
                               always_negative=False)  # fmt: skip
    assert torch.equal(given["negative_prompt_embeds"], negative)
    no_cfg = encode_prompt_once(pipe, family_named(NAME).prompt, dict(prompt=PROMPT, guidance_scale=1.0, **CALL),
                                always_negative=False)  # fmt: skip
    assert set(no_cfg) == {"prompt_embeds"}  # the stock call encodes no negative without CFG
    with pytest.raises(ValueError, match="Cannot forward both `negative_prompt`"):  # why the stages pass texts as None
        pipe(prompt_embeds=positive, negative_prompt_embeds=empty, num_inference_steps=1, **CALL)
    assert max_diff(stock(pipe), stock(pipe, negative_prompt=NEGATIVE)) > 1e-4  # the negative changes the image


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe):
    checks.check_two_stages(pipe, batched_cfg=False)  # the default negative ""


def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, NAME, negative_prompt=NEGATIVE)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe)  # the default negative "", encoded by the search itself
