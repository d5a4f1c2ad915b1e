"""Pipeline-level checks shared by the FLUX.1-like pipelines' test files (Chroma, Bria, Ovis-Image): 2×2-packed latent
tokens, plain CFG with the negative encoded beside the prompt.

Each check drives the tiny stock pipeline at 32 × 32 px (16 × 16 latents, 64 packed tokens): sparse attention matches
stock through the pipeline and disabling restores its processors; one bottleneck stage is the stock call and two
stages call the denoiser at their token counts; the noise that noise search draws is the pipeline's own, the
differentiable call with it is the stock image and one optimization step has a finite gradient and changes the loss.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pipeline_checks import Channel, max_diff, seed

import unbottle
from unbottle.attention_processors.enable import attention_processors
from unbottle.families import UnsupportedModelError, family_for_pipeline, family_named
from unbottle.pipelines import noise_search

Stage = unbottle.Stage
PROMPT = "a red circle left of a blue square"
NEGATIVE = "a green cube"
CALL = dict(height=32, width=32, max_sequence_length=16)  # 32×32 px → 16×16 latents → 64 packed tokens
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=8, full_steps=1, refresh_every=0,
                                             reshape=False)  # fmt: skip
LOW = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=0, reshape=False)
LAYERS = {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}


def stock(pipe, prompt=PROMPT, steps=2, s=0, output_type="np", **kwargs):
    """The stock pipeline's images for `prompt` with seed `s` at the tests' size."""
    return pipe(prompt, num_inference_steps=steps, generator=seed(s), output_type=output_type,
                **{**CALL, **kwargs}).images  # fmt: skip


class Recorder:
    """A transformer forward pre-hook recording (timestep, hidden_states shape) of every call."""

    def __init__(self, pipe):
        self.calls = []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((float(kwargs["timestep"].flatten()[0]), tuple(kwargs["hidden_states"].shape)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- the family record ---------------------------------------------------------------------------------------------
def check_resolution(pipe, name: str) -> None:
    """The pipeline resolves to its family for bottleneck and noise search; joint attention: no guidance."""
    family = family_named(name)
    assert family_for_pipeline(pipe, "bottleneck") is family and family_for_pipeline(pipe, "noise") is family
    with pytest.raises(UnsupportedModelError, match=type(pipe).__name__):
        family_for_pipeline(pipe, "guidance")


def check_sizes(pipe, name: str) -> None:
    """Granularity 4 px (VAE ×2 × 2×2 packing), default 32 × 32 px, 64 tokens: what the pipeline itself runs."""
    latents = family_named(name).latents
    assert latents.multiple(pipe) == 4 and latents.latent_size(pipe, 32, 24) == (16, 12)
    assert latents.default_size(pipe) == (32, 32)
    with Recorder(pipe) as rec:
        image = pipe(PROMPT, num_inference_steps=1, generator=seed(), output_type="np", max_sequence_length=16,
                     guidance_scale=1.0).images  # fmt: skip
    assert image.shape == (1, 32, 32, 3)  # no size given: the default size
    assert rec.calls[0][1] == (1, latents.tokens(pipe, (1, 2, 16, 16)), 8) == (1, 64, 8)  # 2 channels × 2 × 2


def check_drawn_noise(pipe, name: str, height: int, width: int) -> None:
    """`draw_noise` gives exactly the packed latents the pipeline's `prepare_latents` draws from the same seed."""
    noise, state = noise_search.draw_noise(pipe, family_named(name), dict(height=height, width=width), 3,
                                           torch.float32)  # fmt: skip
    generator = seed(3)
    expected, _ = pipe.prepare_latents(1, 2, height, width, torch.float32, torch.device("cpu"), generator)
    assert noise.shape == expected.shape == (1, (height // 4) * (width // 4), 8)
    assert torch.equal(noise, expected)
    assert torch.equal(state, generator.get_state())


def check_packing(pipe, name: str) -> None:
    """`from_grid` puts each 2×2 block of a channel in one token, as FLUX.1; `to_grid` inverts it."""
    latents = family_named(name).latents
    grid = torch.randn(2, 2, 10, 6, generator=seed())  # (B, C, h, w) for 20 × 12 px
    tokens = latents.from_grid(pipe, grid)  # (B, h/2 · w/2, 4C)
    assert tokens.shape == (2, 5 * 3, 8)
    b, c, y, x = 1, 1, 7, 4
    assert tokens[b, (y // 2) * 3 + x // 2, c * 4 + (y % 2) * 2 + x % 2] == grid[b, c, y, x]
    assert torch.equal(latents.to_grid(pipe, tokens, 20, 12, None), grid)


# -- sparse attention ----------------------------------------------------------------------------------------------
def check_sparse_density_one(pipe, **extra) -> None:
    """Density 1.0 through the pipeline is stock (≤ 1e-5); disabling restores the very processors."""
    base = stock(pipe, **extra)
    before = dict(attention_processors(pipe.transformer))
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        current = attention_processors(pipe.transformer)
        wrapped = {k for k, p in current.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {f"{name}.processor" for name in LAYERS}
        out = stock(pipe, **extra)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert out.shape == base.shape and max_diff(out, base) <= 1e-5
    after = attention_processors(pipe.transformer)
    assert after.keys() == before.keys() and all(after[k] is p for k, p in before.items())
    np.testing.assert_array_equal(stock(pipe, **extra), base)


def check_sparse_every_block(pipe, **extra) -> None:
    """A density keeping every block runs the block-sparse path in each layer and matches stock; a low one does not."""
    base = stock(pipe, **extra)
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = stock(pipe, **extra)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)  # one pattern per layer (one sequence length)
    assert max_diff(out, base) <= 1e-5
    unbottle.enable_sparse_attention(pipe, LOW)
    try:
        assert max_diff(stock(pipe, **extra), base) > 1e-5  # the same path at a low density does change the image
    finally:
        unbottle.disable_sparse_attention(pipe)


# -- bottleneck sampling -------------------------------------------------------------------------------------------
def check_one_stage(pipe, prompt=PROMPT, **extra) -> None:
    """One full-strength stage with the pipeline's own schedule is the stock call, bit for bit."""
    base = stock(pipe, prompt, **extra)
    sampler = unbottle.BottleneckSampler(pipe, [Stage(scale=1.0, steps=2, strength=1.0, shift=None)])
    out = sampler(prompt, generator=seed(), output_type="np", **{**CALL, **extra}).images
    assert out.shape == base.shape
    np.testing.assert_array_equal(out, base)


def check_two_stages(pipe, batched_cfg: bool, **extra) -> None:
    """A half-size stage then a full-size one: the denoiser runs at 16 then 64 tokens, the second from strength 0.7.

    `batched_cfg`: the pipeline runs CFG's two branches as one batch of 2 (Bria), else as two forwards per step."""
    stages = [Stage(scale=0.5, steps=2, strength=1.0, shift=None), Stage(scale=1.0, steps=3, strength=0.7, shift=None)]
    sampler = unbottle.BottleneckSampler(pipe, stages)
    assert [(p.height, p.width) for p in sampler.plan(32, 32)] == [(16, 16), (32, 32)]
    with Recorder(pipe) as rec:
        out = sampler(PROMPT, generator=seed(), output_type="np", **{**CALL, **extra}).images
    batch, forwards = (2, 1) if batched_cfg else (1, 2)  # CFG on (guidance_scale 5 by default)
    shapes = [shape for _, shape in rec.calls]
    assert shapes == [(batch, 16, 8)] * (2 * forwards) + [(batch, 64, 8)] * (3 * forwards)  # 4×4 then 8×8 tokens
    second = rec.calls[2 * forwards][0]
    scale = 1000.0 if batched_cfg else 1.0  # Bria passes the raw timestep, the others timestep / 1000
    assert second == pytest.approx(0.7 * scale, rel=1e-5)  # the second stage restarts at its strength
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


# -- noise search --------------------------------------------------------------------------------------------------
def check_differentiable_call(pipe, name: str, **extra) -> None:
    """The differentiable call with the drawn noise is the stock call of that seed, with a gradient to the noise."""
    call = dict(num_inference_steps=2, **CALL, **extra)
    expected = stock(pipe, s=3, output_type="pt", **extra)
    noise, state = noise_search.draw_noise(pipe, family_named(name), call, 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    image = noise_search.differentiable_call(pipe, PROMPT, latents=eps, generator=generator, output_type="pt",
                                             **call).images  # fmt: skip
    assert image.requires_grad and image.shape == expected.shape == (1, 3, 32, 32)
    torch.testing.assert_close(image.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(image[:, 0].mean(), eps)
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def check_noise_search_step(pipe, **extra) -> None:
    """One optimization step: a finite, non-zero gradient norm, a changed loss; iteration 0 is the stock image."""
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[5], iterations=2, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **CALL, **extra)
    first, second = result.history[5]
    assert set(first.grad_norms) == {"red"} and math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert first.loss != second.loss
    base = stock(pipe, s=5, output_type="pt", **extra)  # the search's own encoding gives the stock image
    assert first.loss == pytest.approx(1.0 - float(base[:, 0].mean()), abs=1e-5)
    assert result.latents.shape == (1, 64, 8)  # the chosen noise in the pipeline's packed `latents=` format
