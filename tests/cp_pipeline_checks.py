"""What tests/test_context_parallel_pipelines.py runs inside each gloo process (see cp_harness.py): the tiny Wan
(video) and Flux pipelines, built alike on every rank, run once in the process alone and once with the transformer
under Ulysses-2 as `--parallel ulysses` puts it there (`enable_ulysses`): bottleneck sampling (dense, and sparse
attention with cached patterns) and noise search (exploration, optimization); each check returns numbers the test
compares."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import torch
from cp_harness import WORLD
from pipeline_checks import Channel

import unbottle
from unbottle.cli.parallel import World, enable_ulysses
from unbottle.pipelines import noise_search
from unbottle.testing import tiny_flux_pipeline, tiny_wan_pipeline

PROMPT = "a red circle left of a blue square"
BUILD = {"wan": tiny_wan_pipeline, "flux": tiny_flux_pipeline}
# Wan: 9 frames at 64×64 → 3 × 4×4 = 48 tokens, 3 × 2×2 = 12 at half size; Flux: 32×32 → 16×16 = 256 tokens, 64 at
# half size, and 16 text tokens (sharded with them)
BOTTLENECK = {"wan": dict(height=64, width=64, num_frames=9, max_sequence_length=16),
              "flux": dict(height=32, width=32, max_sequence_length=16)}  # fmt: skip
THREE = [unbottle.Stage(scale=1.0, steps=2, strength=1.0, shift=9.0),
         unbottle.Stage(scale=0.5, steps=2, strength=0.8, shift=6.0),
         unbottle.Stage(scale=1.0, steps=2, strength=0.6, shift=9.0)]  # fmt: skip
# 0.75 of 64 px: 48 px → 3 × 3×3 = 27 Wan tokens, which 2 ranks do not divide
ODD = [THREE[0], unbottle.Stage(scale=0.75, steps=2, strength=0.8, shift=6.0), THREE[2]]
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=8, pattern="cached", full_steps=1, refresh_every=2)
# noise search: Wan 5 frames at 32×32 → 2 × 2×2 = 8 tokens; two steps each
SEARCH = {"wan": dict(height=32, width=32, num_frames=5, max_sequence_length=16, num_inference_steps=2),
          "flux": dict(height=32, width=32, max_sequence_length=16, num_inference_steps=2)}  # fmt: skip


def build(name: str, rank: int | None = None) -> object:
    """The tiny pipeline `name`; with a rank, its transformer under Ulysses over the WORLD ranks."""
    pipe = BUILD[name]()
    if rank is not None:
        enable_ulysses(pipe, World(WORLD, rank, rank))
    return pipe


def pixels(output: object) -> torch.Tensor:
    """A pipeline output's images or frames as one float64 tensor."""
    media = output.frames if hasattr(output, "frames") else output.images
    return torch.as_tensor(np.asarray(media), dtype=torch.float64)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| in float64."""
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def _error(call) -> str:
    try:
        call()
    except (ValueError, RuntimeError, AssertionError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


@contextlib.contextmanager
def token_counts(pipe: object):
    """The transformer's `hidden_states` shape of every call (before the plan shards it), in call order."""
    shapes: list[tuple[int, ...]] = []

    def record(module, args, kwargs):
        shapes.append(tuple((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape))

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


def sample(pipe: object, name: str, stages: list = THREE) -> torch.Tensor:
    """The bottleneck sampler's output over `stages` with seed 0, as numbers."""
    sampler = unbottle.BottleneckSampler(pipe, stages)
    return pixels(sampler(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **BOTTLENECK[name]))


def odd_stage(alone: object, split: object) -> dict:
    """Wan with a stage of 27 tokens: the sampler's refusal under Ulysses-2, what the stock pipeline does at that
    size under it, and the stage sizes in one process."""
    sampler = unbottle.BottleneckSampler(split, ODD)
    result = {"odd stage": _error(lambda: sampler(PROMPT, generator=torch.Generator().manual_seed(0),
                                                  output_type="np", **BOTTLENECK["wan"]))}  # fmt: skip
    unbottle.disable_sparse_attention(split)  # the stock pipeline at that size, without unbottle
    call = dict(BOTTLENECK["wan"], height=48, width=48, num_inference_steps=1, output_type="latent")
    result["odd stock"] = _error(lambda: split(PROMPT, **call))
    result["odd alone"] = [(p.height, p.width) for p in unbottle.BottleneckSampler(alone, ODD).plan(64, 64, 9)]
    return result


def bottleneck(rank: int, folder: str) -> dict:
    """Per pipeline: max |Ulysses-2 − one process| of the 3-stage sampler, dense and sparse ("cached"), the input
    shapes of every transformer call, the sparse patterns' resolutions and heads; the refusal of a stage whose tokens
    the ranks do not divide, and what diffusers does with such a size."""
    result = {}
    for name in ("wan", "flux"):
        alone, split = build(name), build(name, rank)
        dense = sample(alone, name)
        with token_counts(split) as shapes:
            out = sample(split, name)
        r = {"dense": diff(out, dense), "shapes": shapes}
        handles = [unbottle.enable_sparse_attention(p, SPARSE) for p in (alone, split)]
        reference = sample(alone, name)
        r["sparse"] = diff(sample(split, name), reference)
        r["sparse vs dense"] = diff(reference, dense)  # the sparse steps really ran sparse
        r["computed"] = [dict(h.pattern_computations) for h in handles]  # alone, split
        r["resolutions"] = sorted({key[1] for key in handles[1].store.patterns})  # keys: (layer, tokens, …)
        r["heads"] = sorted({t.shape[1] for t, _ in handles[1].store.patterns.values()})
        result[name] = r
        if name == "wan":
            result.update(odd_stage(alone, split))
    return result


def _search(pipe: object, name: str, **options) -> noise_search.NoiseSearchResult:
    return unbottle.NoiseSearch(pipe, progress=False, **options)(PROMPT, output_type="pt", **SEARCH[name])


def _compare(a: noise_search.NoiseSearchResult, b: noise_search.NoiseSearchResult) -> dict:
    """How far result `b` is from `a`: chosen seed and iterate, noise, images, every step's numbers."""
    steps = [(x, y) for s in a.history for x, y in zip(a.history[s], b.history[s], strict=True)]
    numbers = [abs(getattr(x, f) - getattr(y, f)) for x, y in steps for f in ("loss", "objective")]
    numbers += [abs(x.grad_norms[k] - y.grad_norms[k]) for x, y in steps for k in x.grad_norms]
    return {"seed": (a.seed, b.seed), "iteration": (a.iteration, b.iteration), "latents": diff(a.latents, b.latents),
            "images": diff(pixels(a.output), pixels(b.output)), "steps": max(numbers),
            "gradient steps": sum(bool(x.grad_norms) for x, _ in steps)}  # fmt: skip


def noise(rank: int, folder: str) -> dict:
    """Per pipeline: exploration (3 seeds, best by the red channel) and optimization (2 seeds × 3 iterations, two
    rewards, 2 gradient steps per seed) under Ulysses-2 against one process; the seeds' objectives; for Flux, the
    optimization without summing the noise gradient over the ranks, and batched pullbacks (refused)."""
    explore = dict(rewards={"red": (Channel(0), 1.0)}, seeds=[0, 1, 2], iterations=0)
    optimize = dict(rewards={"red": (Channel(0), 50.0), "blue": (Channel(2), 20.0)}, seeds=[5, 6], iterations=3)
    result = {}
    for name in ("wan", "flux"):
        alone, split = build(name), build(name, rank)
        a, b = _search(alone, name, **explore), _search(split, name, **explore)
        r = {"explore": _compare(a, b), "objectives": [a.history[s][0].objective for s in a.history]}
        r["optimize"] = _compare(_search(alone, name, **optimize), _search(split, name, **optimize))
        result[name] = r
    flux_alone, flux_split = build("flux"), build("flux", rank)
    reference = _search(flux_alone, "flux", **optimize)
    with mock.patch.object(noise_search, "_rank_sums", lambda pipe: contextlib.nullcontext()):
        result["flux"]["optimize, gradient not summed"] = _compare(reference, _search(flux_split, "flux", **optimize))
    result["batched"] = _error(lambda: _search(flux_split, "flux", **optimize, batched_vjp=True))
    return result
