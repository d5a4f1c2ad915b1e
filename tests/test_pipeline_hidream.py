"""HiDream-I1 (HiDreamImagePipeline) at pipeline level: sparse attention on the stock call matches stock (density 1,
every block kept) and disable restores the processors; bottleneck sampling runs each stage at its planned size (the
pipeline's default_sample_size set per stage, since a stock call renders every size at the default area) and one
stage is the stock call; noise optimization refuses the pipeline, for a reason shown here on the stock pipeline (the
MoE's routed experts carry no gradient); exploration (best of N seeds, no gradients) still runs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_checks import max_diff, seed

import unbottle
from unbottle.families import UnsupportedModelError, family_for_pipeline, family_named
from unbottle.testing.hidream import tiny_hidream_pipeline

PROMPT = "a red circle left of a blue square"
# 32×32 px → latents (1, 4, 8, 8) → 16 tokens of 2×2 patches; CFG (guidance_scale 5): a batch of 2 per call
CALL = dict(height=32, width=32, num_inference_steps=2, max_sequence_length=16)
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=4, full_steps=1)
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=4, full_steps=1, reshape=False, refresh_every=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=4, full_steps=1, reshape=False, refresh_every=0)
LAYERS = {"double_stream_blocks.0.block.attn1", "single_stream_blocks.0.block.attn1"}


@pytest.fixture(scope="module")
def pipe():
    return tiny_hidream_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    """The stock output (np) for seed 0 and CALL, before any feature touched the pipeline."""
    return run(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


def run(pipe, s=0, **kwargs):
    return pipe(PROMPT, generator=seed(s), output_type="np", **{**CALL, **kwargs}).images


def processors(pipe):
    """The transformer's attention processors by module name (HiDream's model has no `attn_processors`)."""
    return {name: m.processor for name, m in pipe.transformer.named_modules() if hasattr(m, "processor")}


# -- sparse attention -------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = processors(pipe)
    assert set(originals) == LAYERS
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    assert {k for k, p in processors(pipe).items() if isinstance(p, unbottle.SparseAttnProcessor)} == LAYERS
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
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)  # one joint sequence length: one pattern
    assert max_diff(out, stock) <= 1e-5
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    out = run(pipe)
    assert set(handle.pattern_computations) == LAYERS
    assert np.isfinite(out).all() and max_diff(out, stock) > 1e-4


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
def denoiser_shapes(pipe, call):
    """The transformer's hidden_states shapes over `call()`, and its result."""
    shapes = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: shapes.append(tuple(k["hidden_states"].shape)), with_kwargs=True
    )
    try:
        out = call()
    finally:
        hook.remove()
    return shapes, out


def test_the_stock_pipeline_renders_every_size_at_its_default_area(pipe):
    """Why bottleneck stages set default_sample_size: left alone, a half-size stage would run at the full size, and
    the pipeline refuses a smaller stage's latents."""
    shapes, small = denoiser_shapes(pipe, lambda: run(pipe, height=16, width=16))
    assert small.shape == (1, 32, 32, 3) and shapes == [(2, 4, 8, 8)] * 2
    with pytest.raises(ValueError, match="Unexpected latents shape"):
        pipe(PROMPT, latents=torch.zeros(1, 4, 4, 4), **{**CALL, "height": 16, "width": 16})
    assert run(pipe, height=48, width=32).shape == (1, 32, 24, 3)  # 48 × 32 asked: 32 × 24, about 32² px


def test_one_stage_bottleneck_is_the_stock_call_and_restores_the_pipeline(pipe, stock):
    assert family_for_pipeline(pipe, "bottleneck") is family_named("HiDreamImage")
    scheduler = pipe.scheduler
    sampler = unbottle.BottleneckSampler(pipe, [unbottle.Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(PROMPT, generator=seed(), output_type="np", height=32, width=32, max_sequence_length=16).images
    np.testing.assert_array_equal(out, stock)
    assert pipe.default_sample_size == 8 and pipe.scheduler is scheduler


@pytest.mark.parametrize(("size", "grids"), [((32, 32), ((4, 4), (8, 8))), ((48, 32), ((6, 4), (12, 8)))])
def test_two_stages_run_the_smaller_then_the_full_token_count(pipe, size, grids):
    sampler = unbottle.BottleneckSampler(pipe, [unbottle.Stage(0.5, 2, 1.0, 6.0), unbottle.Stage(1.0, 2, 0.8, 6.0)])
    height, width = size
    shapes, out = denoiser_shapes(pipe, lambda: sampler(PROMPT, generator=seed(), output_type="np", height=height,
                                                        width=width, max_sequence_length=16).images)  # fmt: skip
    small, full = ((2, 4, *grid) for grid in grids)  # CFG: a batch of 2
    assert shapes == [small, small, full, full]
    assert out.shape == (1, height, width, 3) and np.isfinite(out).all()  # as asked, not rescaled to the default area
    assert pipe.default_sample_size == 8


def test_a_failing_stage_still_restores_the_default_sample_size(pipe):
    def fail(pipe, step, timestep, tensors):
        raise RuntimeError("stop")

    sampler = unbottle.BottleneckSampler(pipe, [unbottle.Stage(0.5, 1, 1.0, 6.0), unbottle.Stage(1.0, 1, 0.8, 6.0)])
    with pytest.raises(RuntimeError, match="stop"):
        sampler(PROMPT, generator=seed(), height=32, width=32, max_sequence_length=16, callback_on_step_end=fail)
    assert pipe.default_sample_size == 8


# -- noise optimization refuses it, and why ------------------------------------------------------------------------
def test_noise_optimization_refuses_it_because_the_routed_experts_carry_no_gradient(pipe):
    with pytest.raises(UnsupportedModelError, match="HiDreamImagePipeline"):
        family_for_pipeline(pipe, "noise")
    with pytest.raises(UnsupportedModelError, match="HiDreamImagePipeline"):
        unbottle.NoiseSearch(pipe, {"red": (lambda images, prompts: images.mean(), 1.0)}, iterations=2)
    moe = pipe.transformer.double_stream_blocks[0].block.ff_i
    x = torch.randn(1, 16, moe.gate.gating_dim, generator=seed(1), requires_grad=True)
    v = torch.randn(1, 16, moe.gate.gating_dim, generator=seed(2))
    full, shared = moe(x), moe.shared_experts(x)
    assert max_diff(full.detach(), shared.detach()) > 1e-3  # the routed experts do add to the output ...
    (grad_full,) = torch.autograd.grad((full * v).sum(), x)
    (grad_shared,) = torch.autograd.grad((shared * v).sum(), x)
    torch.testing.assert_close(grad_full, grad_shared, atol=0, rtol=0)  # ... but not to its gradient


def test_exploration_still_picks_the_best_seed_by_stock_calls(pipe):
    def red(images, prompts):
        return images[:, 0].mean((-2, -1))

    search = unbottle.NoiseSearch(pipe, {"red": (red, 1.0)}, seeds=[0, 1], iterations=0, progress=False)
    result = search(PROMPT, output_type="pt", **CALL)
    scores = {s: float(pipe(PROMPT, generator=seed(s), output_type="pt", **CALL).images[:, 0].mean()) for s in (0, 1)}
    assert result.seed == max(scores, key=scores.get) and scores[0] != scores[1]
    assert result.scores["red"] == pytest.approx(scores[result.seed], abs=1e-6)
    assert result.latents is None  # no noise part in the family record: the noise is not reported
