"""Bottleneck sampling on the tiny stock pipelines: one stage is the stock pipeline, stages run the steps and sizes
asked for, outputs keep the pipeline's type and size, seeds decide everything, bad stages are refused by name, the
σ grids follow diffusers' own shifting, and sparse attention keeps working (patterns per resolution) across stages."""

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image

import unbottle
from unbottle.pipelines.bottleneck_presets import PRESETS
from unbottle.pipelines.bottleneck_schedule import StageScheduler, pipeline_shift, stage_sigmas, time_shift
from unbottle.pipelines.resample import RESAMPLE_MODES, lanczos_matrix, resize_latents
from unbottle.testing import (
    tiny_flux_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_ltx_pipeline,
    tiny_pixart_pipeline,
    tiny_sd3_pipeline,
    tiny_wan_pipeline,
)
from unbottle.testing.flux2 import tiny_flux2_pipeline
from unbottle.testing.hunyuan_video15 import tiny_hunyuan_video15_pipeline
from unbottle.testing.qwen_image import tiny_qwen_image_pipeline

Stage = unbottle.Stage
PROMPT = "a red circle left of a blue square"
FIXTURES = {
    "flux": tiny_flux_pipeline, "sd3": tiny_sd3_pipeline, "wan": tiny_wan_pipeline,
    "hunyuan_video": tiny_hunyuan_video_pipeline, "ltx": tiny_ltx_pipeline,
}  # fmt: skip
# the other families of the presets (their pipelines' own tests: tests/test_pipeline_*.py)
PRESET_FIXTURES = {"qwen_image": tiny_qwen_image_pipeline, "flux2": tiny_flux2_pipeline,
                   "hunyuan_video15": tiny_hunyuan_video15_pipeline}  # fmt: skip
# sizes at which every family's half-size stage still has several tokens (Wan, HunyuanVideo: 16 px grid; LTX: 32 px)
CALL = {
    "flux": dict(height=32, width=32, max_sequence_length=16),
    "sd3": dict(height=16, width=16, max_sequence_length=16),
    "wan": dict(height=64, width=64, num_frames=5, max_sequence_length=16),
    "hunyuan_video": dict(height=32, width=32, num_frames=5, max_sequence_length=16),
    "ltx": dict(height=64, width=64, num_frames=5, max_sequence_length=16),
}
THREE = [Stage(scale=1.0, steps=2, strength=1.0, shift=9.0), Stage(scale=0.5, steps=3, strength=0.8, shift=6.0),
         Stage(scale=1.0, steps=2, strength=0.6, shift=9.0)]  # fmt: skip
NAN, INF = float("nan"), float("inf")

_BUILT = {}


@pytest.fixture(scope="module")
def pipes():
    def get(name):
        if name not in _BUILT:
            _BUILT[name] = {**FIXTURES, **PRESET_FIXTURES}[name]()
        return _BUILT[name]

    yield get
    _BUILT.clear()


@pytest.fixture(autouse=True)
def _always_disable():
    yield
    for pipe in _BUILT.values():  # a failing test must not leave sparse attention on a shared pipeline
        unbottle.disable_sparse_attention(pipe)


def seed(s=0):
    return torch.Generator().manual_seed(s)


def pixels(out):
    return np.asarray(out.frames if hasattr(out, "frames") else out.images, dtype=np.float64)


def stock(pipe, name, steps, s=0, **kwargs):
    return pipe(PROMPT, num_inference_steps=steps, generator=seed(s), output_type="np", **{**CALL[name], **kwargs})


def sample(pipe, name, stages, s=0, **kwargs):
    sampler = unbottle.BottleneckSampler(pipe, stages)
    return sampler(PROMPT, generator=seed(s), output_type="np", **{**CALL[name], **kwargs})


class Recorder:
    """A transformer forward pre-hook recording (timestep, hidden_states shape) of every call."""

    def __init__(self, pipe):
        self.calls = []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((float(kwargs["timestep"].flatten()[0]), tuple(kwargs["hidden_states"].shape)))

    def take(self):
        calls, self.calls = self.calls, []
        return calls

    def remove(self):
        self.handle.remove()


# -- 1. one stage at scale 1, strength 1, shift None is the stock pipeline --------------------------------------------
ONE_STAGE_CASES = [
    ("flux", {}), ("flux", {"negative_prompt": "a green cube", "true_cfg_scale": 2.0}),
    ("sd3", {"guidance_scale": 1.0}), ("sd3", {"guidance_scale": 5.0, "negative_prompt": "a green cube"}),
    ("sd3", {"guidance_scale": 7.0}),
    ("wan", {"guidance_scale": 1.0}), ("wan", {"guidance_scale": 5.0, "negative_prompt": "a green cube"}),
    ("hunyuan_video", {}), ("hunyuan_video", {"negative_prompt": "a green cube", "true_cfg_scale": 2.0}),
    ("ltx", {"guidance_scale": 3.0}),
    # several outputs per prompt: the embeddings are repeated once, by the encoding, and not again per stage
    ("flux", {"num_images_per_prompt": 2}), ("sd3", {"num_images_per_prompt": 2}),
    ("wan", {"num_videos_per_prompt": 2}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "extra"), ONE_STAGE_CASES, ids=[f"{n}-{sorted(e)}" for n, e in ONE_STAGE_CASES])
def test_one_stage_reproduces_the_stock_pipeline(name, extra, pipes):
    pipe = pipes(name)
    base = stock(pipe, name, 3, **extra)
    out = sample(pipe, name, [Stage(scale=1.0, steps=3, strength=1.0, shift=None)], **extra)
    assert type(out) is type(base)
    assert pixels(out).shape == pixels(base).shape
    assert np.abs(pixels(out) - pixels(base)).max() <= 1e-4


def test_one_stage_keeps_flux_dynamic_shifting():
    """shift=None is the pipeline's own schedule, resolution-dependent shifting (FLUX.1-dev's scheduler) included."""
    pipe = tiny_flux_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    recorder = Recorder(pipe)
    base = stock(pipe, "flux", 4)
    stock_timesteps = [t for t, _ in recorder.take()]
    out = sample(pipe, "flux", [Stage(scale=1.0, steps=4)])
    assert [t for t, _ in recorder.take()] == stock_timesteps
    assert np.abs(pixels(out) - pixels(base)).max() <= 1e-4
    # the stock grid really is shifted here (e^μ at 256 tokens): not the plain linear one
    assert not np.allclose(stock_timesteps, np.linspace(1.0, 0.25, 4))
    recorder.remove()


# -- 2. steps, sizes and σ grids per stage ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_stage_calls_shapes_and_timesteps(name, pipes):
    pipe = pipes(name)
    sampler = unbottle.BottleneckSampler(pipe, THREE)
    plans = sampler.plan(CALL[name]["height"], CALL[name]["width"], CALL[name].get("num_frames"))
    recorder = Recorder(pipe)
    try:
        # what the stock pipeline does at each stage's size: its transformer input and calls per step (CFG included)
        expected = []
        for plan in plans:
            pipe(PROMPT, num_inference_steps=1, generator=seed(), output_type="latent",
                 **{**CALL[name], "height": plan.height, "width": plan.width})  # fmt: skip
            calls = recorder.take()
            expected.append((len(calls), {shape for _, shape in calls}))
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL[name])
        calls = recorder.take()
    finally:
        recorder.remove()
    assert len(calls) == sum(plan.stage.steps * per_step for plan, (per_step, _) in zip(plans, expected, strict=True))
    unit = calls[0][0]  # the first stage starts at σ = 1: timesteps are σ × unit (1000, or 1 for Flux)
    start = 0
    for plan, (per_step, shapes) in zip(plans, expected, strict=True):
        stage_calls = calls[start : start + plan.stage.steps * per_step]
        start += len(stage_calls)
        assert {shape for _, shape in stage_calls} == shapes, (plan, shapes)
        sigmas = sorted({t / unit for t, _ in stage_calls}, reverse=True)
        np.testing.assert_allclose(sigmas, plan.sigmas, rtol=1e-5, atol=1e-6)
        assert sigmas[0] == pytest.approx(plan.stage.strength)
    # the half-size stage really ran on a smaller latent
    assert math.prod(next(iter(expected[1][1]))) < math.prod(next(iter(expected[0][1])))
    base = stock(pipe, name, 2)
    assert type(out) is type(base) and pixels(out).shape == pixels(base).shape
    assert np.isfinite(pixels(out)).all()


def test_stage_end_is_x0_of_the_last_velocity(pipes, monkeypatch):
    """A stage's grid ends at σ = 0, so what it hands on is x̂0 = x_σ − σ·v of its last step, before resizing."""
    from unbottle.pipelines import bottleneck

    pipe, seen, resized = pipes("flux"), [], []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((kwargs["hidden_states"], kwargs["timestep"], out[0])),
        with_kwargs=True,
    )

    def recording(latents, size, mode):
        resized.append(latents)
        return resize_latents(latents, size, mode)

    monkeypatch.setattr(bottleneck, "resize_latents", recording)
    try:
        sample(pipe, "flux", THREE)
    finally:
        hook.remove()
    for stage_end, x0 in zip((1, 4), resized, strict=True):  # stages of 2 and 3 steps
        x, sigma, v = seen[stage_end]  # packed (B, N, 4C); Flux's timestep is σ
        # the tiny Flux VAE is ×1: the latent's size is the stage's pixel size
        expected = pipe._unpack_latents(x.float() - sigma.float() * v.float(), *x0.shape[-2:], pipe.vae_scale_factor)
        torch.testing.assert_close(x0.float(), expected, atol=1e-5, rtol=1e-5)


def test_plan_sizes_round_to_the_pipeline_grid(pipes):
    sampler = unbottle.BottleneckSampler(pipes("wan"), [Stage(1.0, 1), Stage(0.75, 1, 0.8, 9.0), Stage(1.0, 1, 0.7)])
    # HunyuanVideo's table: 720×1280 at 0.75 is 544×960 on the 16 px grid (540 rounds to 544)
    assert [(p.height, p.width) for p in sampler.plan(720, 1280, 5)] == [(720, 1280), (544, 960), (720, 1280)]
    assert sampler.plan(720, 1280, 5)[0].sigmas is None  # shift None at strength 1: the pipeline's own schedule
    flux = unbottle.BottleneckSampler(pipes("flux"), [Stage(1.0, 1), Stage(0.5, 1, 0.8, 6.0), Stage(1.0, 1, 0.6, 9.0)])
    assert [(p.height, p.width) for p in flux.plan(32, 48)] == [(32, 48), (16, 24), (32, 48)]


# -- 3. three stages: the pipeline's output, seeds decide ----------------------------------------------------------
@pytest.mark.parametrize("name", ["flux", "sd3", "wan"])
def test_three_stages_are_deterministic(name, pipes):
    pipe = pipes(name)
    first, again, other = (pixels(sample(pipe, name, THREE, s=s)) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    # and not the stock result: the stages changed the trajectory
    assert np.abs(first - pixels(stock(pipe, name, 7))).max() > 1e-4


@pytest.mark.parametrize("name", ["hunyuan_video", "ltx"])
def test_two_stage_video(name, pipes):
    pipe = pipes(name)
    out = sample(pipe, name, [Stage(0.5, 2, 1.0, 7.0), Stage(1.0, 2, 0.7, 9.0)])  # low → high
    base = stock(pipe, name, 2)
    assert type(out) is type(base)
    assert pixels(out).shape == pixels(base).shape and np.isfinite(pixels(out)).all()


def test_output_type_latent_and_return_dict(pipes):
    pipe = pipes("flux")
    sampler = unbottle.BottleneckSampler(pipe, THREE)
    latents = sampler(PROMPT, generator=seed(), output_type="latent", **CALL["flux"]).images
    assert latents.shape == pipe(PROMPT, num_inference_steps=1, output_type="latent", **CALL["flux"]).images.shape
    (images,) = sampler(PROMPT, generator=seed(), output_type="np", return_dict=False, **CALL["flux"])
    np.testing.assert_array_equal(images, pixels(sample(pipe, "flux", THREE)))


@pytest.mark.parametrize("mode", RESAMPLE_MODES)
def test_every_resample_mode_runs(mode, pipes):
    pipe = pipes("flux")
    sampler = unbottle.BottleneckSampler(pipe, THREE, resample=mode)
    out = sampler(PROMPT, generator=seed(), output_type="np", **CALL["flux"])
    assert pixels(out).shape == (1, 32, 32, 3) and np.isfinite(pixels(out)).all()


# -- 4. bad stages and requests, named ----------------------------------------------------------------------------
BAD_STAGES = [
    ("scale", 0), ("scale", -0.5), ("scale", NAN), ("scale", INF), ("scale", "1"), ("scale", None), ("scale", True),
    ("steps", 0), ("steps", -3), ("steps", 2.0), ("steps", "4"), ("steps", None), ("steps", True),
    ("strength", 0), ("strength", -0.1), ("strength", 1.01), ("strength", NAN), ("strength", "1"),
    ("shift", 0), ("shift", -1.0), ("shift", NAN), ("shift", INF), ("shift", "3"), ("shift", True),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_STAGES, ids=[f"{f}={v!r}" for f, v in BAD_STAGES])
def test_bad_stage_names_field_and_value(field, value):
    kwargs = {"scale": 1.0, "steps": 4, "strength": 1.0, "shift": None, field: value}
    with pytest.raises(ValueError, match=rf"Stage\.{field}") as info:
        Stage(**kwargs)
    message = str(info.value)
    assert str(value) in message or repr(value) in message, message


def test_stage_is_frozen_and_ranges_are_stated():
    stage = Stage(scale=0.5, steps=20, strength=0.8, shift=6.0)
    with pytest.raises(AttributeError):
        stage.scale = 1.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Stage(scale=1.0, steps=1, strength=1.5)
    with pytest.raises(ValueError, match="≥ 1"):
        Stage(scale=1.0, steps=0)


def test_bad_stage_lists_are_refused(pipes):
    pipe = pipes("flux")
    with pytest.raises(ValueError, match=r"stages\[0\]\.strength.*0\.8"):
        unbottle.BottleneckSampler(pipe, [Stage(1.0, 2, 0.8), Stage(1.0, 2, 0.6)])
    with pytest.raises(ValueError, match=r"stages\[-1\]\.scale.*0\.5"):
        unbottle.BottleneckSampler(pipe, [Stage(1.0, 2), Stage(0.5, 2, 0.6)])
    with pytest.raises(ValueError, match="non-empty"):
        unbottle.BottleneckSampler(pipe, [])
    with pytest.raises(TypeError, match=r"stages\[1\]"):
        unbottle.BottleneckSampler(pipe, [Stage(1.0, 2), {"scale": 1.0}])
    with pytest.raises(ValueError, match="resample.*'box'"):
        unbottle.BottleneckSampler(pipe, THREE, resample="box")


def test_bad_requests_are_refused(pipes):
    wan = unbottle.BottleneckSampler(pipes("wan"), THREE)
    with pytest.raises(ValueError, match="height.*multiple of 16.*40"):
        wan(PROMPT, height=40, width=64, num_frames=5)
    with pytest.raises(ValueError, match="width.*multiple of 16"):
        wan.plan(64, 8)
    tiny = unbottle.BottleneckSampler(pipes("wan"), [Stage(1.0, 2), Stage(0.1, 2, 0.8, 6.0), Stage(1.0, 2, 0.6)])
    with pytest.raises(ValueError, match=r"stages\[1\]\.scale=0\.1.*≥ 16 px"):
        tiny.plan(64, 64)
    with pytest.raises(TypeError, match="num_inference_steps"):
        wan(PROMPT, height=64, width=64, num_inference_steps=20)
    with pytest.raises(ValueError, match="does not support PixArtSigmaPipeline.*Flux.*Wan"):
        unbottle.BottleneckSampler(tiny_pixart_pipeline(), THREE)


# -- 5. presets ---------------------------------------------------------------------------------------------------
def test_paper_presets_are_the_paper_tables():
    assert PRESETS["flux-2x"] == ("Flux", ((1.0, 6, 1.0, 9.0), (0.5, 20, 0.8, 6.0), (1.0, 8, 0.6, 9.0)))
    assert PRESETS["hunyuanvideo-2.5x"] == (
        "HunyuanVideo", ((1.0, 4, 1.0, 7.0), (0.75, 24, 0.8, 9.0), (1.0, 16, 0.7, 9.0))
    )  # fmt: skip
    assert {"flux-2x", "flux-3x", "hunyuanvideo-2.5x", "wan-2x", "wan-3x", "sd3-2x"} <= set(PRESETS)


FAMILY_FIXTURE = {"Flux": "flux", "SD3": "sd3", "Wan": "wan", "HunyuanVideo": "hunyuan_video",
                  "QwenImage": "qwen_image", "Flux2": "flux2", "HunyuanVideo-1.5": "hunyuan_video15"}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_plan(preset, pipes):
    family, rows = PRESETS[preset]
    pipe = pipes(FAMILY_FIXTURE[family])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right family: no warning
        sampler = unbottle.BottleneckSampler.from_preset(pipe, preset)
    assert sampler.stages == tuple(Stage(*row) for row in rows)
    assert sampler.stages[0].strength == 1.0 and sampler.stages[-1].scale == 1.0
    size = {"Flux": 1024, "SD3": 1024, "Wan": 480, "HunyuanVideo": 720, "QwenImage": 1328, "Flux2": 1024,
            "HunyuanVideo-1.5": 720}[family]  # fmt: skip
    assert len(sampler.plan(size, size, 9)) == len(rows)


def test_preset_runs_and_unknown_or_foreign_presets(pipes):
    out = unbottle.BottleneckSampler.from_preset(pipes("flux"), "flux-3x")(
        PROMPT, generator=seed(), output_type="np", **CALL["flux"]
    )
    assert pixels(out).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown bottleneck preset 'flux-9x'.*flux-3x"):
        unbottle.BottleneckSampler.from_preset(pipes("flux"), "flux-9x")
    with pytest.warns(UserWarning, match="chosen for Flux"):
        unbottle.BottleneckSampler.from_preset(pipes("wan"), "flux-3x")


# -- 6. σ grids: diffusers' own shifting, one formula ---------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0, 9.0])
def test_full_strength_grid_is_diffusers_static_shift(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8))
    np.testing.assert_allclose(stage_sigmas(8, 1.0, shift), scheduler.sigmas[:-1].numpy(), rtol=1e-6)


@pytest.mark.parametrize("tokens", [64, 256, 1024, 4096])
def test_pipeline_shift_is_diffusers_dynamic_shift(tokens):
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6), mu=mu)
    k = pipeline_shift(scheduler, tokens)
    assert k == pytest.approx(math.exp(mu))
    np.testing.assert_allclose(stage_sigmas(6, 1.0, k), scheduler.sigmas[:-1].numpy(), rtol=1e-6)


@pytest.mark.parametrize(("steps", "strength", "shift"), [(1, 0.6, 9.0), (5, 0.8, 6.0), (20, 0.3, 1.0), (3, 1.0, 0.5)])
def test_truncated_grid_starts_at_the_strength(steps, strength, shift):
    sigmas = np.asarray(stage_sigmas(steps, strength, shift))
    assert len(sigmas) == steps and sigmas[0] == strength
    assert (np.diff(sigmas) < 0).all() and sigmas[-1] > 0
    # evenly spaced in unshifted time, down to 0
    unshifted = time_shift(sigmas, 1.0 / shift)
    np.testing.assert_allclose(np.diff(np.append(unshifted, 0.0)), -unshifted[0] / steps, rtol=1e-9)


def test_stage_scheduler_runs_its_grid_whatever_it_is_asked():
    base = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    scheduler = StageScheduler.for_grid(base, [0.8, 0.5, 0.2])
    for kwargs in ({"num_inference_steps": 3}, {"sigmas": [1.0, 0.6, 0.3], "mu": 1.0}, {}):
        scheduler.set_timesteps(**kwargs)
        np.testing.assert_allclose(scheduler.sigmas.numpy(), [0.8, 0.5, 0.2, 0.0], rtol=1e-6)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), [800.0, 500.0, 200.0], rtol=1e-6)
    assert base.config.use_dynamic_shifting and base.config.shift == 3.0  # the pipeline's own is untouched


def test_shift_none_below_full_strength_uses_the_pipelines_own_shift():
    pipe = tiny_flux_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    own = pipe.scheduler
    sampler = unbottle.BottleneckSampler(pipe, [Stage(1.0, 2), Stage(0.5, 3, 0.7), Stage(1.0, 2, 0.5, 9.0)])
    plans = sampler.plan(64, 64)
    tokens = (32 // 2) * (32 // 2)  # the half-size stage: 32×32 latent, 2×2 packing
    k = math.exp(calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    np.testing.assert_allclose(plans[1].sigmas, stage_sigmas(3, 0.7, k))
    np.testing.assert_allclose(plans[2].sigmas, stage_sigmas(2, 0.5, 9.0))
    sampler(PROMPT, height=64, width=64, generator=seed(), output_type="latent", max_sequence_length=16)
    assert pipe.scheduler is own  # restored after every stage


# -- 7. latent resampling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(8, 8), (24, 40), (5, 7)])
def test_lanczos_matches_pil(size):
    image = np.random.default_rng(0).standard_normal((16, 20)).astype(np.float32)
    ours = resize_latents(torch.from_numpy(image)[None, None], size, "lanczos")[0, 0].numpy()
    pil = np.asarray(Image.fromarray(image, mode="F").resize(size[::-1], Image.Resampling.LANCZOS))
    np.testing.assert_allclose(ours, pil, atol=2e-3)


@pytest.mark.parametrize("mode", RESAMPLE_MODES)
def test_resize_keeps_frames_apart_and_constants_constant(mode):
    video = torch.randn(2, 3, 4, 8, 12)  # (B, C, F, H, W)
    out = resize_latents(video, (4, 6), mode)
    assert out.shape == (2, 3, 4, 4, 6)
    for f in range(4):
        torch.testing.assert_close(out[:, :, f], resize_latents(video[:, :, f], (4, 6), mode))
    constant = torch.full((1, 2, 6, 6), 0.37)
    torch.testing.assert_close(resize_latents(constant, (12, 12), mode), torch.full((1, 2, 12, 12), 0.37))
    assert resize_latents(video, (8, 12), mode) is video
    assert torch.allclose(lanczos_matrix(9, 9), torch.eye(9, dtype=torch.float64))


# -- 8. with sparse attention: patterns per resolution, across stages ---------------------------------------------
@pytest.mark.parametrize("name", ["flux", "wan"])
def test_sparse_attention_across_stages(name, pipes):
    pipe = pipes(name)
    extra = {"num_frames": 9} if name == "wan" else {}  # 9 frames: the half-size Wan stage still has 2 blocks of 8
    dense = pixels(sample(pipe, name, THREE, **extra))
    unbottle.enable_sparse_attention(pipe, unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1))
    try:
        np.testing.assert_array_equal(pixels(sample(pipe, name, THREE, **extra)), dense)
    finally:
        unbottle.disable_sparse_attention(pipe)

    config = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=2)
    handle = unbottle.enable_sparse_attention(pipe, config)
    recorder = Recorder(pipe)
    try:
        sparse = pixels(sample(pipe, name, THREE, **extra))
        sizes = {shape for _, shape in recorder.take()}
        computed = handle.pattern_computations
        resolutions = {key[1] for key in handle.store.patterns}  # keys: (layer, tokens, block size, f, h, w, …)
        again = pixels(sample(pipe, name, THREE, **extra))
        assert handle.pattern_computations == computed  # the second generation reuses every cached pattern
    finally:
        recorder.remove()
        unbottle.disable_sparse_attention(pipe)
    assert np.isfinite(sparse).all() and np.abs(sparse - dense).max() > 1e-5
    np.testing.assert_array_equal(sparse, again)
    assert len(sizes) == 2 and len(resolutions) == 2  # one pattern set per stage resolution (full and half)
    assert set(computed.values()) == {2}  # each sparse layer: one pattern per resolution
