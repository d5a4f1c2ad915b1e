"""unbottle's pipeline wrappers under diffusers' context parallelism: Ulysses-2 in two gloo processes on the CPU
(cp_harness.py) equals one process for bottleneck sampling over a high → low → high schedule (the sequence length
changes between stages; dense and with cached sparse patterns) and for noise search (exploration and gradient
optimization of the noise) on tiny Wan and Flux pipelines; a stage whose tokens the ranks do not divide is refused by
name. Two spawns (bottleneck sampling; noise search); the checks themselves are in cp_pipeline_checks.py."""

from __future__ import annotations

import cp_pipeline_checks
import pytest
from cp_harness import spawn

TOLERANCE = 1e-5  # fp32 outputs in [0, 1], Ulysses-2 vs one process
SPARSE = 1e-4  # sparse steps change the output by more than this
# the transformer's input per call: Wan 2 calls per step (CFG), latents (B, C, F, h, w) at 64 → 32 → 64 px (VAE ×8);
# Flux one call per step, packed tokens (B, N, C) at 32 → 16 → 32 px (16×16 → 8×8 tokens)
SHAPES = {
    "wan": [(1, 16, 3, 8, 8)] * 4 + [(1, 16, 3, 4, 4)] * 4 + [(1, 16, 3, 8, 8)] * 4,
    "flux": [(1, 256, 4)] * 2 + [(1, 64, 4)] * 2 + [(1, 256, 4)] * 2,
}
# sequence lengths of the sparse patterns: Wan 3 frames × 4×4 and × 2×2 patches; Flux 16 text + 256 or 64 image tokens
RESOLUTIONS = {"wan": [3 * 2 * 2, 3 * 4 * 4], "flux": [16 + 64, 16 + 256]}


@pytest.fixture(scope="module")
def bottleneck() -> list[dict]:
    return spawn(cp_pipeline_checks.bottleneck)


@pytest.fixture(scope="module")
def noise() -> list[dict]:
    return spawn(cp_pipeline_checks.noise)


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_bottleneck_ulysses_equals_one_process(bottleneck, name):
    for r in bottleneck:
        assert r[name]["dense"] <= TOLERANCE, (name, r[name]["dense"])
        assert r[name]["shapes"] == SHAPES[name]  # the sequence really changed between the stages


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_sparse_bottleneck_ulysses_equals_one_process(bottleneck, name):
    for r in bottleneck:
        assert r[name]["sparse"] <= TOLERANCE, (name, r[name]["sparse"])
        assert r[name]["sparse vs dense"] > SPARSE
        alone, split = r[name]["computed"]
        assert alone == split and set(split.values()) == {2}  # one pattern per stage resolution, on every layer
        assert r[name]["resolutions"] == RESOLUTIONS[name]
        assert r[name]["heads"] == [1]  # each rank keeps the patterns of its own 1 of the 2 heads


def test_a_stage_the_ranks_do_not_divide_is_refused_by_name(bottleneck):
    for r in bottleneck:
        assert r["odd stage"] == (
            "ValueError: stages[1].scale=0.75 makes a 48×48 px stage of 27 tokens, which the 2 context-parallel "
            "ranks of WanTransformer3DModel do not divide (each rank takes an equal share of the sequence); allowed: "
            "a scale or size whose stage has a multiple of 2 tokens"
        )
        # what diffusers does at that size: a bare assertion of its sharder
        assert r["odd stock"].startswith("AssertionError: Tensor size along dimension to be sharded must be divisible")
        assert r["odd alone"] == [(64, 64), (48, 48), (64, 64)]  # one process: the same stages are fine


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_explore_picks_the_same_seed_as_one_process(noise, name):
    objectives = noise[0][name]["objectives"]
    assert len(set(objectives)) == 3  # the seeds score differently: the pick is a real choice
    best = max(range(3), key=objectives.__getitem__)
    for r in noise:
        e = r[name]["explore"]
        assert e["seed"] == (best, best) and e["iteration"] == (0, 0) and e["gradient steps"] == 0
        assert e["latents"] <= TOLERANCE and e["images"] <= TOLERANCE and e["steps"] <= TOLERANCE, e


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_optimize_gives_the_noise_and_output_of_one_process(noise, name):
    for r in noise:
        o = r[name]["optimize"]
        assert o["gradient steps"] == 4  # 2 seeds × 2 steps, with the gradient through the all-to-all
        assert o["seed"][0] == o["seed"][1] and o["iteration"][0] == o["iteration"][1]
        # noise, images, and every step's losses, objectives and per-reward gradient norms
        assert o["latents"] <= TOLERANCE and o["images"] <= TOLERANCE and o["steps"] <= TOLERANCE, o


def test_the_noise_gradient_needs_the_sum_over_ranks(noise):
    # without it each rank's gradient misses the other rank's tokens: the noise drifts from one process's
    for r in noise:
        assert r["flux"]["optimize, gradient not summed"]["latents"] > 1e-3


def test_batched_pullbacks_are_refused_under_context_parallelism(noise):
    for r in noise:
        assert r["batched"] == (
            "NoiseSearchConfigError: NoiseSearchConfig.batched_vjp=True does not run under context parallelism (this "
            "FluxTransformer2DModel runs under ulysses_degree=2, ring_degree=1: its all-to-all backward has no "
            "batching rule); allowed: batched_vjp=False (the same numbers, one pullback per reward)"
        )
