"""Kandinsky 5 text-to-video (Kandinsky5T2VPipeline) through unbottle's pipeline features: the channels-last latents
(noise, then zero visual-conditioning channels and mask) map to and from the (B, C, F, h, w) grid exactly as the
pipeline lays them out, sparse attention is stock at density 1 and with every block kept, one-stage bottleneck
sampling is the stock call (a negative prompt included: CFG encodes it through a second `encode_prompt`), a two-stage
plan runs the denoiser smaller then at full size with clean conditioning channels; noise search and structured
guidance refuse the pipeline."""

import numpy as np
import pytest
import torch
from pipeline_checks import max_diff, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_pipeline, family_named
from unbottle.families.prompt import encode_prompt_once
from unbottle.testing.kandinsky5 import tiny_kandinsky5_pipeline

PROMPT = "a red circle left of a blue square"
NEGATIVE = "a green cube"
# 32×32×5 → latents (1, 2, 4, 4, 4 + 4 + 1) → 2 × 2 × 2 = 8 visual tokens; 32 text tokens fit the default negative
CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=32)
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=2, full_steps=1)
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=2, full_steps=1, reshape=False, refresh_every=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=2, full_steps=1, reshape=False, refresh_every=0)
LAYERS = {"visual_transformer_blocks.0.self_attention", "visual_transformer_blocks.1.self_attention"}


@pytest.fixture(scope="module")
def pipe():
    return tiny_kandinsky5_pipeline()


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
def test_bottleneck_only_noise_search_and_guidance_refuse(pipe):
    family = family_named("Kandinsky5")
    assert family_for_pipeline(pipe, "bottleneck") is family and family.supports("bottleneck")
    for feature in ("noise", "guidance"):
        with pytest.raises(UnsupportedModelError, match="Kandinsky5T2VPipeline"):
            family_for_pipeline(pipe, feature)
    with pytest.raises(UnsupportedModelError, match="Kandinsky5T2VPipeline"):
        unbottle.NoiseSearch(pipe, {"red": (lambda images, prompts: images.mean(), 1.0)}, iterations=2)
    assert family.latents.multiple(pipe) == 16  # the pipeline's own check: height and width divisible by 16


def test_the_grid_round_trips_the_pipelines_own_latent_layout(pipe):
    latents = family_named("Kandinsky5").latents
    # the pipeline's text-to-video latents: (B, F', h, w) noise channels last, then zero conditioning and a zero mask
    drawn = pipe.prepare_latents(2, 4, 32, 48, 5, torch.float32, torch.device("cpu"), seed(3))
    assert drawn.shape == (2, 2, 4, 6, 9) and not drawn[..., 4:].any()
    grid = latents.to_grid(pipe, drawn, 32, 48, 5)
    assert grid.shape == (2, 4, 2, 4, 6)  # (B, C, F', h, w)
    b, c, f, y, x = 1, 3, 1, 2, 5
    assert grid[b, c, f, y, x] == drawn[b, f, y, x, c]
    torch.testing.assert_close(latents.from_grid(pipe, grid), drawn, atol=0, rtol=0)
    # the stage output (output_type="latent") is the noise channels alone: the same grid
    torch.testing.assert_close(latents.to_grid(pipe, drawn[..., :4], 32, 48, 5), grid, atol=0, rtol=0)


def test_the_encoding_maps_the_negative_to_its_call_keywords(pipe):
    prompt = family_named("Kandinsky5").prompt
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, max_sequence_length=32)
    embeds = encode_prompt_once(pipe, prompt, kwargs, always_negative=False)
    names = ("prompt_embeds_qwen", "prompt_embeds_clip", "prompt_cu_seqlens")
    assert set(embeds) == {*names, *(f"negative_{n}" for n in names)}  # CFG (guidance_scale 5) uses the negative
    expected = pipe.encode_prompt(NEGATIVE, max_sequence_length=32)
    for name, tensor in zip(names, expected, strict=True):
        torch.testing.assert_close(embeds[f"negative_{name}"], tensor, atol=0, rtol=0)
    assert embeds["prompt_cu_seqlens"].tolist() == [0, 9]  # 8 prompt words and <|im_end|>: the template cropped
    unguided = encode_prompt_once(pipe, prompt, dict(kwargs, guidance_scale=1.0), always_negative=False)
    assert set(unguided) == set(names)  # no CFG, no negative: as the stock call


# -- sparse attention -------------------------------------------------------------------------------------------------
def processors(pipe):
    return dict(pipe.transformer.attn_processors)


def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = processors(pipe)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    assert {k.removesuffix(".processor") for k, p in processors(pipe).items()
            if isinstance(p, unbottle.SparseAttnProcessor)} == LAYERS  # fmt: skip
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {} and max_diff(out, stock) <= 1e-5
    after = processors(pipe)
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(run(pipe), stock)


def test_every_block_kept_runs_the_sparse_path_and_matches_stock_and_low_density_does_not(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, ALL_KEPT)
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)  # one visual length: one pattern per layer
    assert max_diff(out, stock) <= 1e-5
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    out = run(pipe)
    assert set(handle.pattern_computations) == LAYERS
    assert np.isfinite(out).all() and max_diff(out, stock) > 1e-4


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"negative_prompt": NEGATIVE}], ids=["plain", "negative"])
def test_one_stage_bottleneck_is_the_stock_call(pipe, stock, extra):
    base = run(pipe, **extra) if extra else stock
    stage = unbottle.Stage(scale=1.0, steps=CALL["num_inference_steps"], strength=1.0, shift=None)
    out = unbottle.BottleneckSampler(pipe, [stage])(
        PROMPT, generator=seed(), output_type="np", **without_steps(CALL), **extra
    ).frames
    np.testing.assert_array_equal(out, base)
    if extra:
        assert max_diff(base, stock) > 1e-3  # the negative prompt matters (not the default one), so it was used


def test_two_stages_run_the_denoiser_small_then_full_with_clean_conditioning(pipe):
    stages = [unbottle.Stage(scale=0.5, steps=2, strength=1.0, shift=None),
              unbottle.Stage(scale=1.0, steps=2, strength=0.7, shift=None)]  # fmt: skip
    sampler = unbottle.BottleneckSampler(pipe, stages)
    assert [(p.height, p.width) for p in sampler.plan(64, 64, 5)] == [(32, 32), (64, 64)]
    calls, hook = denoiser_inputs(pipe)
    try:
        call = dict(without_steps(CALL), height=64, width=64)
        out = sampler(PROMPT, generator=seed(), output_type="latent", **call).frames
    finally:
        hook.remove()
    shapes = [tuple(x.shape) for _, x in calls]
    assert shapes == [(1, 2, 4, 4, 9)] * 4 + [(1, 2, 8, 8, 9)] * 4  # 2 steps × (cond, uncond): 8 then 32 tokens
    assert calls[0][0] == pytest.approx(1000.0) and calls[4][0] == pytest.approx(700.0)  # σ = 1, then the strength
    assert all(not x[..., 4:].any() for _, x in calls)  # text-to-video: zero conditioning channels and mask
    assert out.shape == (1, 2, 8, 8, 4) and torch.isfinite(out).all()
