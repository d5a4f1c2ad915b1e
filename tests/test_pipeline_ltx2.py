"""LTX-2 (`LTX2Pipeline`, LTX-2.3 layout, audio + video): sparse attention on the video self-attention through the
pipeline's CFG, spatio-temporal guidance (perturbed attention skips block 1's) and modality passes (stock at density
1 and with every block kept, changed at low density, the 3×4×4 layout on every call, disable restores the
processors); bottleneck sampling carries the audio from stage to stage (one stage is stock, a later stage gets the
resized video x̂0 and the audio x̂0 clean with noise_scale = its strength); noise search optimizes the video noise:
the drawn noise is the stock one, the audio noise is reproducible (drawn after LTX-2's re-noising draw, or passed as
`audio_latents=`), the differentiable call equals the stock call and one step has a finite gradient."""

import functools
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend
from pipeline_checks import Channel

import unbottle
from unbottle.attention_processors import processor as processor_module
from unbottle.families import TokenLayout, family_for_model, family_for_pipeline
from unbottle.pipelines.noise_search import differentiable_call, draw_noise
from unbottle.pipelines.resample import resize_latents
from unbottle.testing.ltx2 import tiny_ltx2_pipeline

PROMPT = "a red circle left of a blue square"
# 64×64×9 → latents (4, 3, 4, 4): 48 video tokens; 9 frames at 25 fps → 16000 / 160 / 4 · 0.36 s = 9 audio tokens.
# CFG (guidance 3, audio 7), spatio-temporal guidance perturbing block 1 and modality guidance: 3 forwards a step.
CALL = dict(height=64, width=64, num_frames=9, frame_rate=25.0, num_inference_steps=2, max_sequence_length=16,
            spatio_temporal_guidance_blocks=[1])  # fmt: skip
GRID, AUDIO = (3, 4, 4), (1, 2, 9, 2)  # latent video grid; audio latents (B, C, L, mel bins)
VIDEO_SHAPE = (1, 4, *GRID)
SELF_ATTENTION = {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}


def config(density: float) -> unbottle.SparseAttentionConfig:
    """Every step sparse (no dense warm-up), no reshape correction; blocks of 8 of the 48 video tokens."""
    return unbottle.SparseAttentionConfig(density=density, block_size=8, full_steps=0, reshape=False)


@pytest.fixture(scope="module")
def pipe():
    return tiny_ltx2_pipeline()


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def from_state(state):
    generator = torch.Generator()
    generator.set_state(state)
    return generator


def run(pipe, seed=0, **kwargs):
    return pipe(PROMPT, generator=seeded(seed), **{"output_type": "pt", **CALL, **kwargs})


@pytest.fixture(scope="module")
def stock(pipe):
    return run(pipe)


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def denoiser_inputs(pipe):
    """(video tokens, audio tokens) of every denoiser forward, recorded by a pre-hook; remove the hook after."""
    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["hidden_states"].detach().clone(), kwargs["audio_hidden_states"].detach().clone()))

    return seen, pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)


# ---- the fixture ---------------------------------------------------------------------------------------------------


def test_the_fixture_is_ltx23_with_audio_and_video(pipe, stock):
    assert family_for_pipeline(pipe, "noise").name == family_for_model(pipe.transformer, "sparse").name == "LTX-2"
    assert type(pipe.transformer.transformer_blocks[0].attn1.processor).__name__ == "LTX2PerturbedAttnProcessor"
    assert stock.frames.shape == (1, 9, 3, 64, 64) and stock.audio.shape[:2] == (1, 2)
    seen, hook = denoiser_inputs(pipe)
    try:
        run(pipe)
    finally:
        hook.remove()
    batches = [video.shape[0] for video, _ in seen]
    assert batches == [2, 1, 1] * 2  # per step: CFG, spatio-temporal guidance, modality isolation
    assert all(video.shape[1:] == (48, 4) and audio.shape[1:] == (9, 4) for video, audio in seen)


# ---- sparse attention through the pipeline -------------------------------------------------------------------------


def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    before = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, config(1.0))
    try:
        current = pipe.transformer.attn_processors
        wrapped = {k for k, p in current.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {f"{name}.processor" for name in SELF_ATTENTION}  # not audio_attn1 nor any cross-attention
        assert all(current[k].processor is before[k] for k in wrapped)
        out = run(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}
    assert max_diff(out.frames, stock.frames) <= 1e-5 and max_diff(out.audio, stock.audio) <= 1e-5
    after = pipe.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    again = run(pipe)
    assert torch.equal(again.frames, stock.frames) and torch.equal(again.audio, stock.audio)


def test_every_block_kept_runs_the_sparse_path_and_is_stock(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, config(0.9999))
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == dict.fromkeys(SELF_ATTENTION, 1)
    assert max_diff(out.frames, stock.frames) <= 1e-5 and max_diff(out.audio, stock.audio) <= 1e-5


def test_low_density_changes_the_video_and_disable_gives_stock(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, config(0.3))
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == dict.fromkeys(SELF_ATTENTION, 1)
    assert torch.isfinite(out.frames).all() and max_diff(out.frames, stock.frames) > 1e-4
    assert torch.equal(run(pipe).frames, stock.frames)


def test_every_sparse_call_sees_the_video_grid_and_the_perturbed_block_skips(pipe, monkeypatch):
    seen = []
    attend = processor_module.SparseLayer.attend

    def spy(self, q, k, v, attn_mask=None, scale=None):
        info = processor_module.CURRENT_FORWARD.get()
        seen.append((self.name, q.shape[0], q.shape[2], info.layout if info is not None else None))  # q: (B, H, N, D)
        return attend(self, q, k, v, attn_mask=attn_mask, scale=scale)

    monkeypatch.setattr(processor_module.SparseLayer, "attend", spy)
    unbottle.enable_sparse_attention(pipe, config(0.5))
    run(pipe)
    a, b = sorted(SELF_ATTENTION)
    # per step: CFG (batch 2) both blocks; spatio-temporal guidance: block 1 runs no attention (its value passes
    # through), block 0 attends; modality isolation both blocks
    assert [(name, batch) for name, batch, *_ in seen] == [(a, 2), (b, 2), (a, 1), (a, 1), (b, 1)] * 2
    assert all(tokens == 48 and layout == TokenLayout(GRID) for _, _, tokens, layout in seen)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_a_backend_that_bypasses_sdpa_is_still_refused(pipe):
    # the processor skipping attention itself (above) passes; a backend that never reaches SDPA is refused
    unbottle.enable_sparse_attention(pipe, config(0.5))
    with attention_backend("flex"), pytest.raises(RuntimeError, match="made no scaled_dot_product_attention call"):
        run(pipe)


# ---- bottleneck sampling -------------------------------------------------------------------------------------------


def test_one_stage_is_the_stock_call_video_and_audio(pipe, stock):
    stage = unbottle.Stage(scale=1.0, steps=CALL["num_inference_steps"], strength=1.0, shift=None)
    call = {k: v for k, v in CALL.items() if k != "num_inference_steps"}
    out = unbottle.BottleneckSampler(pipe, [stage])(PROMPT, generator=seeded(0), output_type="pt", **call)
    assert torch.equal(out.frames, stock.frames) and torch.equal(out.audio, stock.audio)


def test_a_later_stage_gets_the_resized_video_and_the_audio_clean_with_its_strength(pipe, monkeypatch):
    stages = [unbottle.Stage(scale=0.5, steps=2, strength=1.0, shift=3.0),
              unbottle.Stage(scale=1.0, steps=2, strength=0.7, shift=3.0)]  # fmt: skip
    call = {k: v for k, v in CALL.items() if k != "num_inference_steps"} | {"height": 128, "width": 128}
    seen, stock_call = [], type(pipe).__call__

    @functools.wraps(stock_call)
    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        out = stock_call(self, *args, **kwargs)
        seen[-1] = dict(kwargs, _out=out)
        return out

    monkeypatch.setattr(type(pipe), "__call__", spy)
    out = unbottle.BottleneckSampler(pipe, stages)(PROMPT, generator=seeded(0), output_type="pt", **call)
    first, second = seen
    video, audio = first["_out"]  # stage 1's x̂0: video (B, C, F', h, w) denormalized, audio (B, C, L, M)
    assert first["height"] == 64 and "noise_scale" not in first and "audio_latents" not in first
    assert second["height"] == 128 and second["noise_scale"] == 0.7
    assert second["audio_latents"] is audio and tuple(audio.shape) == AUDIO  # the audio keeps its length
    latents = family_for_pipeline(pipe, "bottleneck").latents
    grid = latents.to_grid(pipe, video, 64, 64, call["num_frames"])  # normalized (B, C, F', 2, 2)
    resized = resize_latents(grid, latents.latent_size(pipe, 128, 128), "bicubic-aa").to(grid.dtype)
    torch.testing.assert_close(second["latents"], latents.from_grid(pipe, resized), atol=0, rtol=0)  # clean
    assert out.frames.shape[-2:] == (128, 128)


# ---- latents and noise search --------------------------------------------------------------------------------------


def test_the_latent_seams_are_the_pipelines_own(pipe):
    latents = family_for_pipeline(pipe, "noise").latents
    grid = torch.randn(VIDEO_SHAPE, generator=seeded(1))
    packed = latents.from_grid(pipe, grid)
    assert packed.shape == (1, 48, 4) and torch.equal(packed[0, 5], grid[0, :, 0, 1, 1])  # token 5: frame 0, (1, 1)
    assert torch.equal(latents.to_grid(pipe, packed, 64, 64, 9), grid)
    # the 5-D latent output is denormalized: to_grid normalizes it as the pipeline does a 5-D `latents=`
    output = run(pipe, output_type="latent", num_inference_steps=1).frames  # (1, 4, 3, 4, 4)
    own = pipe.prepare_latents(latents=output, dtype=torch.float32, device="cpu")  # noise_scale 0: no re-noising
    assert not torch.allclose(latents.from_grid(pipe, output), own)  # the VAE's statistics matter
    torch.testing.assert_close(latents.from_grid(pipe, latents.to_grid(pipe, output, 64, 64, 9)), own)


def test_the_noise_shape_follows_num_frames(pipe):
    latents = family_for_pipeline(pipe, "noise").latents
    assert latents.noise_shape(pipe, CALL) == VIDEO_SHAPE
    assert latents.noise_shape(pipe, dict(CALL, num_frames=None)) == (1, 4, 31, 4, 4)  # the pipeline's 121 frames
    assert latents.noise_shape(pipe, {}) == (1, 4, 31, 512 // 16, 768 // 16)  # its 512 × 768 default
    with pytest.raises(ValueError, match="num_frames=None.*duration_head"):
        latents.noise_grid(SimpleNamespace(duration_head=object()), 64, 64, None)


def test_the_drawn_noise_is_the_stock_video_noise_and_the_audio_noise_is_reproducible(pipe):
    family = family_for_pipeline(pipe, "noise")
    noise, state = draw_noise(pipe, family, CALL, 3, torch.float32)
    generator = seeded(3)  # the pipeline's draws, by hand: video, then (latents given) a video-sized re-noise, audio
    video = pipe._pack_latents(torch.randn(VIDEO_SHAPE, generator=generator))
    torch.randn(VIDEO_SHAPE, generator=generator)
    audio = torch.randn(AUDIO, generator=generator).transpose(1, 2).flatten(2, 3)  # (1, 9, 4)
    assert torch.equal(noise, video)
    seen, hook = denoiser_inputs(pipe)
    try:
        run(pipe, seed=3)
        stock_video, stock_audio = seen[1]  # the first batch-1 forward (spatio-temporal guidance)
        seen.clear()
        for _ in range(2):
            pipe(PROMPT, latents=noise, generator=from_state(state), output_type="latent", **CALL)
    finally:
        hook.remove()
    assert torch.equal(stock_video, video)
    assert torch.equal(seen[1][0], video) and torch.equal(seen[1][1], audio)  # not the stock call's audio noise
    assert not torch.equal(audio, stock_audio)
    assert torch.equal(seen[7][1], audio)  # the second call (6 forwards later) draws the same audio noise


def test_with_audio_latents_the_differentiable_call_is_the_stock_call(pipe):
    family = family_for_pipeline(pipe, "noise")
    audio = torch.randn(AUDIO, generator=seeded(11))
    expected = run(pipe, seed=3, audio_latents=audio)
    noise, state = draw_noise(pipe, family, CALL, 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    out = differentiable_call(pipe, PROMPT, latents=eps, audio_latents=audio, generator=from_state(state),
                              output_type="pt", **CALL)  # fmt: skip
    assert out.frames.requires_grad and out.frames.shape == expected.frames.shape
    torch.testing.assert_close(out.frames.detach(), expected.frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.audio.detach(), expected.audio, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(out.frames[..., 0, :, :].mean(), eps)  # the red channel's mean
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_noise_search_step_from_the_stock_noise(pipe):
    audio = torch.randn(AUDIO, generator=seeded(11))
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[3], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", audio_latents=audio, **CALL)
    first, second = result.history[3]
    assert first.grad_norms and all(0 < g < float("inf") for g in first.grad_norms.values())
    assert 0 < first.update_norm <= 0.1 + 1e-6  # clipped to grad_clip
    assert second.loss != first.loss
    start = run(pipe, seed=3, audio_latents=audio).frames  # iteration 0 is the stock call with that seed
    assert first.loss == pytest.approx(1 - float(start[0, :, 0].mean()), abs=1e-5)
    assert result.loss == min(first.loss, second.loss)  # the best iterate
