"""SparseAttentionConfig validation, the dense/refresh/sparse schedule and its step rule, and unsupported-model
errors."""

import dataclasses
import warnings

import pytest
import torch

import unbottle
from unbottle.attention_processors.schedule import StepKind, StepRule, step_kind

NAN, INF = float("nan"), float("inf")

# (field, bad value): out of range, non-finite, and wrong types (str, bool, None, float for an int field, ...)
BAD_VALUES = [
    ("density", 0), ("density", 0.0), ("density", -0.1), ("density", 1.0001), ("density", 2), ("density", NAN),
    ("density", INF), ("density", -INF), ("density", "0.5"), ("density", True), ("density", None),
    ("density", [0.5]),
    ("block_size", 0), ("block_size", -8), ("block_size", 8.0), ("block_size", 100_000), ("block_size", NAN),
    ("block_size", INF), ("block_size", "8"), ("block_size", True), ("block_size", None),
    ("pattern", "sparse"), ("pattern", ""), ("pattern", "Cached"), ("pattern", None), ("pattern", 1),
    ("pattern", True),
    ("reshape", "yes"), ("reshape", 1), ("reshape", 0), ("reshape", None), ("reshape", 1.0),
    ("full_steps", -1), ("full_steps", -0.1), ("full_steps", 1.5), ("full_steps", NAN), ("full_steps", INF),
    ("full_steps", "2"), ("full_steps", True), ("full_steps", False), ("full_steps", None),
    ("refresh_every", -1), ("refresh_every", 1.5), ("refresh_every", 2.0), ("refresh_every", NAN),
    ("refresh_every", INF), ("refresh_every", "5"), ("refresh_every", True), ("refresh_every", None),
    ("rho_growth", -0.01), ("rho_growth", -1), ("rho_growth", NAN), ("rho_growth", INF), ("rho_growth", -INF),
    ("rho_growth", "0.04"), ("rho_growth", True), ("rho_growth", None),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_value_raises_value_error_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=field) as info:
        unbottle.SparseAttentionConfig(**{field: value})
    message = str(info.value)
    assert str(value) in message or repr(value) in message, message


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_density_range_is_stated(value):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        unbottle.SparseAttentionConfig(density=value)


GOOD_VALUES = [
    ("density", 1.0), ("density", 1), ("density", 1e-6), ("density", 0.5),
    ("block_size", 1), ("block_size", 4), ("block_size", 128),
    ("pattern", "cached"), ("pattern", "dynamic"), ("pattern", "window"),
    ("reshape", True), ("reshape", False),
    ("full_steps", 0), ("full_steps", 0.0), ("full_steps", 1.0), ("full_steps", 1), ("full_steps", 0.5),
    ("full_steps", 1000),
    ("refresh_every", 0), ("refresh_every", 1), ("refresh_every", 7),
    ("rho_growth", 0.0), ("rho_growth", 0), ("rho_growth", 0.04), ("rho_growth", 3.0),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), GOOD_VALUES, ids=[f"{f}={v!r}" for f, v in GOOD_VALUES])
def test_valid_edge_values_are_accepted(field, value):
    cfg = unbottle.SparseAttentionConfig(**{field: value})
    assert getattr(cfg, field) == value


def test_config_is_frozen_and_has_design_defaults():
    cfg = unbottle.SparseAttentionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.density = 0.5  # type: ignore[misc]
    # DESIGN.md's documented defaults
    assert (cfg.density, cfg.block_size, cfg.pattern, cfg.reshape, cfg.full_steps, cfg.refresh_every) == (
        0.05, 128, "cached", True, 0.2, 5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("full_steps", "num_steps", "expected"),
    [
        (0.5, 4, 2), (0.25, 8, 2), (1.0, 4, 4), (0.0, 10, 0), (0.3, 10, 3), (0.2, 10, 2), (0.1, 30, 3),
        (3, 10, 3), (0, 10, 0), (3, None, 3),
    ],
)  # fmt: skip
def test_full_steps_fraction_or_count(full_steps, num_steps, expected):
    # a fraction of steps that is a whole number of steps must not be rounded up by float error (0.3 · 10 = 3)
    assert unbottle.SparseAttentionConfig(full_steps=full_steps).num_full_steps(num_steps) == expected


def test_full_steps_fraction_with_unknown_steps_is_none():
    assert unbottle.SparseAttentionConfig(full_steps=0.2).num_full_steps(None) is None


def test_config_type_checked_by_entry_points():
    with pytest.raises(TypeError, match="SparseAttentionConfig"):
        unbottle.SparseAttnProcessor({"density": 0.5})
    with pytest.raises(TypeError, match="SparseAttentionConfig"):
        unbottle.enable_sparse_attention(torch.nn.Linear(2, 2), {"density": 0.5})


# -- unsupported models --------------------------------------------------------------------------------------------
def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4,), latent_channels=1, norm_num_groups=1, layers_per_block=1)


@pytest.mark.parametrize("build", [lambda: torch.nn.Linear(4, 4), _tiny_vae], ids=["Linear", "AutoencoderKL"])
def test_unsupported_model_lists_supported_families(build):
    model = build()
    with pytest.raises(ValueError) as info:
        unbottle.enable_sparse_attention(model, unbottle.SparseAttentionConfig())
    message = str(info.value)
    assert type(model).__name__ in message
    for family in ("Flux", "SD3", "PixArt", "CogVideoX", "Wan", "HunyuanVideo", "LTX", "UNet"):
        assert family in message, (family, message)
    # nothing was installed on the unsupported model
    assert not hasattr(model, "_diffusers_hook") or not model._diffusers_hook.hooks


def test_object_that_is_not_a_pipeline_is_rejected():
    with pytest.raises(ValueError, match="pipeline"):
        unbottle.enable_sparse_attention(object(), unbottle.SparseAttentionConfig())


# -- schedule --------------------------------------------------------------------------------------------------------
D, R, S = StepKind.DENSE, StepKind.REFRESH, StepKind.SPARSE

SCHEDULES = [
    # full_steps dense steps (the last a refresh when reshape needs statistics), then sparse steps with a refresh
    # after every `refresh_every` of them
    (2, 2, True, [D, R, S, S, R, S, S, R, S]),
    (3, 1, True, [D, D, R, S, R, S, R, S]),
    (1, 3, True, [R, S, S, S, R, S, S, S, R]),
    (2, 0, True, [D, R, S, S, S, S, S, S]),
    # with reshape a first refresh is needed even when no full steps are asked for
    (0, 0, True, [R, S, S, S, S]),
    (0, 2, True, [R, S, S, R, S, S, R]),
    # without reshape there are no statistics: dense steps, then only sparse steps
    (2, 2, False, [D, D, S, S, S, S, S]),
    (0, 3, False, [S, S, S, S, S]),
    (4, 1, False, [D, D, D, D, S, S]),
]


@pytest.mark.parametrize(("full", "refresh", "reshape", "expected"), SCHEDULES)
def test_step_kind_table(full, refresh, reshape, expected):
    assert [step_kind(i, full, refresh, reshape) for i in range(len(expected))] == expected


INVARIANT_CASES = [(k, r, s) for k in range(5) for r in range(4) for s in (0, 1)]


@pytest.mark.parametrize(("full", "refresh", "reshape"), INVARIANT_CASES)
def test_step_kind_invariants(full, refresh, reshape):
    kinds = [step_kind(i, full, refresh, bool(reshape)) for i in range(40)]
    # the first `full` steps are exact attention (dense or refresh), the step right after them is sparse
    assert all(k is not S for k in kinds[:full])
    assert kinds[max(full, 1 if reshape else 0)] is S
    # a refresh precedes the first sparse step when reshaping
    first_sparse = kinds.index(S)
    if reshape:
        assert kinds[first_sparse - 1] is R
    else:
        assert R not in kinds
    # runs of sparse steps between refreshes are exactly `refresh` long (unbounded when 0)
    runs, run = [], 0
    for k in kinds[first_sparse:]:
        if k is S:
            run += 1
        else:
            runs.append(run)
            run = 0
    if reshape and refresh:
        assert runs and all(r == refresh for r in runs)
    else:
        assert runs == []
    assert len([k for k in kinds if k is D]) == (max(full - 1, 0) if reshape else full)


def test_step_rule_resolves_a_fraction_from_what_the_front_knows():
    rule = StepRule(unbottle.SparseAttentionConfig(full_steps=0.25, reshape=False), "tell the count.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known count, or the clock's timestep threshold: no guess, no warning
        assert [rule.kind(i, 8) for i in range(4)] == [D, D, S, S]  # ceil(0.25 · 8) = 2 dense steps
        assert rule.kind(7, by_timestep=True) is D  # the threshold not crossed yet: still dense
        assert [rule.kind(i, by_timestep=True, full_until=3) for i in (2, 3)] == [D, S]
    guess = r"full_steps=0\.25 is a fraction .* assuming 12\. Give full_steps as a count, tell the count\."
    with pytest.warns(UserWarning, match=guess):
        assert [rule.kind(i, assumed_steps=12) for i in (2, 3)] == [D, S]  # ceil(0.25 · 12) = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already
        assert [rule.kind(i) for i in (12, 13)] == [D, S]  # nothing to go by: 50 steps, ceil(12.5) = 13 dense


def test_step_rule_first_step_dense_waits_for_the_count():
    config = unbottle.SparseAttentionConfig(full_steps=0.01, reshape=True)
    with pytest.warns(UserWarning, match="assuming 50"):
        assert StepRule(config, "").kind(0) is R  # ceil(0.01 · 50) = 1 full step: a refresh, with reshape
    rule = StepRule(config, "", first_step_dense=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rule.kind(0) is D  # dense whatever the count turns out to be, and no guess yet
    with pytest.warns(UserWarning, match="assuming 50"):
        assert rule.kind(1) is S
