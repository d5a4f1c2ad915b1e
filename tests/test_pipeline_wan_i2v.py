"""Wan image-to-video (WanImageToVideoPipeline) on tiny stock pipelines: its family record, sparse attention that
always keeps the conditioning frame (Wan 2.1 I2V, Wan 2.2 I2V-A14B and TI2V forwards; text-to-video unchanged),
bottleneck sampling and noise search through the pipeline's own seams (noise drawn with the VAE's 16 channels, not
the transformer's 36 input channels)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from PIL import Image
from pipeline_checks import Channel, max_diff, seed

import unbottle
from unbottle.attention_processors.state import CURRENT_FORWARD
from unbottle.families import TokenLayout, UnsupportedModelError, family_for_model, family_for_pipeline
from unbottle.pipelines.noise_search import differentiable_call, draw_noise
from unbottle.testing.wan_i2v import IMAGE_DIM, tiny_wan_i2v_pipeline, tiny_wan_ti2v_pipeline

PROMPT = "a red circle left of a blue square"
IMAGE = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
# 32×32×9: latents (1, 16, 3, 4, 4) → tokens (3, 2, 2); the first latent frame is 4 tokens, one block of 4
CALL = dict(image=IMAGE, prompt=PROMPT, height=32, width=32, num_frames=9, num_inference_steps=2)
BLOCK = 4
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=BLOCK, full_steps=0)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=BLOCK, reshape=False, full_steps=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.25, block_size=BLOCK, reshape=False, full_steps=0)
Stage = unbottle.Stage


_BUILT: dict = {}


@pytest.fixture(scope="module")
def pipes():
    def get(name):
        if name not in _BUILT:
            _BUILT[name] = {"i2v": tiny_wan_i2v_pipeline, "ti2v": tiny_wan_ti2v_pipeline}[name]()
        return _BUILT[name]

    yield get
    _BUILT.clear()


@pytest.fixture(scope="module")
def stock(pipes):
    """Stock frames per (pipeline, seed), computed once before anything is enabled on it."""
    cache = {}

    def get(name, s=0):
        if (name, s) not in cache:
            cache[name, s] = pipes(name)(**CALL, generator=seed(s), output_type="np").frames
        return cache[name, s]

    return get


@pytest.fixture(autouse=True)
def _always_disable():
    yield
    for pipe in _BUILT.values():  # a failing test must not leave sparse attention on a shared pipeline
        unbottle.disable_sparse_attention(pipe)


def kept_tiles(pattern) -> torch.Tensor:
    """(B, H, nQ, nK) bool: the key blocks each query block keeps, from a stored (indices, counts) pattern."""
    indices, counts = pattern
    slots = torch.arange(indices.shape[-1])
    valid = slots < counts[..., None].long()  # (B, H, nQ, K)
    n_k = indices.shape[-2]  # self-attention: as many key blocks as query blocks
    kept = torch.zeros(*indices.shape[:-1], n_k + 1, dtype=torch.bool)
    kept.scatter_(-1, torch.where(valid, indices.long(), n_k), True)  # padding → a spare column
    return kept[..., :n_k]


# -- the family record ------------------------------------------------------------------------------------------------
def test_the_pipeline_has_its_record_and_the_transformer_stays_with_wan(pipes):
    pipe = pipes("i2v")
    for feature in ("bottleneck", "noise"):
        assert family_for_pipeline(pipe, feature).name == "Wan-I2V"
    with pytest.raises(UnsupportedModelError, match="WanImageToVideoPipeline"):
        family_for_pipeline(pipe, "guidance")
    assert family_for_model(pipe.transformer, "sparse").name == "Wan"  # sparse attention: the Wan family's layout
    assert family_for_model(pipe.transformer, None).name == "Wan"  # the first registered family of the class
    record = family_for_pipeline(pipe, "noise")
    assert record.attention is None and record.guidance is None and record.stock_steps == 50


# -- the layout of a forward: the conditioning frame as prompt tokens -------------------------------------------------
def fake_model(in_channels: int, out_channels: int = 16) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(in_channels=in_channels, out_channels=out_channels,
                                                  patch_size=(1, 2, 2)))  # fmt: skip


def bound(channels: int, frames: int = 3, timestep: torch.Tensor | None = None, image: bool = False) -> dict:
    """A forward's bound arguments: (1, channels, frames, 8, 8) latents → (frames, 4, 4) tokens."""
    return {"hidden_states": torch.zeros(1, channels, frames, 8, 8),
            "timestep": torch.tensor([500.0]) if timestep is None else timestep,
            "encoder_hidden_states": torch.zeros(1, 512, 32),
            "encoder_hidden_states_image": torch.zeros(1, 17, IMAGE_DIM) if image else None}  # fmt: skip


def per_token(first: float, rest: float = 500.0, frames: int = 3) -> torch.Tensor:
    """A TI2V timestep (B=2, N): `first` on the first frame's 16 tokens, `rest` elsewhere."""
    return torch.tensor([[first] * 16 + [rest] * 16 * (frames - 1)] * 2)


I2V_LAYOUT = TokenLayout((2, 4, 4), text_len=16, text_first=True)
LAYOUT_CASES = {
    "wan2.1-i2v": (fake_model(36), bound(36, image=True), I2V_LAYOUT),
    "image-embeddings": (fake_model(16), bound(16, image=True), I2V_LAYOUT),  # the embeddings alone decide
    "wan2.2-i2v-a14b": (fake_model(36), bound(36), I2V_LAYOUT),  # 2·16 + 4 channels, no image embeddings
    "ti2v": (fake_model(48, 48), bound(48, timestep=per_token(0.0)), I2V_LAYOUT),
    "t2v": (fake_model(16), bound(16), TokenLayout((3, 4, 4))),
    "t2v-0-d-timestep": (fake_model(16), bound(16, timestep=torch.tensor(500.0)), TokenLayout((3, 4, 4))),
    "t2v-per-token": (fake_model(48, 48), bound(48, timestep=per_token(500.0)), TokenLayout((3, 4, 4))),
    "ti2v-first-frame-noisy": (fake_model(48, 48), bound(48, timestep=per_token(3.0)), TokenLayout((3, 4, 4))),
    "t2v-other-channels": (fake_model(20), bound(20), TokenLayout((3, 4, 4))),
    "i2v-one-frame": (fake_model(36), bound(36, frames=1, image=True), TokenLayout((1, 4, 4))),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_the_wan_layout_keeps_the_conditioning_frame_of_image_to_video_calls(case):
    model, arguments, expected = LAYOUT_CASES[case]
    wan = family_for_model(WanTransformer3DModel.__new__(WanTransformer3DModel), "sparse")
    timestep, layout = wan.attention.read_call(model, arguments)
    assert layout == expected
    n = arguments["hidden_states"].shape[2] * 16  # tokens of the forward: frames × 4 × 4
    (f, h, w), text_len, text_first = layout.resolve(n)
    assert (f, h, w) == expected.grid and f * h * w + text_len == n and text_first  # the whole sequence


# -- model level: a low density keeps the conditioning frame's blocks as keys and as dense query rows -----------------
def tiny_transformer(in_channels: int, image_dim: int | None) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, image_dim=image_dim,
        added_kv_proj_dim=24 if image_dim else None,
    ).eval()  # fmt: skip


MODEL_CASES = {  # (in_channels, image embeddings, per-token timestep) of a (1, C, 4, 8, 8) forward: 4 × 4 × 4 tokens
    "wan2.1-i2v": (36, True, False), "wan2.2-i2v-a14b": (36, False, False), "ti2v": (16, False, True),
    "t2v": (16, False, False),
}  # fmt: skip
MODEL_BLOCK = 8  # the conditioning frame: 16 tokens, blocks 0 and 1 of 8


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_low_density_keeps_every_block_of_the_conditioning_frame(case):
    in_channels, image, ti2v = MODEL_CASES[case]
    model = tiny_transformer(in_channels, IMAGE_DIM if image else None)
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, in_channels, 4, 8, 8, generator=gen),
        "timestep": torch.tensor([[0.0] * 16 + [700.0] * 48]) if ti2v else torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 512, 32, generator=gen),
        "encoder_hidden_states_image": torch.randn(1, 17, IMAGE_DIM, generator=gen) if image else None,
    }
    config = unbottle.SparseAttentionConfig(density=0.2, block_size=MODEL_BLOCK, reshape=False, full_steps=0)
    handle = unbottle.enable_sparse_attention(model, config)
    try:
        with torch.no_grad():
            out = model(**inputs, return_dict=False)[0]
    finally:
        unbottle.disable_sparse_attention(model)
    assert out.shape == (1, 16, 4, 8, 8) and torch.isfinite(out).all()
    assert handle.pattern_computations == {"blocks.0.attn1": 1, "blocks.1.attn1": 1}
    assert len(handle.store.patterns) == 2
    for key, pattern in handle.store.patterns.items():
        kept = kept_tiles(pattern)  # (1, 2 heads, 8, 8)
        assert kept.shape[-2:] == (8, 8)
        assert not kept.all()  # really sparse: ceil(0.2 · 8) = 2 blocks a row beyond the forced ones
        if case == "t2v":
            assert key[3:] == (4, 4, 4, 0, True)  # (f, h, w, text_len, text_first): today's layout
            assert not kept[..., :2, :].all()  # the first frame's query rows are not dense
        else:
            assert key[3:] == (3, 4, 4, 16, True)  # the first frame laid out as 16 prompt tokens
            assert kept[..., :2, :].all()  # every query row of the first frame keeps every key block
            assert kept[..., :, :2].all()  # every query block keeps the first frame's key blocks


# -- pipeline level: sparse attention ---------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipes, stock):
    pipe, base = pipes("i2v"), stock("i2v")
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        assert set(handle.layer_hooks) == {"blocks.0.attn1", "blocks.1.attn1"}
        out = pipe(**CALL, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert out.shape == base.shape == (1, 9, 32, 32, 3) and max_diff(out, base) <= 1e-5
    after = pipe.transformer.attn_processors
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())


@pytest.mark.parametrize("name", ["i2v", "ti2v"])
def test_every_block_kept_runs_the_sparse_path_with_the_conditioning_frame_as_prompt(name, pipes, stock):
    pipe, base = pipes(name), stock(name)
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = pipe(**CALL, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {"blocks.0.attn1": 1, "blocks.1.attn1": 1}
    # the pipeline's own forwards (image embeddings; TI2V's per-token timestep) are read as image-to-video
    assert {key[1:] for key in handle.store.patterns} == {(12, BLOCK, 2, 2, 2, 4, True)}
    assert max_diff(out, base) <= 1e-5


def test_low_density_in_the_pipeline_keeps_the_conditioning_frame(pipes, stock):
    pipe, base = pipes("i2v"), stock("i2v")
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        out = pipe(**CALL, generator=seed(), output_type="np").frames
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert np.isfinite(out).all() and max_diff(out, base) > 1e-5
    for pattern in handle.store.patterns.values():
        kept = kept_tiles(pattern)  # (1, 2, 3, 3): block 0 is the conditioning frame
        assert kept[..., 0, :].all() and kept[..., :, 0].all() and not kept.all()


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
def test_one_stage_bottleneck_is_the_stock_call(pipes, stock):
    pipe, base = pipes("i2v"), stock("i2v")
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(**{k: v for k, v in CALL.items() if k != "num_inference_steps"}, generator=seed(), output_type="np")
    assert type(out).__name__ == "WanPipelineOutput"
    np.testing.assert_array_equal(out.frames, base)


@pytest.mark.parametrize("name", ["i2v", "ti2v"])
def test_two_stages_call_the_denoiser_small_then_full(name, pipes):
    pipe = pipes(name)
    shapes: list[tuple[int, ...]] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True
    )
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=6.0), Stage(scale=1.0, steps=1, strength=0.7, shift=9.0)]
    try:
        out = unbottle.BottleneckSampler(pipe, stages)(
            image=IMAGE, prompt=PROMPT, height=64, width=64, num_frames=9, generator=seed(), output_type="np"
        )
    finally:
        hook.remove()
    channels = 36 if name == "i2v" else 16
    # 32 px (3 × 2 × 2 tokens) for 2 steps, then 64 px (3 × 4 × 4 tokens) for 1; CFG: two calls a step
    small, full = (1, channels, 3, 4, 4), (1, channels, 3, 8, 8)
    assert shapes == [small] * 4 + [full] * 2
    assert out.frames.shape == (1, 9, 64, 64, 3) and np.isfinite(out.frames).all()


# -- noise search -----------------------------------------------------------------------------------------------------
NOISE_CALL = dict(image=IMAGE, height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=4.0)


def test_the_drawn_noise_is_the_pipelines_own(pipes):
    pipe = pipes("i2v")
    family = family_for_pipeline(pipe, "noise")
    noise, state = draw_noise(pipe, family, NOISE_CALL, 3, torch.float32)
    assert noise.shape == (1, 16, 2, 4, 4)  # the VAE's 16 channels (the transformer takes 36), 1 + (5 − 1)/4 frames
    expected = pipe(prompt=PROMPT, **NOISE_CALL, generator=seed(3), output_type="pt").frames
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    out = differentiable_call(pipe, prompt=PROMPT, **NOISE_CALL, latents=eps, generator=generator, output_type="pt")
    assert out.frames.requires_grad and out.frames.shape == expected.shape == (1, 5, 3, 32, 32)
    torch.testing.assert_close(out.frames.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(out.frames[:, :, 0].mean(), eps)  # the red channel's mean
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # a frame count the pipeline rounds (8 → 9 frames, 3 latent frames): the noise it draws has that shape
    rounded = dict(NOISE_CALL, num_frames=8, num_inference_steps=1)
    latents = pipe(prompt=PROMPT, **rounded, generator=seed(3), output_type="latent").frames  # (1, 16, F', h, w)
    assert draw_noise(pipe, family, rounded, 3, torch.float32)[0].shape == latents.shape == (1, 16, 3, 4, 4)


def test_one_optimization_step_has_a_finite_gradient_and_changes_the_loss(pipes):
    pipe = pipes("i2v")
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[1], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", **NOISE_CALL)
    first, second = result.history[1]
    assert set(first.grad_norms) == {"red"} and math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert math.isfinite(first.update_norm) and first.update_norm > 0
    assert second.loss != first.loss
    assert result.latents.shape == (1, 16, 2, 4, 4)


def test_the_clock_reads_the_noisy_tokens_timestep_of_an_expand_timesteps_call(pipes, stock):
    """TI2V's per-token timestep is 0 on the conditioning frame: the clock reads the noisy tokens', so the steps count
    up and the sparse steps after the first really run sparse."""
    pipe = pipes("ti2v")
    steps = []
    hook = pipe.transformer.blocks[0].attn1.register_forward_pre_hook(
        lambda module, args: steps.append(CURRENT_FORWARD.get().step)
    )
    config = unbottle.SparseAttentionConfig(density=0.25, block_size=BLOCK, full_steps=1)
    unbottle.enable_sparse_attention(pipe, config)
    try:
        out = pipe(**{**CALL, "num_inference_steps": 3}, generator=seed(0), output_type="np").frames
    finally:
        hook.remove()
        unbottle.disable_sparse_attention(pipe)
    assert steps == [0, 0, 1, 1, 2, 2]  # cond and uncond per step
    dense = pipe(**{**CALL, "num_inference_steps": 3}, generator=seed(0), output_type="np").frames
    assert max_diff(out, dense) > 1e-4  # steps 1 and 2 were sparse
