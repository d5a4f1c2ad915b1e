"""Z-Image (ZImagePipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage is the
stock call and its stages run at their token counts (the transformer's rising t = 1 − σ restarting at 1 − strength),
noise search draws the float32 latents the pipeline feeds its transformer and takes a gradient step through them."""

from __future__ import annotations

import numpy as np
import pipeline_checks as checks
import pytest
import torch
from pipeline_checks import PROMPT, max_diff, seed

import unbottle
from unbottle.families import family_named
from unbottle.pipelines import noise_search
from unbottle.testing.z_image import tiny_z_image_pipeline

Stage = unbottle.Stage
CALL = dict(height=32, width=32, max_sequence_length=32)  # 32×32 px → 16×16 latents → 8×8 = 64 image tokens
NEGATIVE = dict(negative_prompt="a green cube")  # CFG runs at the default guidance_scale 5
LAYERS = {"layers.0.attention", "layers.1.attention", "noise_refiner.0.attention"}


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_z_image_pipeline()
    yield pipe
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def stock(pipe, prompt=PROMPT, **kwargs):
    return checks.stock(pipe, prompt, call=CALL, **kwargs)


class Recorder:
    """A transformer forward pre-hook recording (t, per-sample latent shapes) and the first sample of every call."""

    def __init__(self, pipe):
        self.calls, self.inputs = [], []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x, t = args[0], args[1]  # the pipeline passes (latent list, t, caption list) positionally
        self.calls.append((float(t[0]), [tuple(xi.shape) for xi in x]))
        self.inputs.append(x[0].detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_is_z_image_for_bottleneck_and_noise_not_guidance(pipe):
    family = checks.check_resolution(pipe, "ZImage")  # joint attention over image and caption: no cross-attention
    latents = family.latents
    assert latents.multiple(pipe) == 4  # VAE ×2 × 2×2 patches: the pipeline's own `vae_scale_factor * 2` check
    assert latents.tokens(pipe, (1, 4, 16, 16)) == 64
    assert latents.default_size(pipe) == (1024, 1024)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 24)])
def test_drawn_noise_is_the_float32_latent_the_transformer_gets_first(pipe, height, width):
    family = family_named("ZImage")
    noise, state = noise_search.draw_noise(pipe, family, dict(height=height, width=width), 3, torch.float32)
    assert noise.dtype == torch.float32 and noise.shape == (1, 4, height // 2, width // 2)
    with Recorder(pipe) as rec:
        stock(pipe, s=3, steps=1, height=height, width=width, guidance_scale=0.0)
    assert rec.calls[0][1] == [(4, 1, height // 2, width // 2)]  # one (C, F=1, h, w) tensor per sample
    assert torch.equal(rec.inputs[0][:, 0], noise[0])
    generator = seed(3)
    pipe.prepare_latents(1, 4, height, width, torch.float32, torch.device("cpu"), generator)
    assert torch.equal(state, generator.get_state())


def test_encoding_gives_per_sample_captions_and_their_negatives(pipe):
    family = family_named("ZImage")
    embeds = unbottle.families.prompt.encode_prompt_once(pipe, family.prompt, dict(prompt=PROMPT, **CALL, **NEGATIVE),
                                                         always_negative=False)  # fmt: skip
    positive, negative = pipe.encode_prompt(PROMPT, negative_prompt="a green cube", max_sequence_length=32)
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds"}
    assert [e.shape for e in embeds["prompt_embeds"]] == [e.shape for e in positive]
    assert positive[0].shape[0] != negative[0].shape[0]  # unpadded: the caption lengths differ
    assert all(torch.equal(a, b) for a, b in zip(embeds["prompt_embeds"], positive, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(embeds["negative_prompt_embeds"], negative, strict=True))


# -- sparse attention through the pipeline -----------------------------------------------------------------------
def test_sparse_attention_at_density_one_is_stock_and_disable_restores_the_processors(pipe):
    checks.check_sparse_density_one(pipe, stock, LAYERS)


def test_sparse_path_keeping_every_block_matches_stock_and_a_low_density_does_not(pipe):
    # the block-sparse path ran in every layer: one pattern each (the conditional and unconditional captions are both
    # padded to 32 tokens, so both branches share one sequence length)
    checks.check_sparse_every_block(pipe, stock, LAYERS, patterns=1, steps=3)


# -- bottleneck sampling -------------------------------------------------------------------------------------------
ONE_STAGE = {
    "cfg": (PROMPT, {}),
    "negative": (PROMPT, NEGATIVE),
    "turbo-no-cfg": (PROMPT, dict(guidance_scale=0.0)),
    "two-prompts-two-each": (["a red circle", PROMPT], dict(num_images_per_prompt=2, negative_prompt=["a", "a cube"])),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = ONE_STAGE[case]
    base = checks.check_one_stage(pipe, stock, CALL, prompt, **extra)
    if case == "negative":  # the negative reached the call: it changes the image
        assert max_diff(base, stock(pipe)) > 1e-6


def test_two_stages_call_the_denoiser_at_the_smaller_then_the_full_size(pipe):
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=2, strength=0.6, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    # CFG: the conditional and the unconditional latent in one call; 16×16 px → 8×8 latents, then 16×16
    assert [shapes for _, shapes in rec.calls] == [[(4, 1, 8, 8)] * 2] * 2 + [[(4, 1, 16, 16)] * 2] * 2
    assert rec.calls[0][0] == pytest.approx(0.0, abs=1e-6)  # t = 1 − σ rises from 0 at pure noise
    assert rec.calls[2][0] == pytest.approx(1.0 - 0.6, abs=1e-6)  # the second stage restarts at σ = its strength
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    checks.check_differentiable_call(pipe, stock, "ZImage", CALL, **NEGATIVE)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    result = checks.check_noise_search_step(pipe, stock, CALL, (1, 4, 16, 16), **NEGATIVE)
    assert result.latents.dtype == torch.float32
