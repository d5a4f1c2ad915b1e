"""Sparse attention on the tiny stock pipelines of every family: exactness at density 1, the sparse path really
running below it, enable/disable/drop-in, pattern caching, CFG branches, per-call reset, schedule (pattern files:
test_pattern_files.py)."""

import re
import warnings

import numpy as np
import pytest
import torch
from diffusers.hooks import HookRegistry

import unbottle
from unbottle.attention_processors import engine, processor
from unbottle.attention_processors.state import CURRENT_FORWARD, LAYER_HOOK
from unbottle.testing import IMAGE_FIXTURES, VIDEO_FIXTURES

ALL = {**IMAGE_FIXTURES, **VIDEO_FIXTURES}
FAMILIES = sorted(ALL)
EXTRA = {
    "stable_diffusion": {}, "sdxl": {}, "sd3": {"max_sequence_length": 16}, "flux": {"max_sequence_length": 16},
    "pixart": {"use_resolution_binning": False}, "cogvideox": {"max_sequence_length": 16},
    "wan": {"max_sequence_length": 16}, "hunyuan_video": {"max_sequence_length": 16},
    "ltx": {"max_sequence_length": 16},
}  # fmt: skip
PROMPT = "a red circle left of a blue square"
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=2)
# no refresh after the first step: a call that started from a previous call's step count or statistics would show
NO_REFRESH = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=0)


def run(pipe, name, seed=0, steps=3, size=32, **kwargs):
    args = dict(
        num_inference_steps=steps, height=size, width=size, output_type="np",
        generator=torch.Generator().manual_seed(seed), **EXTRA[name], **kwargs,
    )  # fmt: skip
    if name in VIDEO_FIXTURES:
        return pipe(PROMPT, num_frames=9, **args).frames
    return pipe(PROMPT, **args).images


def denoiser(pipe):
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def has_sparse_hooks(model):
    hooked = [m for m in model.modules() if hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks]
    return any(name.startswith("unbottle") for m in hooked for name in m._diffusers_hook.hooks)


_BUILT = {}  # family → the module's shared pipeline


@pytest.fixture(scope="module")
def pipes():
    def get(name):
        if name not in _BUILT:
            _BUILT[name] = ALL[name]()
        return _BUILT[name]

    yield get
    _BUILT.clear()


@pytest.fixture(scope="module")
def stock(pipes):
    """Stock outputs, computed once per (family, seed, steps, size) before anything is enabled on that pipeline."""
    cache = {}

    def get(name, seed=0, steps=3, size=32):
        key = (name, seed, steps, size)
        if key not in cache:
            pipe = pipes(name)
            assert not has_sparse_hooks(denoiser(pipe))
            cache[key] = run(pipe, name, seed, steps, size)
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _always_disable():
    yield
    for pipe in _BUILT.values():  # a failing test must not leave sparse attention on a shared pipeline
        unbottle.disable_sparse_attention(pipe)


# -- 1. exactness at density 1.0, and the sparse path really running below it ----------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_density_one_enable_matches_stock_and_disable_restores(name, pipes, stock):
    pipe, base = pipes(name), stock(name)
    model = denoiser(pipe)
    originals = dict(model.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        assert handle.layer_hooks
        out = run(pipe, name)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert out.shape == base.shape and max_diff(out, base) <= 1e-5
    assert model.attn_processors.keys() == originals.keys()
    assert all(model.attn_processors[key] is proc for key, proc in originals.items())
    assert not has_sparse_hooks(model)
    np.testing.assert_array_equal(run(pipe, name), base)


@pytest.mark.parametrize("name", FAMILIES)
def test_sparse_path_runs_below_density_one(name, pipes, stock):
    pipe, base = pipes(name), stock(name)
    model = denoiser(pipe)
    originals = dict(model.attn_processors)
    modules = dict(model.named_modules())
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        wrapped = {k for k, p in model.attn_processors.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        out = run(pipe, name)
        computed = handle.pattern_computations
    finally:
        unbottle.disable_sparse_attention(pipe)
    # only self-attention is wrapped; cross-attention keeps its very processor
    assert wrapped
    for key, proc in originals.items():
        module = modules[key.removesuffix(".processor")]
        if key in wrapped:
            assert not getattr(module, "is_cross_attention", False), key
        else:
            assert model.attn_processors[key] is proc
    # every sparse layer computed its cached pattern once, and the output moved away from the stock one
    assert set(computed) == {k.removesuffix(".processor") for k in wrapped}
    assert all(count == 1 for count in computed.values()), computed
    assert np.isfinite(out).all() and out.shape == base.shape
    assert max_diff(out, base) > 1e-5
    # disable: the same processor objects, the same output bit for bit
    assert all(model.attn_processors[key] is proc for key, proc in originals.items())
    np.testing.assert_array_equal(run(pipe, name), base)


@pytest.mark.parametrize("name", FAMILIES)
def test_drop_in_processor(name, stock):
    base = stock(name)
    pipe = ALL[name]()  # a fresh copy (same weights): the drop-in form replaces every processor
    model = denoiser(pipe)
    original_types = {k: type(p) for k, p in model.attn_processors.items()}
    model.set_attn_processor(unbottle.SparseAttnProcessor(DENSE))
    assert all(isinstance(p, unbottle.SparseAttnProcessor) for p in model.attn_processors.values())
    out = run(pipe, name)
    assert max_diff(out, base) <= 1e-5
    unbottle.disable_sparse_attention(pipe)
    assert {k: type(p) for k, p in model.attn_processors.items()} == original_types
    np.testing.assert_array_equal(run(pipe, name), base)

    model.set_attn_processor(unbottle.SparseAttnProcessor(SPARSE))
    sparse = run(pipe, name)
    assert np.isfinite(sparse).all() and max_diff(sparse, base) > 1e-5
    unbottle.disable_sparse_attention(pipe)
    assert not any(isinstance(p, unbottle.SparseAttnProcessor) for p in model.attn_processors.values())
    assert not has_sparse_hooks(model)
    np.testing.assert_array_equal(run(pipe, name), base)


def test_a_drop_in_replaced_by_hand_gives_way_to_the_next():
    """set_attn_processor(stock) over a drop-in, then another drop-in: its first forward replaces the old hooks."""
    pipe, fresh = ALL["wan"](), ALL["wan"]()
    model = denoiser(pipe)
    stock_processors = dict(model.attn_processors)
    model.set_attn_processor(unbottle.SparseAttnProcessor(SPARSE))
    run(pipe, "wan")
    model.set_attn_processor(dict(stock_processors))  # by hand, not disable_sparse_attention: its hooks stay
    assert has_sparse_hooks(model)
    model.set_attn_processor(unbottle.SparseAttnProcessor(NO_REFRESH))
    denoiser(fresh).set_attn_processor(unbottle.SparseAttnProcessor(NO_REFRESH))
    np.testing.assert_array_equal(run(pipe, "wan"), run(fresh, "wan"))  # as if the first had never been set
    unbottle.disable_sparse_attention(pipe)
    assert not has_sparse_hooks(model)


def test_a_drop_in_is_refused_over_enable_and_beside_another():
    pipe = ALL["wan"]()
    model = denoiser(pipe)
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    first = next(m for n, m in model.named_modules() if n.endswith("attn1"))
    first.set_processor(unbottle.SparseAttnProcessor(NO_REFRESH))
    with pytest.raises(RuntimeError, match=r"enabled on this WanTransformer3DModel by unbottle\.enable_sparse"):
        run(pipe, "wan")
    handle.disable()
    model.set_attn_processor(unbottle.SparseAttnProcessor(SPARSE))
    run(pipe, "wan")
    first.set_processor(unbottle.SparseAttnProcessor(NO_REFRESH))  # beside the one set on every other module
    with pytest.raises(RuntimeError, match="another SparseAttnProcessor is set on modules of this"):
        run(pipe, "wan")


# -- token layouts the adapters hand to the layers --------------------------------------------------------------------
# the largest self-attention of each family at 32×32 (× 9 frames): (frames, rows, columns) of latent patches, number
# of text tokens in the joint sequence and whether they come first (derived from the fixture configs: VAE and patch
# downsampling, max_sequence_length=16, CLIP's 77 tokens in SD3)
LAYOUTS = {
    "stable_diffusion": ((1, 8, 8), 0, True),  # VAE ×2, attention only below the first UNet downsample
    "sdxl": ((1, 8, 8), 0, True),  # attention only below the first UNet downsample
    "sd3": ((1, 32, 32), 77 + 16, False),  # flat VAE, patch 1, [image, text]
    "flux": ((1, 16, 16), 16, True),  # flat VAE, 2×2 packing, [text, image]
    "pixart": ((1, 8, 8), 0, True),  # VAE ×2, patch 2
    "cogvideox": ((3, 2, 2), 16, True),  # VAE ×8 / ×4, patch 2, [text, video]
    "wan": ((3, 2, 2), 0, True),  # VAE ×8 / ×4, patch 1×2×2
    "hunyuan_video": ((3, 4, 4), 16, False),  # VAE ×8 / ×4, patch 1, [video, text]
    "ltx": ((3, 8, 8), 0, True),  # VAE ×4 / ×4, patch 1
}


@pytest.mark.parametrize("name", FAMILIES)
def test_layers_see_the_token_layout(name, pipes, monkeypatch):
    seen = []
    attend = processor.SparseLayer.attend

    def recording(self, q, k, v, attn_mask=None, scale=None):
        info = CURRENT_FORWARD.get()
        seen.append((q.shape[2], info.layout if info is not None else None))
        return attend(self, q, k, v, attn_mask=attn_mask, scale=scale)

    monkeypatch.setattr(processor.SparseLayer, "attend", recording)
    pipe = pipes(name)
    unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        run(pipe, name, steps=2)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert seen
    for n, layout in seen:
        assert layout is not None
        (f, h, w), text_len, _ = layout.resolve(n)
        assert f * h * w + text_len == n and (f, h, w) != (1, 1, n), (n, layout)
    n_max, layout = max(seen, key=lambda item: item[0])
    assert layout.resolve(n_max) == LAYOUTS[name]


# -- 5. enable / disable bookkeeping ---------------------------------------------------------------------------------
def test_enable_twice_raises_and_keeps_the_first(pipes, stock):
    pipe, base = pipes("flux"), stock("flux")
    model = denoiser(pipe)
    originals = dict(model.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        installed = dict(model.attn_processors)
        for target in (pipe, model):
            with pytest.raises(RuntimeError, match=r"already enabled.*disable_sparse_attention"):
                unbottle.enable_sparse_attention(target, DENSE)
        assert all(model.attn_processors[k] is p for k, p in installed.items())
        assert run(pipe, "flux") is not None and handle.pattern_computations
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert all(model.attn_processors[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(run(pipe, "flux"), base)


def test_disable_without_enable_is_a_no_op(pipes, stock):
    pipe = pipes("pixart")
    model = denoiser(pipe)
    before = dict(model.attn_processors)
    unbottle.disable_sparse_attention(pipe)
    unbottle.disable_sparse_attention(model)
    assert all(model.attn_processors[k] is p for k, p in before.items())
    unbottle.enable_sparse_attention(pipe, SPARSE)
    unbottle.disable_sparse_attention(pipe)
    unbottle.disable_sparse_attention(pipe)  # twice: still fine
    assert all(model.attn_processors[k] is p for k, p in before.items())
    np.testing.assert_array_equal(run(pipe, "pixart"), stock("pixart"))


def test_enable_on_the_denoiser_and_disable_through_the_pipeline(pipes, stock):
    pipe = pipes("stable_diffusion")
    handle = unbottle.enable_sparse_attention(pipe.unet, SPARSE)
    try:
        assert handle.model is pipe.unet
        out = run(pipe, "stable_diffusion")
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations and max_diff(out, stock("stable_diffusion")) > 1e-5
    np.testing.assert_array_equal(run(pipe, "stable_diffusion"), stock("stable_diffusion"))


# -- 4. pattern caching ----------------------------------------------------------------------------------------------
def _counting(monkeypatch, attr):
    calls = []
    original = getattr(engine, attr)

    def counting(*args, **kwargs):
        calls.append(args[0].shape[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, attr, counting)
    return calls


def test_cached_patterns_once_per_layer_and_resolution(pipes, monkeypatch):
    importance = _counting(monkeypatch, "exact_block_importance")
    pooled = _counting(monkeypatch, "pooled_scores")
    pipe = pipes("flux")
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=1)
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        layers = set(handle.layer_hooks)
        run(pipe, "flux", steps=4)
        assert handle.pattern_computations == dict.fromkeys(layers, 1)
        first = {key: tuple(t.clone() for t in value) for key, value in handle.store.patterns.items()}
        run(pipe, "flux", steps=4, seed=1)  # another call, same resolution: reused
        assert handle.pattern_computations == dict.fromkeys(layers, 1)
        assert handle.store.patterns.keys() == first.keys()
        for key, (indices, counts) in first.items():
            assert torch.equal(handle.store.patterns[key][0], indices)
            assert torch.equal(handle.store.patterns[key][1], counts)
        assert len(importance) == len(layers)
        run(pipe, "flux", steps=2, size=16)  # a new resolution: a new pattern per layer
        assert handle.pattern_computations == dict.fromkeys(layers, 2)
        assert len({key[1] for key in handle.store.patterns}) == 2  # (layer, tokens, block, grid..., text...)
        run(pipe, "flux", steps=2, size=32)  # back to the first: still cached
        assert handle.pattern_computations == dict.fromkeys(layers, 2)
        assert len(importance) == 2 * len(layers) and pooled == []
    finally:
        unbottle.disable_sparse_attention(pipe)


@pytest.mark.parametrize("pattern", ["window", "cached"])
def test_same_token_count_other_grid_gets_its_own_pattern(pipes, pattern):
    pipe = pipes("flux")
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, pattern=pattern)
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        pipe(PROMPT, height=16, width=32, num_inference_steps=2, max_sequence_length=16, output_type="np")
        pipe(PROMPT, height=32, width=16, num_inference_steps=2, max_sequence_length=16, output_type="np")
        assert set(handle.pattern_computations.values()) == {2}
    finally:
        unbottle.disable_sparse_attention(pipe)


def test_dynamic_pattern_recomputed_every_sparse_step(pipes, monkeypatch):
    pooled = _counting(monkeypatch, "pooled_scores")
    importance = _counting(monkeypatch, "exact_block_importance")
    pipe = pipes("flux")
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, pattern="dynamic", reshape=False)
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        run(pipe, "flux", steps=4)
        n_layers = len(handle.layer_hooks)
        assert len(pooled) == n_layers * 3  # steps 1, 2, 3 are sparse; step 0 is dense
        run(pipe, "flux", steps=4)
        assert len(pooled) == n_layers * 6
        assert handle.store.patterns == {} and handle.pattern_computations == {} and importance == []
    finally:
        unbottle.disable_sparse_attention(pipe)


# -- 4. CFG branches and per-call reset ------------------------------------------------------------------------------
def _drop_in_hooks(model):
    return {
        name: module._diffusers_hook.get_hook(LAYER_HOOK)
        for name, module in model.named_modules()
        if hasattr(module, "_diffusers_hook") and module._diffusers_hook.get_hook(LAYER_HOOK) is not None
    }


def _wan_with_branch_probe(pipe, hooks_of):
    """Run Wan with true CFG; at the end of every step record each layer's per-branch ρ."""
    seen = []

    def probe(_pipe, step, timestep, callback_kwargs):
        seen.append({name: {b: s.rho for b, s in hook.states.items()} for name, hook in hooks_of().items()})
        return callback_kwargs

    out = run(pipe, "wan", guidance_scale=5.0, negative_prompt="blue", callback_on_step_end=probe)
    return out, seen


def test_cfg_branches_keep_separate_state():
    pipe = ALL["wan"]()  # fresh: sparse attention is the first thing that touches its hooks
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        _, seen = _wan_with_branch_probe(pipe, lambda: handle.layer_hooks)
        assert len(seen) == 3 and all(len(step) == len(handle.layer_hooks) for step in seen)
        for step in seen:
            for name, branches in step.items():
                assert set(branches) == {"cond", "uncond"}, (name, set(branches))
                assert branches["cond"] is not None and branches["uncond"] is not None
            # block 0 sees the same latents in both branches; after a cross-attention the prompts make them differ
            assert any(not torch.equal(b["cond"], b["uncond"]) for b in step.values())
        # the pipeline's end-of-call reset cleared every branch
        assert all(hook.states == {} for hook in handle.layer_hooks.values())
    finally:
        unbottle.disable_sparse_attention(pipe)


@pytest.mark.parametrize("form", ["enable_after_stock_run", "drop_in"])
def test_cfg_branches_separate_whatever_ran_before(form):
    pipe = ALL["wan"]()
    if form == "enable_after_stock_run":
        fresh = ALL["wan"]()
        handle = unbottle.enable_sparse_attention(fresh, SPARSE)
        expected, _ = _wan_with_branch_probe(fresh, lambda: handle.layer_hooks)
        run(pipe, "wan", guidance_scale=5.0, negative_prompt="blue")  # a stock call first
        handle2 = unbottle.enable_sparse_attention(pipe, SPARSE)
        out, seen = _wan_with_branch_probe(pipe, lambda: handle2.layer_hooks)
        np.testing.assert_allclose(out, expected, atol=1e-6)
        assert seen and all(set(b) == {"cond", "uncond"} for step in seen for b in step.values()), seen[-1]
    else:
        fresh = ALL["wan"]()
        handle = unbottle.enable_sparse_attention(fresh, SPARSE)
        expected, _ = _wan_with_branch_probe(fresh, lambda: handle.layer_hooks)
        pipe.transformer.set_attn_processor(unbottle.SparseAttnProcessor(SPARSE))
        out, seen = _wan_with_branch_probe(pipe, lambda: _drop_in_hooks(pipe.transformer))
        # the drop-in form attaches during its first forward ("cond", whose name had gone by): that state waits under
        # "_" until the cond branch's next step adopts it, so the outputs match the enabled form exactly
        np.testing.assert_allclose(out, expected, atol=1e-6)
        assert seen and all(set(b) == {"cond", "uncond"} for step in seen[1:] for b in step.values()), seen[-1]


@pytest.mark.parametrize("name", ["wan", "flux", "stable_diffusion", "pixart"])
def test_no_state_leaks_between_calls(name, pipes, stock):
    # Wan / Flux: CacheMixin (the pipeline resets stateful hooks); SD / PixArt: the clock sees the timestep rise
    pipe = pipes(name)
    handle = unbottle.enable_sparse_attention(pipe, NO_REFRESH)
    try:
        first = run(pipe, name)
        second = run(pipe, name)
        run(pipe, name, seed=1, steps=2)  # a different call in between
        third = run(pipe, name)
        assert handle.pattern_computations
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert max_diff(first, stock(name)) > 1e-5
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)


@pytest.mark.parametrize(
    "name",
    [
        "flux",
        "stable_diffusion",
        "pixart",
    ],
)  # fmt: skip
def test_drop_in_no_state_leaks_between_calls(name):
    pipe = ALL[name]()
    denoiser(pipe).set_attn_processor(unbottle.SparseAttnProcessor(NO_REFRESH))
    first = run(pipe, name)
    second = run(pipe, name)
    np.testing.assert_array_equal(first, second)


# -- 4. schedule: the first full_steps steps are the stock dense attention -------------------------------------------
def _latents_per_step(pipe, name, steps, sparse_calls=None):
    latents, counts = [], []

    def probe(_pipe, step, timestep, callback_kwargs):
        latents.append(callback_kwargs["latents"].clone())
        if sparse_calls is not None:
            counts.append(len(sparse_calls))
        return callback_kwargs

    run(pipe, name, steps=steps, callback_on_step_end=probe)
    per_step = [b - a for a, b in zip([0, *counts[:-1]], counts, strict=True)] if sparse_calls is not None else None
    return latents, per_step


@pytest.mark.parametrize(
    ("full_steps", "reshape", "exact_steps"),
    [(2, False, 2), (2, True, 2), (0.5, False, 2), (0.5, True, 2), (1, False, 1), (3, True, 3)],
)
def test_first_full_steps_equal_dense(pipes, monkeypatch, full_steps, reshape, exact_steps):
    pipe, steps = pipes("flux"), 4
    stock_latents, _ = _latents_per_step(pipe, "flux", steps)
    sparse_calls = _counting(monkeypatch, "block_sparse_attention")
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=full_steps, reshape=reshape,
                                         refresh_every=0)  # fmt: skip
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        latents, per_step = _latents_per_step(pipe, "flux", steps, sparse_calls)
        n_layers = len(handle.layer_hooks)
    finally:
        unbottle.disable_sparse_attention(pipe)
    for step in range(steps):
        diff = (latents[step] - stock_latents[step]).abs().max().item()
        if step < exact_steps:
            assert diff <= 1e-5, (step, diff)
        else:
            assert diff > 1e-6, (step, diff)
    # sparse attention runs on every layer of every step after the full ones (and on the refresh step, for ρ and R)
    expected_sparse = [0] * (exact_steps - 1) + [n_layers if reshape else 0] + [n_layers] * (steps - exact_steps)
    assert per_step == expected_sparse


def test_fraction_schedule_from_timesteps_without_step_count(pipes, monkeypatch):
    # enabled on the bare transformer: no scheduler to ask and Flux's cache context has no step count, so the clock
    # must place the fraction by timestep: a run of dense steps, then sparse steps
    pipe = pipes("flux")
    sparse_calls = _counting(monkeypatch, "block_sparse_attention")
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=0.5, reshape=False)
    unbottle.enable_sparse_attention(pipe.transformer, cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no "number of steps unknown" fallback
            _, per_step = _latents_per_step(pipe, "flux", 6, sparse_calls)
    finally:
        unbottle.disable_sparse_attention(pipe)
    kinds = ["S" if c else "D" for c in per_step]
    assert re.fullmatch(r"D+S+", "".join(kinds)), kinds


def test_registry_is_clean_after_disable(pipes):
    pipe = pipes("ltx")
    model = denoiser(pipe)
    unbottle.enable_sparse_attention(pipe, SPARSE)
    assert has_sparse_hooks(model)
    unbottle.disable_sparse_attention(pipe)
    assert not has_sparse_hooks(model)
    assert HookRegistry.check_if_exists_or_initialize(model).get_hook("unbottle_sparse_clock") is None
