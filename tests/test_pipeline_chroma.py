"""Chroma (ChromaPipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage is the
stock call and its stages run at their token counts, noise search draws the pipeline's own noise and takes a gradient
step; the encoding maps encode_prompt's six results (embeddings and T5 attention masks, the negative's beside the
prompt's) onto the call's keywords."""

from __future__ import annotations

import flux_like_checks as checks
import pytest
import torch
from flux_like_checks import CALL, NEGATIVE, PROMPT, max_diff, stock

import unbottle
from unbottle.families import family_named
from unbottle.families.prompt import encode_prompt_once
from unbottle.testing.flux_like import tiny_chroma_pipeline

NAME = "Chroma"


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_chroma_pipeline()
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
    assert family_named(NAME).stock_steps == 35


@pytest.mark.parametrize(("height", "width"), [(32, 32), (36, 22)])  # 36 × 22: rounded down to 4s, as stock
def test_drawn_noise_is_the_pipelines_own_latents(pipe, height, width):
    checks.check_drawn_noise(pipe, NAME, height, width)


def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    checks.check_sparse_density_one(pipe, negative_prompt=NEGATIVE)


def test_sparse_path_keeping_every_block_matches_stock(pipe):
    checks.check_sparse_every_block(pipe, negative_prompt=NEGATIVE)  # masked text, CFG's two forwards per step


ONE_STAGE = {
    "cfg-empty-negative": (PROMPT, {}),
    "cfg-negative": (PROMPT, dict(negative_prompt=NEGATIVE)),
    "no-cfg": (PROMPT, dict(negative_prompt=NEGATIVE, guidance_scale=1.0)),
    "padded-batch-two-per-prompt": (["a red circle", PROMPT], dict(negative_prompt=NEGATIVE, num_images_per_prompt=2)),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = ONE_STAGE[case]
    checks.check_one_stage(pipe, prompt, **extra)


def test_the_encoding_carries_the_masks_and_the_negative_only_under_cfg(pipe):
    prompts = ["a red circle", PROMPT]
    kwargs = dict(prompt=prompts, negative_prompt=NEGATIVE, **CALL)
    embeds = encode_prompt_once(pipe, family_named(NAME).prompt, kwargs, always_negative=False)
    assert set(embeds) == {"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                           "negative_prompt_attention_mask"}  # fmt: skip
    with torch.no_grad():  # as in the pipeline's own call
        positive, _, mask, negative, _, negative_mask = pipe.encode_prompt(
            prompts, negative_prompt=NEGATIVE, do_classifier_free_guidance=True, max_sequence_length=16
        )
    for key, value in (("prompt_embeds", positive), ("prompt_attention_mask", mask),
                       ("negative_prompt_embeds", negative), ("negative_prompt_attention_mask", negative_mask)):
        assert torch.equal(embeds[key], value), key  # fmt: skip
    # Chroma's masks: each prompt's tokens and one padding token kept; the two prompts' lengths differ
    lengths = [len(pipe.tokenizer(p).input_ids) + 1 for p in prompts]
    assert mask.sum(1).tolist() == lengths and lengths[0] != lengths[1]
    # the mask reaches the transformer: the same embeddings unmasked give another image
    masked = pipe(prompt_embeds=positive[1:], prompt_attention_mask=mask[1:], num_inference_steps=2,
                  generator=checks.seed(), output_type="np", guidance_scale=1.0, **CALL).images  # fmt: skip
    unmasked = pipe(prompt_embeds=positive[1:], prompt_attention_mask=torch.ones_like(mask[1:]),
                    num_inference_steps=2, generator=checks.seed(), output_type="np", guidance_scale=1.0,
                    **CALL).images  # fmt: skip
    assert max_diff(masked, stock(pipe, guidance_scale=1.0)) == 0.0 and max_diff(masked, unmasked) > 1e-6
    no_cfg = encode_prompt_once(pipe, family_named(NAME).prompt, dict(kwargs, guidance_scale=1.0),
                                always_negative=False)  # fmt: skip
    assert set(no_cfg) == {"prompt_embeds", "prompt_attention_mask"}  # the stock call encodes no negative without CFG


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe):
    checks.check_two_stages(pipe, batched_cfg=False, negative_prompt=NEGATIVE)


def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, NAME, negative_prompt=NEGATIVE)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe, negative_prompt=NEGATIVE)
