"""Pipeline-level checks shared by the single-call text-to-image pipelines' test files (AuraFlow, CogView4,
Lumina-Image 2.0, HunyuanImage, Z-Image, Qwen-Image, LongCat-Image).

Each check takes the tiny stock pipeline and the test file's own `stock` (the pipeline's images for a prompt and seed
at the file's size): the pipeline resolves to its family for bottleneck sampling and noise search but not guidance;
sparse attention at density 1.0 is stock and disabling restores the very processors; a density keeping every block
runs the block-sparse path and matches stock, a low one does not; one bottleneck stage is the stock call; the
differentiable call with the drawn noise is the stock image of that seed, and one optimization step has a finite
gradient and changes the loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest
import torch

import unbottle
from unbottle.attention_processors.enable import attention_processors
from unbottle.families import Family, UnsupportedModelError, family_for_pipeline, family_named
from unbottle.pipelines import noise_search

Stock = Callable[..., Any]  # (pipe, prompt=PROMPT, steps=…, s=…, output_type=…, **call keywords) -> images
PROMPT = "a red circle left of a blue square"
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=8, full_steps=1, refresh_every=0,
                                             reshape=False)  # fmt: skip
LOW = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=0, reshape=False)


def seed(s: int = 0) -> torch.Generator:
    """A CPU generator seeded with `s`."""
    return torch.Generator().manual_seed(s)


def stock(pipe, prompt=PROMPT, steps: int = 2, s: int = 0, output_type: str = "np", *, call: dict, **kwargs):
    """The stock pipeline's images for `prompt` with seed `s`, the `call` keywords overridden by `kwargs`."""
    return pipe(prompt, num_inference_steps=steps, generator=seed(s), output_type=output_type,
                **{**call, **kwargs}).images  # fmt: skip


def max_diff(a, b) -> float:
    """The largest absolute difference of two image batches, in fp64."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


class Recorder:
    """A transformer forward pre-hook recording (timestep, hidden_states shape) and the hidden states of every call."""

    def __init__(self, pipe):
        self.calls, self.inputs = [], []
        self.handle = pipe.transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.calls.append((float(kwargs["timestep"].flatten()[0]), tuple(hidden.shape)))
        self.inputs.append(hidden.detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class Channel(torch.nn.Module):
    """Mean of one colour channel: a simple differentiable reward, already in [0, 1]."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, images, prompts):
        return images[:, self.channel].mean((-2, -1))  # (B,)

    def unit(self, scores):
        return scores


# -- the family record ---------------------------------------------------------------------------------------------
def check_resolution(pipe, name: str) -> Family:
    """The pipeline resolves to family `name` for bottleneck and noise search; joint attention: no guidance."""
    family = family_named(name)
    assert family_for_pipeline(pipe, "bottleneck") is family and family_for_pipeline(pipe, "noise") is family
    with pytest.raises(UnsupportedModelError, match=type(pipe).__name__):
        family_for_pipeline(pipe, "guidance")  # no cross-attention to text to guide
    return family


# -- sparse attention ----------------------------------------------------------------------------------------------
def check_sparse_density_one(pipe, stock: Stock, layers: Iterable[str], again: bool = False, **extra) -> np.ndarray:
    """Density 1.0 is stock (≤ 1e-5) on the `layers`; disabling restores the very processors; returns the stock image.

    `again`: a stock call after disabling is the first one, bit for bit."""
    base = stock(pipe, **extra)
    originals = dict(attention_processors(pipe.transformer))
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    try:
        current = attention_processors(pipe.transformer)
        wrapped = {k for k, p in current.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {f"{name}.processor" for name in layers}
        out = stock(pipe, **extra)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {}  # density 1.0: the stock attention, no pattern
    assert out.shape == base.shape and max_diff(out, base) <= 1e-5
    after = attention_processors(pipe.transformer)
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    if again:
        np.testing.assert_array_equal(stock(pipe, **extra), base)
    return base


def check_sparse_every_block(pipe, stock: Stock, layers: Iterable[str], patterns: int | None = None, low: bool = True,
                             base: np.ndarray | None = None, **extra) -> None:  # fmt: skip
    """A density keeping every block runs the block-sparse path in each of `layers` and matches stock (`base`).

    `patterns`: the patterns each layer computes (one per sequence length), None: at least one; `low`: a low density
    through the same path does change the image."""
    layers = set(layers)
    base = stock(pipe, **extra) if base is None else base
    handle = unbottle.enable_sparse_attention(pipe, EVERY_BLOCK)
    try:
        out = stock(pipe, **extra)
    finally:
        unbottle.disable_sparse_attention(pipe)
    if patterns is None:
        assert set(handle.pattern_computations) == layers and all(n > 0 for n in handle.pattern_computations.values())
    else:
        assert handle.pattern_computations == dict.fromkeys(layers, patterns)
    assert max_diff(out, base) <= 1e-5
    if low:
        unbottle.enable_sparse_attention(pipe, LOW)
        try:
            assert max_diff(stock(pipe, **extra), base) > 1e-5
        finally:
            unbottle.disable_sparse_attention(pipe)


# -- bottleneck sampling -------------------------------------------------------------------------------------------
def check_one_stage(pipe, stock: Stock, call: dict, prompt=PROMPT, steps: int = 2, **extra) -> np.ndarray:
    """One full-strength stage of `steps` with the pipeline's own schedule is the stock call, bit for bit.

    Each call gets its own copy of `prompt` and `extra` (a pipeline may template prompt lists in place)."""
    base = stock(pipe, copy.deepcopy(prompt), steps=steps, **copy.deepcopy(extra))
    sampler = unbottle.BottleneckSampler(pipe, [unbottle.Stage(scale=1.0, steps=steps, strength=1.0, shift=None)])
    extra = copy.deepcopy(extra)
    out = sampler(copy.deepcopy(prompt), generator=seed(), output_type="np", **{**call, **extra}).images
    assert out.shape == base.shape
    np.testing.assert_array_equal(out, base)
    return base


# -- noise search --------------------------------------------------------------------------------------------------
def check_differentiable_call(pipe, stock: Stock, name: str, call: dict, **extra) -> None:
    """The differentiable call with the drawn noise is the stock call of that seed, with a gradient to the noise."""
    kwargs = dict(num_inference_steps=2, **call, **extra)
    expected = stock(pipe, steps=2, s=3, output_type="pt", **extra)
    noise, state = noise_search.draw_noise(pipe, family_named(name), kwargs, 3, torch.float32)
    eps = noise.clone().requires_grad_(True)
    generator = torch.Generator()
    generator.set_state(state)
    image = noise_search.differentiable_call(pipe, PROMPT, latents=eps, generator=generator, output_type="pt",
                                             **kwargs).images  # fmt: skip
    assert image.requires_grad and image.shape == expected.shape == (1, 3, call["height"], call["width"])
    torch.testing.assert_close(image.detach(), expected, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(image[:, 0].mean(), eps)
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def check_noise_search_step(pipe, stock: Stock, call: dict, latents: tuple[int, ...], **extra) -> Any:
    """One optimization step: a finite, non-zero gradient norm, a changed loss; iteration 0 is the stock image.

    `latents`: the shape of the chosen noise, in the pipeline's `latents=` format; returns the search's result."""
    search = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[5], iterations=2, progress=False)
    result = search(PROMPT, num_inference_steps=2, output_type="pt", **call, **extra)
    first, second = result.history[5]
    assert set(first.grad_norms) == {"red"} and math.isfinite(first.grad_norms["red"]) and first.grad_norms["red"] > 0
    assert first.loss != second.loss
    base = stock(pipe, steps=2, s=5, output_type="pt", **extra)  # the search's own encoding gives the stock image
    assert first.loss == pytest.approx(1.0 - float(base[:, 0].mean()), abs=1e-5)
    assert result.latents.shape == latents
    return result
