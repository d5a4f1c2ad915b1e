"""Cosmos-Predict2 text-to-image (Cosmos2TextToImagePipeline) through unbottle's pipeline features: sparse attention
is stock at density 1 and with every block kept; noise exploration picks the best seed through plain stock calls; the
features its seams cannot carry are refused clearly: bottleneck sampling (its own EDM σ grid and σ_max-scaled
latents) and noise optimization (the safety checker's numpy round trip breaks the differentiable call); structured
guidance: tests/test_guidance_more.py."""

import numpy as np
import pytest
import torch
from pipeline_checks import Channel

import unbottle
from unbottle.families import UnsupportedModelError, family_for_pipeline
from unbottle.pipelines import noise_search
from unbottle.testing.cosmos import tiny_cosmos_pipeline

PROMPT = "a red circle left of a blue square"
# 64×64 → latents (1, 16, 1, 8, 8): 16 tokens of 1×2×2 patches; CFG on (a negative prompt, 2 denoiser calls a step)
CALL = dict(height=64, width=64, num_inference_steps=2, max_sequence_length=16, negative_prompt="a green cube")
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=4, full_steps=1)
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=4, full_steps=0, reshape=False)
LAYERS = {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}  # self-attention only, not the T5 attn2


@pytest.fixture(scope="module")
def pipe():
    return tiny_cosmos_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    """The stock latent output (before the VAE and the safety checker's uint8 round trip) for seed 0."""
    return run(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


def seed(s=0):
    return torch.Generator().manual_seed(s)


def run(pipe, s=0, output_type="latent", **kwargs):
    return pipe(PROMPT, generator=seed(s), output_type=output_type, **{**CALL, **kwargs}).images


# -- what the record leaves out ---------------------------------------------------------------------------------------
def test_bottleneck_and_noise_optimization_are_refused(pipe):
    for feature in ("bottleneck", "noise"):
        with pytest.raises(UnsupportedModelError, match="Cosmos2TextToImagePipeline"):
            family_for_pipeline(pipe, feature)
    with pytest.raises(UnsupportedModelError, match="Cosmos2TextToImagePipeline"):
        unbottle.BottleneckSampler(pipe, [unbottle.Stage(scale=1.0, steps=2)])
    with pytest.raises(UnsupportedModelError, match="iterations=0"):
        unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, iterations=2)
    assert "encode_prompt" not in pipe.__dict__  # nothing was wrapped


def test_the_pixels_cannot_be_differentiated_but_the_latents_can(pipe):
    """Why noise optimization is left out: the stock pixels go through numpy (the safety checker) inside __call__."""
    noise = torch.randn(1, 16, 1, 8, 8, generator=seed(3)).requires_grad_(True)  # (B, C, 1, h, w): the unit noise
    latents = noise_search.differentiable_call(pipe, PROMPT, latents=noise, output_type="latent", **CALL).images
    assert latents.requires_grad
    with pytest.raises(RuntimeError, match="numpy"):
        noise_search.differentiable_call(pipe, PROMPT, latents=noise, output_type="pt", **CALL)


# -- sparse attention -------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = {name: m.processor for name, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    sparse = {name for name, m in pipe.transformer.named_modules()
              if isinstance(getattr(m, "processor", None), unbottle.SparseAttnProcessor)}  # fmt: skip
    assert sparse == LAYERS
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=0)
    after = {name: m.processor for name, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(run(pipe).numpy(), stock.numpy())


def denoised(pipe):
    """(every denoiser output of a seed-0 call, its latent output)."""
    outputs = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, k, out: outputs.append(out[0].clone()),
                                                  with_kwargs=True)  # fmt: skip
    try:
        return outputs, run(pipe)
    finally:
        hook.remove()


def test_every_block_kept_runs_the_sparse_path_and_matches_stock(pipe, stock):
    expected, _ = denoised(pipe)
    handle = unbottle.enable_sparse_attention(pipe, ALL_KEPT)
    outputs, out = denoised(pipe)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)
    assert len(outputs) == len(expected) == 4  # 2 steps × (cond, uncond)
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the EDM step x + (σ' − σ)·(x − D)/σ runs on latents of scale σ_max = 80 in float32: one ulp there is 8e-6 to
    # 3e-5, so the final latents agree to that rounding, not to the denoiser's 1e-5
    torch.testing.assert_close(out, stock, atol=1e-4, rtol=0)


# -- noise exploration ----------------------------------------------------------------------------------------------
def test_exploration_picks_the_best_seed_through_stock_calls(pipe):
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, seeds=[1, 2], iterations=0, progress=False)
    result = search(PROMPT, output_type="pt", **CALL)
    images = {s: run(pipe, s, output_type="pt") for s in (1, 2)}
    reds = {s: float(image[:, 0].mean()) for s, image in images.items()}
    assert reds[1] != reds[2] and result.seed == max(reds, key=reds.get)
    assert result.scores["red"] == pytest.approx(reds[result.seed], abs=1e-6)
    torch.testing.assert_close(result.images, images[result.seed], atol=0, rtol=0)
    assert result.latents is None  # no noise family: the seed, not a noise tensor, reproduces it
