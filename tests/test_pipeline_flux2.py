"""FLUX.2 pipelines (Flux2Pipeline; Flux2KleinPipeline): sparse attention on the stock call, bottleneck sampling
and noise search through `latents=` in the pipeline's own patchified format, the latent grid laid out as the VAE
decodes it (each 2×2 phase normalized by its own batch-norm statistics), and the noise drawn as the pipeline draws it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_checks import Channel

import unbottle
from unbottle.attention_processors import processor as processor_module
from unbottle.families import FLUX2, TokenLayout, UnsupportedModelError, family_for_model, family_for_pipeline
from unbottle.pipelines.noise_search import differentiable_call, draw_noise
from unbottle.testing.flux2 import tiny_flux2_klein_pipeline, tiny_flux2_pipeline

PROMPT = "a red circle left of a blue square"
TEXT = 48  # max_sequence_length: the system message and the prompt fit
CALL = dict(height=32, width=32, max_sequence_length=TEXT)  # latent 16 × 16, grid 8 × 8 = 64 tokens of 8 channels
NAMES = ("flux2", "klein")
PER_STEP = {"flux2": 1, "klein": 2}  # transformer calls per step: embedded guidance; Klein's CFG (guidance_scale 4)
Stage = unbottle.Stage
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=0)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=8, reshape=False, full_steps=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=8, reshape=False, full_steps=0)


@pytest.fixture(scope="module")
def pipes():
    built = {"flux2": tiny_flux2_pipeline(), "klein": tiny_flux2_klein_pipeline()}
    yield built
    for pipe in built.values():
        unbottle.disable_sparse_attention(pipe)


def seed(s=0):
    return torch.Generator().manual_seed(s)


def stock(pipe, s=0, steps=2, output_type="np", **kwargs):
    """The stock call; `prompt=` by keyword (the first positional argument of both pipelines is `image`)."""
    return pipe(prompt=PROMPT, num_inference_steps=steps, generator=seed(s), output_type=output_type,
                **{**CALL, **kwargs}).images  # fmt: skip


def generator_from(state):
    generator = torch.Generator()
    generator.set_state(state)
    return generator


class Recorder:
    """A transformer forward pre-hook recording the shapes of `hidden_states` and `encoder_hidden_states` per call."""

    def __init__(self, pipe):
        self.calls, self.inputs = [], []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((tuple(kwargs["hidden_states"].shape), tuple(kwargs["encoder_hidden_states"].shape)))
        self.inputs.append(kwargs["hidden_states"].detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def phase_statistics(pipe, height, width):
    """(mean, std) maps (1, C, h, w) of the VAE's batch norm, spelled out: latent channel c at (y, x) is normalized by
    patchified channel 4c + 2·(y mod 2) + (x mod 2), the 2×2 phase it falls in."""
    bn, eps = pipe.vae.bn, pipe.vae.config.batch_norm_eps
    channels = pipe.vae.config.latent_channels
    y, x = torch.arange(height)[:, None], torch.arange(width)[None, :]
    index = torch.stack([4 * c + 2 * (y % 2) + (x % 2) for c in range(channels)])  # (C, h, w)
    return bn.running_mean[index][None], torch.sqrt(bn.running_var[index] + eps)[None]


# -- the family record ----------------------------------------------------------------------------------------------
def test_both_pipelines_are_flux2_for_bottleneck_and_noise_search_but_not_guidance(pipes):
    for pipe in pipes.values():
        assert family_for_model(pipe.transformer, "sparse") is FLUX2
        for feature in ("bottleneck", "noise"):
            assert family_for_pipeline(pipe, feature) is FLUX2
        with pytest.raises(UnsupportedModelError, match=type(pipe).__name__):
            family_for_pipeline(pipe, "guidance")  # joint attention: no cross-attention to steer
    assert FLUX2.stock_steps == 50 and FLUX2.flow_matching
    assert FLUX2.latents.multiple(pipes["flux2"]) == 4  # VAE ×2, then the 2×2 patches: the pipeline's own multiple


# -- sparse attention on the stock pipeline -------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipes):
    pipe = pipes["flux2"]
    base = stock(pipe)
    originals = dict(pipe.transformer.attn_processors)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        assert set(handle.layer_hooks) == {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert out.shape == base.shape and np.abs(out - base).max() <= 1e-5
    restored = pipe.transformer.attn_processors
    assert restored.keys() == originals.keys() and all(restored[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(stock(pipe), base)


@pytest.mark.parametrize("name", NAMES)
def test_every_block_kept_runs_the_sparse_path_and_matches_stock(pipes, name, monkeypatch):
    pipe = pipes[name]
    base = stock(pipe)
    seen = []
    attend = processor_module.SparseLayer.attend

    def spy(self, q, k, v, attn_mask=None, scale=None):  # q: (B, H, N, D)
        seen.append((self.name, q.shape[2], processor_module.CURRENT_FORWARD.get().layout))
        return attend(self, q, k, v, attn_mask=attn_mask, scale=scale)

    monkeypatch.setattr(processor_module.SparseLayer, "attend", spy)
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    layers = {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
    assert handle.pattern_computations == dict.fromkeys(layers, 1)  # the block-sparse path, one pattern per layer
    assert np.abs(out - base).max() <= 1e-5
    # every call: the joint sequence, text first, over the 8 × 8 grid read from the 4-D img_ids
    assert len(seen) == 2 * 2 * PER_STEP[name] and {layer for layer, _, _ in seen} == layers
    assert {(n, layout) for _, n, layout in seen} == {(TEXT + 64, TokenLayout((1, 8, 8), TEXT, True))}


def test_low_density_changes_the_output_and_disable_gives_stock(pipes):
    pipe = pipes["flux2"]
    base = stock(pipe)
    handle = unbottle.enable_sparse_attention(pipe, SPARSE)
    try:
        out = stock(pipe)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert set(handle.pattern_computations.values()) == {1}
    assert np.isfinite(out).all() and np.abs(out - base).max() > 1e-4
    np.testing.assert_array_equal(stock(pipe), base)


# -- the latent grid ------------------------------------------------------------------------------------------------
def test_flux2_grid_is_the_decoders_latent_normalized_per_phase(pipes, monkeypatch):
    pipe = pipes["flux2"]
    tokens = stock(pipe, 1, output_type="latent", height=24, width=40)  # (1, 6 · 10, 8) normalized packed tokens
    decoded = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, **kw: decoded.append(z.clone()) or decode(z, **kw))
    stock(pipe, 1, output_type="pt", height=24, width=40)
    (z,) = decoded  # (1, 2, 12, 20): what the stock pipeline hands its VAE
    grid = FLUX2.latents.to_grid(pipe, tokens, 24, 40, None)
    assert tokens.shape == (1, 60, 8) and grid.shape == z.shape == (1, 2, 12, 20)
    mean, std = phase_statistics(pipe, 12, 20)
    torch.testing.assert_close(grid * std + mean, z, atol=1e-5, rtol=0)
    assert (grid - z).abs().max() > 0.1  # the statistics are not a fresh batch norm's 0 and 1
    # back to the pipeline's latents= (B, 8, 6, 10), whose packing is the tokens again, exactly
    patches = FLUX2.latents.from_grid(pipe, grid)
    assert patches.shape == (1, 8, 6, 10)
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), tokens, atol=0, rtol=0)


def test_klein_grid_normalizes_the_decoders_latent_it_returns(pipes):
    pipe = pipes["klein"]
    z = stock(pipe, 1, output_type="latent", height=24, width=40)  # Klein: the VAE latent itself, (1, 2, 12, 20)
    grid = FLUX2.latents.to_grid(pipe, z, 24, 40, None)
    assert grid.shape == z.shape == (1, 2, 12, 20)
    mean, std = phase_statistics(pipe, 12, 20)
    torch.testing.assert_close(grid * std + mean, z, atol=1e-5, rtol=0)
    assert (grid - z).abs().max() > 0.1


# -- bottleneck sampling --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_one_stage_is_the_stock_call(pipes, name):
    pipe = pipes[name]
    base = stock(pipe, 3, steps=3)
    out = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=3, strength=1.0, shift=None)])(
        PROMPT, generator=seed(3), output_type="np", **CALL
    ).images
    np.testing.assert_array_equal(out, base)


@pytest.mark.parametrize("name", NAMES)
def test_two_stages_run_the_half_then_the_full_token_count(pipes, name):
    pipe = pipes[name]
    sampler = unbottle.BottleneckSampler(pipe, [Stage(0.5, 2), Stage(1.0, 3, strength=0.7, shift=3.0)])
    with Recorder(pipe) as recorder:
        out = sampler(PROMPT, generator=seed(), output_type="np", **CALL).images
    # 16 px: latent 8 × 8 → 4 × 4 = 16 tokens; 32 px: 64 tokens; 8 patchified channels; 48 text tokens each call
    half, full = ((1, 16, 8), (1, TEXT, 48)), ((1, 64, 8), (1, TEXT, 48))
    assert recorder.calls == [half] * (2 * PER_STEP[name]) + [full] * (3 * PER_STEP[name])
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_stage_restarted_at_almost_no_noise_keeps_the_previous_stages_image(pipes, name):
    """x̂0 → grid → latents= round trip: a same-size stage restarted at σ = 1e-4 returns the first stage's image."""
    pipe = pipes[name]
    base = stock(pipe, 5)
    stages = [Stage(1.0, 2), Stage(1.0, 1, strength=1e-4, shift=1.0)]
    out = unbottle.BottleneckSampler(pipe, stages)(PROMPT, generator=seed(5), output_type="np", **CALL).images
    assert np.abs(out - base).max() < 2e-3
    assert np.abs(stock(pipe, 6) - base).max() > 0.1  # another seed: far away


# -- noise search ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [None, (24, 40)])
def test_drawn_noise_is_what_the_pipeline_feeds_its_transformer_first(pipes, size):
    pipe = pipes["flux2"]
    kwargs = {"max_sequence_length": TEXT} if size is None else dict(CALL, height=size[0], width=size[1])
    noise, _ = draw_noise(pipe, FLUX2, kwargs, 4, torch.float32)
    h, w = (32, 32) if size is None else size  # None: the pipeline's default size
    assert noise.shape == (1, 8, h // 4, w // 4)  # the 2×2-patchified grid the pipeline draws and takes as latents=
    with Recorder(pipe) as recorder:
        pipe(prompt=PROMPT, num_inference_steps=1, generator=seed(4), output_type="latent", **kwargs)
    torch.testing.assert_close(recorder.inputs[0], noise.flatten(2).transpose(1, 2), atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipes, name):
    pipe = pipes[name]
    expected = stock(pipe, 3, output_type="pt")
    noise, state = draw_noise(pipe, FLUX2, dict(CALL, num_inference_steps=2), 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    image = differentiable_call(pipe, prompt=PROMPT, num_inference_steps=2, latents=eps,
                                generator=generator_from(state), output_type="pt", **CALL).images  # fmt: skip
    assert image.requires_grad and image.shape == expected.shape == (1, 3, 32, 32)
    torch.testing.assert_close(image.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(image[:, 0].mean(), eps)
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_one_optimization_step_has_a_finite_gradient_and_moves_the_loss(pipes, name):
    pipe = pipes[name]
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[2], iterations=2, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **CALL)
    first, second = result.history[2]
    assert first.grad_norms and all(np.isfinite(v) and v > 0 for v in first.grad_norms.values())
    assert np.isfinite(first.update_norm) and first.update_norm > 0
    assert second.loss != first.loss
    # iteration 0 is the stock image of seed 2
    assert 1 - first.scores["red"] == pytest.approx(first.loss, abs=1e-9)
    assert first.scores["red"] == pytest.approx(float(stock(pipe, 2, output_type="pt")[:, 0].mean()), abs=1e-5)


def test_exploration_passes_the_prompt_by_keyword(pipes):
    """Both pipelines take `image` first: best-of-seeds exploration calls them with `prompt=`, and one seed is the
    stock call of that seed."""
    pipe = pipes["flux2"]
    reward = {"red": (Channel(0), 1.0)}
    result = unbottle.NoiseSearch(pipe, reward, seeds=[5], iterations=0, progress=False)(
        PROMPT, num_inference_steps=2, output_type="np", **CALL
    )
    np.testing.assert_array_equal(result.images, stock(pipe, 5))
