"""Bria (BriaPipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage is the stock
call and its stages run at their token counts (the pipeline takes no `sigmas=`: the stage scheduler runs each grid),
noise search draws the pipeline's own noise (its `vae_scale_factor` counts the 2×2 packing) and takes a gradient step;
the encoding maps encode_prompt's (prompt_embeds, negative_prompt_embeds, text_ids), a missing negative being zeros."""

from __future__ import annotations

import flux_like_checks as checks
import pytest
import torch
from flux_like_checks import CALL, NEGATIVE, PROMPT, max_diff, stock

import unbottle
from unbottle.families import family_named
from unbottle.families.prompt import encode_prompt_once
from unbottle.testing.flux_like import tiny_bria_pipeline

NAME = "Bria"


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_bria_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def test_the_family_record_matches_the_pipeline(pipe):
    assert pipe.vae_scale_factor == 4  # 2 VAE blocks: the VAE halves the image, the pipeline counts the packing too
    checks.check_resolution(pipe, NAME)
    checks.check_sizes(pipe, NAME)
    checks.check_packing(pipe, NAME)
    assert family_named(NAME).stock_steps == 30


@pytest.mark.parametrize(("height", "width"), [(32, 32), (36, 22)])  # 36 × 22: rounded down to 4s, as stock
def test_drawn_noise_is_the_pipelines_own_latents(pipe, height, width):
    checks.check_drawn_noise(pipe, NAME, height, width)


def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    checks.check_sparse_density_one(pipe, negative_prompt=NEGATIVE)


def test_sparse_path_keeping_every_block_matches_stock(pipe):
    checks.check_sparse_every_block(pipe, negative_prompt=NEGATIVE)  # CFG as one batch of 2


ONE_STAGE = {
    "cfg-zero-negative": (PROMPT, {}),
    "cfg-negative": (PROMPT, dict(negative_prompt=NEGATIVE)),
    "no-cfg": (PROMPT, dict(negative_prompt=NEGATIVE, guidance_scale=1.0)),
    "two-per-prompt-normalized": (PROMPT, dict(negative_prompt=NEGATIVE, num_images_per_prompt=2, normalize=True)),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = ONE_STAGE[case]
    checks.check_one_stage(pipe, prompt, **extra)


def test_the_encoding_maps_the_negative_and_zeros_without_one(pipe):
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, **CALL)
    embeds = encode_prompt_once(pipe, family_named(NAME).prompt, kwargs, always_negative=False)
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds"}
    with torch.no_grad():  # as in the pipeline's own call
        positive, negative, _ = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, max_sequence_length=16)
    assert torch.equal(embeds["prompt_embeds"], positive) and torch.equal(embeds["negative_prompt_embeds"], negative)
    tokens = len(pipe.tokenizer(PROMPT).input_ids)
    assert positive.shape == (1, 16, 16) and positive[0, tokens:].abs().sum() == 0  # zero-padded to 16 tokens
    # no negative prompt: the stock call's unconditional branch sees zeros, and so does the cached encoding
    plain = encode_prompt_once(pipe, family_named(NAME).prompt, dict(CALL, prompt=PROMPT), always_negative=True)
    assert torch.equal(plain["negative_prompt_embeds"], torch.zeros_like(positive))
    assert max_diff(stock(pipe), stock(pipe, negative_prompt=NEGATIVE)) > 1e-4  # the negative changes the image
    no_cfg = encode_prompt_once(pipe, family_named(NAME).prompt, dict(kwargs, guidance_scale=1.0),
                                always_negative=False)  # fmt: skip
    assert set(no_cfg) == {"prompt_embeds"}  # the stock call encodes no negative without CFG


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_token_count(pipe):
    checks.check_two_stages(pipe, batched_cfg=True, negative_prompt=NEGATIVE)


def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, NAME, negative_prompt=NEGATIVE)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    checks.check_noise_search_step(pipe)  # no negative: the search's cached zeros are the stock negative
