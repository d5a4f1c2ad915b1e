"""Wan 2.2 A14B-style pipelines (two experts, `transformer` then `transformer_2` at `boundary_ratio`): sparse attention
covers both experts (stock at density 1, each expert its own patterns, one step clock across the switch, one pattern
file for both, disable restores both), one-stage bottleneck sampling is the stock pipeline and a noise-search step
runs through both experts."""

import numpy as np
import pytest
import torch
from pipeline_checks import Channel, max_diff
from safetensors import safe_open

import unbottle
from unbottle.attention_processors import PipelineSparseAttention
from unbottle.attention_processors import state as state_module
from unbottle.attention_processors.enable import attention_processors
from unbottle.attention_processors.state import CURRENT_FORWARD
from unbottle.families import family_for_pipeline
from unbottle.pipelines import noise_search
from unbottle.testing.wan22 import tiny_wan22_pipeline

PROMPT = "a red circle left of a blue square"
CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=4, max_sequence_length=16, guidance_scale=4.0)
EXPERTS = ("transformer", "transformer_2")
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=2, full_steps=1)
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=2, full_steps=1)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=2, full_steps=1, pattern="cached")


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan22_pipeline()


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


def run(pipe, seed=0, **kwargs):
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="np", **{**CALL, **kwargs}).frames


def expert_calls(pipe):
    """(expert, step the sparse clock gave the forward) of every denoiser call, recorded by forward hooks."""
    seen, hooks = [], []
    for name in EXPERTS:

        def record(module, args, kwargs, output, name=name):
            seen.append(name)

        hooks.append(getattr(pipe, name).register_forward_hook(record, with_kwargs=True))
    return seen, hooks


def test_the_fixture_switches_experts_at_the_boundary(pipe):
    seen, hooks = expert_calls(pipe)
    try:
        run(pipe)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == ["transformer"] * 4 + ["transformer_2"] * 4  # 4 steps, cond + uncond, 2 on each side of t = 875


def test_density_one_covers_both_experts_and_is_stock(pipe):
    stock = run(pipe)
    before = {name: dict(attention_processors(getattr(pipe, name))) for name in EXPERTS}
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    assert isinstance(handle, PipelineSparseAttention) and list(handle.handles) == list(EXPERTS)
    assert handle["transformer"].model is pipe.transformer and handle["transformer_2"].model is pipe.transformer_2
    assert set(handle.layer_hooks) == {f"{e}.blocks.{i}.attn1" for e in EXPERTS for i in (0, 1)}
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {} and max_diff(out, stock) <= 1e-5
    for name in EXPERTS:
        after = attention_processors(getattr(pipe, name))
        assert all(after[k] is before[name][k] for k in before[name]) and after.keys() == before[name].keys()
    np.testing.assert_array_equal(run(pipe), stock)


def test_every_block_kept_runs_both_experts_sparse_and_matches_stock(pipe):
    stock = run(pipe)
    handle = unbottle.enable_sparse_attention(pipe, ALL_KEPT)
    out = run(pipe)
    assert handle.pattern_computations == {f"{e}.blocks.{i}.attn1": 1 for e in EXPERTS for i in (0, 1)}
    assert max_diff(out, stock) <= 1e-5


def test_low_density_keeps_a_pattern_store_per_expert(pipe):
    stock = run(pipe)
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    out = run(pipe)
    high, low = handle["transformer"].store, handle["transformer_2"].store
    assert high is not low and set(high.computed) == {"blocks.0.attn1", "blocks.1.attn1"} == set(low.computed)
    key = next(k for k in high.patterns if k[0] == "blocks.0.attn1")
    assert key in low.patterns  # the same layer and size, patterned from each expert's own attention
    assert max_diff(out, stock) > 1e-4


@pytest.mark.parametrize("step_index_in_context", [True, False])
def test_one_step_clock_runs_across_the_expert_switch(pipe, monkeypatch, step_index_in_context):
    if not step_index_in_context:  # a pipeline that names no step: the clock goes by the falling timestep alone
        monkeypatch.setattr(state_module, "context_step", lambda context: (None, None))
    unbottle.enable_sparse_attention(pipe, SPARSE)
    steps = []
    for name in EXPERTS:
        module = getattr(pipe, name).blocks[0].attn1
        hook = module.register_forward_pre_hook(
            lambda m, a, name=name: steps.append((name, CURRENT_FORWARD.get().step))
        )
        monkeypatch.setattr(module, "_test_hook", hook, raising=False)
    for _ in range(2):  # a second generation starts again at step 0 on the high-noise expert
        run(pipe)
        expected = [("transformer", s) for s in (0, 0, 1, 1)] + [("transformer_2", s) for s in (2, 2, 3, 3)]
        assert steps == expected
        steps.clear()
    for name in EXPERTS:
        getattr(pipe, name).blocks[0].attn1._test_hook.remove()


def test_a_new_generation_clears_the_other_experts_states(pipe):
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=gen),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=gen), return_dict=False)  # fmt: skip
    low = handle["transformer_2"].layer_hooks["blocks.0.attn1"]
    with torch.no_grad():
        for model, t in ((pipe.transformer, 999.0), (pipe.transformer, 900.0), (pipe.transformer_2, 500.0)):
            model(timestep=torch.tensor([t]), **inputs)
        assert low.states and handle["transformer_2"].clock.clocks[next(iter(low.states))].step == 2  # shared clock
        pipe.transformer(timestep=torch.tensor([999.0]), **inputs)  # a new generation, seen by the high-noise expert
    assert low.states == {}  # ... clears the low-noise expert's statistics too


def test_the_expert_that_hands_over_releases_its_statistics(pipe):
    stock = run(pipe)
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    held = []  # (expert called, branches holding statistics in each expert's layers) before every denoiser call
    hooks = [
        getattr(pipe, name).register_forward_pre_hook(
            lambda m, a, name=name: held.append(
                (name, *(sum(len(h.states) for h in handle[e].layer_hooks.values()) for e in EXPERTS))
            )
        )
        for name in EXPERTS
    ]
    try:
        first = run(pipe)
    finally:
        for hook in hooks:
            hook.remove()
    # 2 layers × (cond, uncond) held by the running expert; the high-noise expert's released once the low-noise one
    # ran (a pre-hook sees the state before the denoiser's own hooks run)
    assert held == [("transformer", 0, 0), ("transformer", 2, 0), ("transformer", 4, 0), ("transformer", 4, 0),
                    ("transformer_2", 4, 0), ("transformer_2", 0, 2), ("transformer_2", 0, 4), ("transformer_2", 0, 4)]
    np.testing.assert_array_equal(run(pipe), first)  # the next generation refreshes them: the same output
    assert max_diff(first, stock) > 1e-4


def test_one_pattern_file_holds_both_experts_and_reloads_exactly(pipe, tmp_path):
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    first = run(pipe)
    path = unbottle.save_head_patterns(pipe, tmp_path / "p.safetensors")
    with safe_open(path, "pt") as f:
        metadata, names = f.metadata(), list(f.keys())
    assert metadata["denoisers"] == "transformer,transformer_2"
    assert metadata["model_class"] == "WanTransformer3DModel,WanTransformer3DModel"
    assert {n.split(":")[0] for n in names} == set(EXPERTS) and len(names) == 2 * sum(
        len(h.store.patterns) for h in handle.handles.values()
    )
    saved = {e: dict(handle[e].store.patterns) for e in EXPERTS}
    unbottle.disable_sparse_attention(pipe)
    fresh = unbottle.enable_sparse_attention(pipe, SPARSE)
    assert unbottle.load_head_patterns(pipe, path) == len(names) // 2
    for e in EXPERTS:
        assert fresh[e].store.patterns.keys() == saved[e].keys()
        for key, (indices, counts) in saved[e].items():
            assert torch.equal(fresh[e].store.patterns[key][0], indices)
            assert torch.equal(fresh[e].store.patterns[key][1], counts)
    np.testing.assert_allclose(run(pipe), first, atol=1e-6, rtol=0)  # the loaded patterns, not new ones
    assert fresh.pattern_computations == {}


def test_a_single_expert_file_is_refused_by_the_pipeline_and_back(pipe, tmp_path):
    unbottle.enable_sparse_attention(pipe.transformer, SPARSE)
    run(pipe)
    single = unbottle.save_head_patterns(pipe.transformer, tmp_path / "one.safetensors")
    unbottle.disable_sparse_attention(pipe)
    unbottle.enable_sparse_attention(pipe, SPARSE)
    with pytest.raises(ValueError, match=r"made for model_class='WanTransformer3DModel', but this model/config has "
                                         r"model_class='WanTransformer3DModel,WanTransformer3DModel'"):  # fmt: skip
        unbottle.load_head_patterns(pipe, single)
    run(pipe)
    both = unbottle.save_head_patterns(pipe, tmp_path / "both.safetensors")
    with pytest.raises(ValueError, match="made for model_class='WanTransformer3DModel,WanTransformer3DModel'"):
        unbottle.load_head_patterns(pipe.transformer, both)


def test_an_unsupported_second_denoiser_changes_nothing(pipe, monkeypatch):
    before = dict(attention_processors(pipe.transformer))

    class Refiner(torch.nn.Module):
        def forward(self, x):
            return x

    monkeypatch.setattr(pipe, "transformer_2", Refiner())
    with pytest.raises(ValueError, match="Refiner"):
        unbottle.enable_sparse_attention(pipe, SPARSE)
    after = attention_processors(pipe.transformer)
    assert all(after[k] is before[k] for k in before)
    assert getattr(pipe.transformer, "_unbottle_sparse", None) is None


def test_one_stage_bottleneck_is_the_stock_two_expert_pipeline(pipe):
    stock = run(pipe)
    stage = unbottle.Stage(scale=1.0, steps=4, strength=1.0, shift=None)
    out = unbottle.BottleneckSampler(pipe, [stage])(
        PROMPT, generator=torch.Generator().manual_seed(0), output_type="np",
        **{k: v for k, v in CALL.items() if k != "num_inference_steps"},
    ).frames  # fmt: skip
    np.testing.assert_array_equal(out, stock)


def test_a_two_stage_plan_runs_both_experts_at_each_size(pipe):
    shapes = []
    hooks = [getattr(pipe, e).register_forward_pre_hook(
        lambda m, a, k, e=e: shapes.append((e, tuple(k["hidden_states"].shape[-2:]))), with_kwargs=True)
        for e in EXPERTS]  # fmt: skip
    stages = [unbottle.Stage(scale=0.5, steps=2, strength=1.0, shift=3.0),
              unbottle.Stage(scale=1.0, steps=2, strength=0.8, shift=3.0)]  # fmt: skip
    try:
        unbottle.BottleneckSampler(pipe, stages)(
            PROMPT, generator=torch.Generator().manual_seed(0), output_type="np",
            **{k: v for k, v in CALL.items() if k != "num_inference_steps"} | {"height": 64, "width": 64},
        )  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    sizes = [s for _, s in shapes]
    assert sizes[:4] == [(4, 4)] * 4 and sizes[4:] == [(8, 8)] * 4  # latents of 32 px (VAE ×8), then of 64 px
    assert {e for e, _ in shapes} == set(EXPERTS)


def test_noise_search_steps_through_both_experts(pipe):
    call = dict(CALL, num_inference_steps=2, num_frames=1)
    noise, _ = noise_search.draw_noise(pipe, family_for_pipeline(pipe, "noise"), call, 3, torch.float32)
    stock = pipe(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **call).frames
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 10.0)}, seeds=[3], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", **call)
    first, second = result.history[3]
    assert first.grad_norms and all(np.isfinite(v) and v > 0 for v in first.grad_norms.values())
    assert second.loss != first.loss
    assert result.history[3][0].scores["red"] == pytest.approx(float(stock[:, :, 0].mean()), abs=1e-4)  # stock noise
    assert noise.shape == (1, 16, 1, 4, 4)
