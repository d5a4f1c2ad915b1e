"""Z-Image (ZImagePipeline) at pipeline level: sparse attention matches stock, bottleneck sampling's one stage is the
stock call and its stages run at their token counts (the transformer's rising t = 1 − σ restarting at 1 − strength),
noise search draws the float32 latents the pipeline feeds its transformer and takes a gradient step through them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import unbottle
from unbottle.attention_processors.enable import attention_processors
from unbottle.families import UnsupportedModelError, family_for_pipeline, family_named
from unbottle.pipelines import noise_search
from unbottle.testing.z_image import tiny_z_image_pipeline

Stage = unbottle.Stage
PROMPT = "a red circle left of a blue square"
CALL = dict(height=32, width=32, max_sequence_length=32)  # 32×32 px → 16×16 latents → 8×8 = 64 image tokens
NEGATIVE = dict(negative_prompt="a green cube")  # CFG runs at the default guidance_scale 5
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=8, full_steps=1, refresh_every=0,
                                             reshape=False)  # fmt: skip
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


def seed(s=0):
    return torch.Generator().manual_seed(s)


def stock(pipe, prompt=PROMPT, steps=2, s=0, output_type="np", **kwargs):
    return pipe(prompt, num_inference_steps=steps, generator=seed(s), output_type=output_type,
                **{**CALL, **kwargs}).images  # fmt: skip


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


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


class Channel(torch.nn.Module):
    """Mean of one colour channel: a simple differentiable reward, already in [0, 1]."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, images, prompts):
        return images[:, self.channel].mean((-2, -1))  # (B,)

    def unit(self, scores):
        return scores


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_pipeline_is_z_image_for_bottleneck_and_noise_not_guidance(pipe):
    family = family_named("ZImage")
    assert family_for_pipeline(pipe, "bottleneck") is family and family_for_pipeline(pipe, "noise") is family
    with pytest.raises(UnsupportedModelError, match="ZImagePipeline"):
        family_for_pipeline(pipe, "guidance")  # joint attention over image and caption: no cross-attention
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
    base = stock(pipe)
    originals = attention_processors(pipe.transformer)  # no AttentionMixin: the attention modules' own processors
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        current = attention_processors(pipe.transformer)
        wrapped = {k for k, p in current.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {f"{name}.processor" for name in LAYERS}
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert max_diff(out, base) <= 1e-5
    after = attention_processors(pipe.transformer)
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())


def test_sparse_path_keeping_every_block_matches_stock_and_a_low_density_does_not(pipe):
    base = stock(pipe, steps=3)
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = stock(pipe, steps=3)
    finally:
        unbottle.disable_sparse_attention(pipe)
    # the block-sparse path ran in every layer: one pattern each (the conditional and unconditional captions are both
    # padded to 32 tokens, so both branches share one sequence length)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)
    assert max_diff(out, base) <= 1e-5
    low = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=0, reshape=False)
    unbottle.enable_sparse_attention(pipe, low)
    try:
        assert max_diff(stock(pipe, steps=3), base) > 1e-5  # the same path at a low density does change the image
    finally:
        unbottle.disable_sparse_attention(pipe)


# -- bottleneck sampling -------------------------------------------------------------------------------------------
ONE_STAGE = {
    "cfg": (PROMPT, {}),
    "negative": (PROMPT, NEGATIVE),
    "turbo-no-cfg": (PROMPT, dict(guidance_scale=0.0)),
    "two-prompts-two-each": (["a red circle", PROMPT], dict(num_images_per_prompt=2, negative_prompt=["a", "a cube"])),
}


@pytest.mark.parametrize("case", list(ONE_STAGE))
def test_one_stage_is_the_stock_call(pipe, case):
    prompt, extra = copy.deepcopy(ONE_STAGE[case])  # the pipeline templates prompt lists in place: fresh ones
    base = stock(pipe, prompt, **extra)
    prompt, extra = copy.deepcopy(ONE_STAGE[case])
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(prompt, generator=seed(), output_type="np", **{**CALL, **extra}).images
    assert out.shape == base.shape
    np.testing.assert_array_equal(out, base)
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
    family = family_named("ZImage")
    call = dict(num_inference_steps=2, **CALL, **NEGATIVE)
    expected = stock(pipe, s=3, output_type="pt", **NEGATIVE)
    noise, state = noise_search.draw_noise(pipe, family, call, 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    image = noise_search.differentiable_call(pipe, PROMPT, latents=eps, generator=generator, output_type="pt",
                                             **call).images  # fmt: skip
    assert image.requires_grad and image.shape == expected.shape == (1, 3, 32, 32)
    torch.testing.assert_close(image.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(image[:, 0].mean(), eps)
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[5], iterations=2, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **CALL, **NEGATIVE)
    first, second = result.history[5]
    assert math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert first.loss != second.loss
    base = stock(pipe, s=5, output_type="pt", **NEGATIVE)  # iteration 0 is the stock image of seed 5
    assert first.loss == pytest.approx(1.0 - float(base[:, 0].mean()), abs=1e-5)
    assert result.latents.shape == (1, 4, 16, 16) and result.latents.dtype == torch.float32
