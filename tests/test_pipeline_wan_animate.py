"""Wan-Animate (WanAnimatePipeline) at pipeline level: sparse attention on the stock call matches stock in both modes
(density 1, every block kept) and disable restores the processors; bottleneck sampling and noise search refuse the
pipeline, for reasons shown here on the stock pipeline (fresh noise per segment, only the last segment's latents
returned, no `sigmas=`)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from pipeline_checks import max_diff, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_model, family_for_pipeline, family_named
from unbottle.testing.wan_animate import tiny_wan_animate_inputs, tiny_wan_animate_pipeline

PROMPT = "a red circle left of a blue square"
# 32×32 px, segments of 5 frames (1 carried over): latents (1, 16, 1 + 2, 4, 4) → 12 tokens of 1×2×2 patches
CALL = dict(height=32, width=32, segment_frame_length=5, num_inference_steps=2)
ONE_SEGMENT, TWO_SEGMENTS = 5, 9  # pose frames: 9 = 5 + 4 → a second segment after the one carried frame
NOISE = (1, 16, 3, 4, 4)  # one segment's noise: the reference frame + 2 latent frames
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=4, full_steps=1)
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=4, full_steps=1, reshape=False, refresh_every=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=4, full_steps=1, reshape=False, refresh_every=0)
LAYERS = {"blocks.0.attn1", "blocks.1.attn1"}


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_animate_pipeline()


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)  # a failing test must not leave sparse attention on the shared pipeline


def run(pipe, frames=ONE_SEGMENT, mode="animate", s=0, output_type="np", **kwargs):
    inputs = tiny_wan_animate_inputs(frames, replace=mode == "replace")
    return pipe(prompt=PROMPT, **inputs, mode=mode, generator=seed(s), output_type=output_type,
                **{**CALL, **kwargs}).frames  # fmt: skip


def first_inputs(pipe, **kwargs):
    """The transformer's noisy latents (its input's first 16 channels) at each call, and the call's output."""
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["hidden_states"][:, :16].clone()), with_kwargs=True
    )
    try:
        out = run(pipe, **kwargs)
    finally:
        hook.remove()
    return seen, out


# -- the family record ---------------------------------------------------------------------------------------------
def test_the_model_is_wan_animate_for_sparse_and_the_pipeline_for_no_pipeline_feature(pipe):
    assert family_for_model(pipe.transformer, "sparse") is family_named("Wan-Animate")
    for feature in ("bottleneck", "noise", "guidance"):
        with pytest.raises(UnsupportedModelError, match="WanAnimatePipeline"):
            family_for_pipeline(pipe, feature)
    with pytest.raises(UnsupportedModelError, match="WanAnimatePipeline"):
        unbottle.BottleneckSampler(pipe, [unbottle.Stage(scale=1.0, steps=2)])
    with pytest.raises(UnsupportedModelError, match="WanAnimatePipeline"):
        unbottle.NoiseSearch(pipe, {"red": (lambda images, prompts: images.mean(), 1.0)}, seeds=[1], iterations=2)


# -- why: the stock pipeline's noise and latents are per segment ------------------------------------------------------
def test_latents_reach_only_the_first_segment_and_later_segments_draw_their_own_noise(pipe):
    given = torch.randn(NOISE, generator=seed(7))
    runs = {s: first_inputs(pipe, frames=TWO_SEGMENTS, s=s, latents=given)[0] for s in (0, 1)}
    for s, seen in runs.items():
        assert len(seen) == 4  # 2 segments × 2 steps
        torch.testing.assert_close(seen[0], given, atol=0, rtol=0)  # the first segment starts from `latents=`
        drawn = randn_tensor(NOISE, generator=seed(s), dtype=torch.float32)  # the generator's first draw
        torch.testing.assert_close(seen[2], drawn, atol=0, rtol=0)  # ... the second from the pipeline's own noise
    assert max_diff(runs[0][2], runs[1][2]) > 0.1 and max_diff(runs[0][2], given) > 0.1


def test_latent_output_is_the_last_segment_only_and_sigmas_are_not_taken(pipe):
    seen, out = first_inputs(pipe, frames=TWO_SEGMENTS, output_type="latent")
    # the whole 9-frame video has 1 + 3 latent frames; the pipeline hands back one 5-frame segment's 1 + 2
    assert tuple(out.shape) == NOISE and len(seen) == 4
    assert "sigmas" not in inspect.signature(type(pipe).__call__).parameters
    with pytest.raises(TypeError, match="sigmas"):
        run(pipe, sigmas=[1.0, 0.5])


# -- sparse attention ------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe):
    stock = run(pipe)
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    wrapped = {k for k, p in pipe.transformer.attn_processors.items() if isinstance(p, unbottle.SparseAttnProcessor)}
    assert wrapped == {f"{name}.processor" for name in LAYERS}  # cross-attention and the face adapter stay dense
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {} and max_diff(out, stock) <= 1e-5
    after = pipe.transformer.attn_processors
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(run(pipe), stock)


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_every_block_kept_runs_the_sparse_path_and_matches_stock_and_low_density_does_not(pipe, mode):
    stock = run(pipe, mode=mode)
    handle = unbottle.enable_sparse_attention(pipe, ALL_KEPT)
    out = run(pipe, mode=mode)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)
    assert max_diff(out, stock) <= 1e-5
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    out = run(pipe, mode=mode)
    assert set(handle.pattern_computations) == LAYERS
    assert np.isfinite(out).all() and max_diff(out, stock) > 1e-4
