"""HunyuanVideo-1.5 text-to-video (HunyuanVideo15Pipeline) through unbottle's pipeline features: the noise is the
latent channels the pipeline draws (the transformer's input adds conditioning latents and a mask on channels),
sparse attention is stock at density 1 and with every block kept, one-stage bottleneck sampling is the stock call
(a negative prompt included: the guider's CFG encodes it through a second `encode_prompt`), a two-stage plan runs
the denoiser at the smaller then the full size, and noise search differentiates the stock call."""

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
from pipeline_checks import max_diff, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_pipeline
from unbottle.families.prompt import encode_prompt_once
from unbottle.pipelines import noise_search
from unbottle.testing.hunyuan_video15 import TOKENS, tiny_hunyuan_video15_pipeline

PROMPT = 'a red circle left of a blue square, a sign that says "hello"'  # the quoted text feeds the ByT5 encoder
CALL = dict(height=64, width=64, num_frames=5, num_inference_steps=3)  # latents (1, 4, 2, 4, 4): 32 video tokens
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=4, full_steps=1)
# every block kept, no reshape correction (its ρ grows per sparse step by design): block-sparse attention is dense
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=4, full_steps=1, reshape=False)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=4, full_steps=1)
LAYERS = {"transformer_blocks.0.attn", "transformer_blocks.1.attn"}  # not the token refiner's attention


@pytest.fixture(scope="module")
def pipe():
    return tiny_hunyuan_video15_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    """The stock output (np) for seed 0 and CALL, before any feature touched the pipeline."""
    return run(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


def run(pipe, s=0, **kwargs):
    return pipe(PROMPT, generator=seed(s), output_type="np", **{**CALL, **kwargs}).frames


def without_steps(call):
    return {k: v for k, v in call.items() if k != "num_inference_steps"}


def denoiser_inputs(pipe):
    """A forward pre-hook recording (timestep, hidden_states) of every transformer call; `remove()` when done."""
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append((float(k["timestep"].flatten()[0]), k["hidden_states"].clone())),
        with_kwargs=True,
    )
    return calls, hook


# -- the family record ----------------------------------------------------------------------------------------------
def test_the_noise_is_the_latent_channels_the_pipeline_draws(pipe):
    family = family_for_pipeline(pipe, "noise")
    assert family.name == "HunyuanVideo-1.5" and family.supports("bottleneck")
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.latent_channels + 1  # latents, cond, mask
    noise, _ = noise_search.draw_noise(pipe, family, CALL, 5, torch.float32)
    assert noise.shape == (1, 4, 2, 4, 4)  # (B, C, 1 + (5 − 1)/4, 64/16, 64/16)
    calls, hook = denoiser_inputs(pipe)
    try:
        run(pipe, 5)
    finally:
        hook.remove()
    first = calls[0][1]  # (1, 9, 2, 4, 4): the first step's input, the drawn noise then zero condition and mask
    assert first.shape == (1, 9, 2, 4, 4) and len(calls) == 2 * CALL["num_inference_steps"]  # CFG: cond + uncond
    torch.testing.assert_close(first[:, :4], noise, atol=0, rtol=0)
    assert not first[:, 4:].any()  # text-to-video: zero conditioning latents and mask


def test_the_default_size_is_the_pipelines_own(pipe):
    family = family_for_pipeline(pipe, "noise")
    frames = pipe(PROMPT, generator=seed(), output_type="np", num_frames=1, num_inference_steps=1).frames
    assert family.latents.size(pipe, {}) == frames.shape[2:4] == (48, 80)  # the 9:16 bucket of target_size 64
    assert family.latents.noise_shape(pipe, {"num_frames": 1}) == (1, 4, 1, 3, 5)
    # a bottleneck request without a size plans at the same default, and one stage is then the stock call
    sampler = unbottle.BottleneckSampler(pipe, [unbottle.Stage(1.0, 1, 1.0, None)])
    assert [(p.height, p.width) for p in sampler.plan(num_frames=1)] == [(48, 80)]
    staged = sampler(PROMPT, generator=seed(), output_type="np", num_frames=1).frames
    np.testing.assert_array_equal(staged, frames)


def test_the_encoding_maps_every_tensor_to_its_call_keyword(pipe):
    family = family_for_pipeline(pipe, "bottleneck")
    kwargs = dict(prompt=PROMPT, negative_prompt="a green cube")
    embeds = encode_prompt_once(pipe, family.prompt, kwargs, always_negative=False)
    names = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")
    assert set(embeds) == {*names, *(f"negative_{n}" for n in names)}  # the guider's CFG uses the negative
    assert embeds["prompt_embeds"].shape == (1, TOKENS[0], 16)
    assert embeds["prompt_embeds_2"].shape == (1, TOKENS[1], 16)
    assert embeds["prompt_embeds_mask_2"].sum() > 0 and not embeds["negative_prompt_embeds_mask_2"].any()  # glyphs
    expected = pipe.encode_prompt(prompt="a green cube", device="cpu")
    for name, tensor in zip(names, expected, strict=True):
        torch.testing.assert_close(embeds[f"negative_{name}"], tensor, atol=0, rtol=0)


def test_image_to_video_is_not_listed():
    assert family_for_pipeline(object.__new__(HunyuanVideo15Pipeline), "bottleneck").name == "HunyuanVideo-1.5"
    with pytest.raises(UnsupportedModelError, match="HunyuanVideo15ImageToVideoPipeline"):
        family_for_pipeline(object.__new__(HunyuanVideo15ImageToVideoPipeline), "bottleneck")


# -- sparse attention -------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    assert {k.removesuffix(".processor") for k, p in pipe.transformer.attn_processors.items()
            if isinstance(p, unbottle.SparseAttnProcessor)} == LAYERS  # fmt: skip
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {} and max_diff(out, stock) <= 1e-5
    after = pipe.transformer.attn_processors
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(run(pipe), stock)


def test_every_block_kept_runs_the_sparse_path_and_matches_stock(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, ALL_KEPT)
    out = run(pipe)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)
    assert max_diff(out, stock) <= 1e-5


def test_low_density_changes_the_output(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    out = run(pipe)
    assert set(handle.pattern_computations) == LAYERS
    assert np.isfinite(out).all() and max_diff(out, stock) > 1e-4


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"negative_prompt": "a green cube"}], ids=["plain", "negative"])
def test_one_stage_bottleneck_is_the_stock_call(pipe, stock, extra):
    base = run(pipe, **extra) if extra else stock
    stage = unbottle.Stage(scale=1.0, steps=CALL["num_inference_steps"], strength=1.0, shift=None)
    out = unbottle.BottleneckSampler(pipe, [stage])(
        PROMPT, generator=seed(), output_type="np", **without_steps(CALL), **extra
    ).frames
    np.testing.assert_array_equal(out, base)
    if extra:
        assert max_diff(base, stock) > 1e-3  # the negative prompt matters, so it was really used


def test_two_stages_run_the_denoiser_small_then_full(pipe):
    stages = [unbottle.Stage(scale=0.5, steps=2, strength=1.0, shift=3.0),
              unbottle.Stage(scale=1.0, steps=2, strength=0.8, shift=3.0)]  # fmt: skip
    calls, hook = denoiser_inputs(pipe)
    try:
        out = unbottle.BottleneckSampler(pipe, stages)(
            PROMPT, generator=seed(), output_type="np", **without_steps(CALL)
        ).frames
    finally:
        hook.remove()
    shapes = [tuple(x.shape) for _, x in calls]
    assert shapes == [(1, 9, 2, 2, 2)] * 4 + [(1, 9, 2, 4, 4)] * 4  # 2 steps × (cond, uncond) at 32 px, then 64 px
    assert calls[0][0] == pytest.approx(1000.0) and calls[4][0] == pytest.approx(800.0)  # σ = 1, then the strength
    assert out.shape == (1, 5, 64, 64, 3) and np.isfinite(out).all()


# -- noise search -----------------------------------------------------------------------------------------------------
class Red(torch.nn.Module):
    """Mean of the red channel: a differentiable reward in [0, 1]."""

    def forward(self, images, prompts):
        return images[:, 0].mean((-2, -1))

    def unit(self, scores):
        return scores


def test_the_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    call = dict(CALL, num_inference_steps=2)
    expected = pipe(PROMPT, generator=seed(3), output_type="pt", **call).frames
    noise, state = noise_search.draw_noise(pipe, family_for_pipeline(pipe, "noise"), call, 3, torch.float32)
    generator = torch.Generator()
    generator.set_state(state)
    eps = noise.clone().requires_grad_(True)
    video = noise_search.differentiable_call(pipe, PROMPT, latents=eps, generator=generator, output_type="pt",
                                             **call).frames  # fmt: skip
    assert video.requires_grad and video.shape == expected.shape == (1, 5, 3, 64, 64)
    torch.testing.assert_close(video.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(video[:, :, 0].mean(), eps)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_noise_search_step_moves_the_loss(pipe):
    call = dict(CALL, num_inference_steps=2, num_frames=1)
    stock = pipe(PROMPT, generator=seed(4), output_type="pt", **call).frames
    search = unbottle.NoiseSearch(pipe, {"red": (Red(), 10.0)}, seeds=[4], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", **call)
    first, second = result.history[4]
    assert first.scores["red"] == pytest.approx(float(stock[:, :, 0].mean()), abs=1e-5)  # iteration 0: stock noise
    assert first.grad_norms and all(np.isfinite(v) and v > 0 for v in first.grad_norms.values())
    assert second.loss != first.loss
    assert result.latents.shape == (1, 4, 1, 4, 4)
