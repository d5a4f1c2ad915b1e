"""Sparse attention on DiT and Ovis-Image (no AttentionMixin: processors reached through the modules themselves), and
the step clock reading a timestep argument that is not called `timestep` (Z-Image's rising `t`, HiDream's
`timesteps`).

Per class: enabled at density 1.0 the output is stock, only the family's self-attention modules are wrapped, and
disabling restores the very processors; a density that keeps every block runs the block-sparse path and still matches
stock; a low density changes the output; and the family's token layout explains every sparse call with the grid and
text split worked out here by hand from the fixture's sizes.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from family_checks import (
    Tiny,
    check_density_one_is_stock,
    check_every_block_kept_is_stock,
    check_low_density_changes_the_output,
    check_the_layout_explains_every_call,
)

import unbottle
from unbottle.attention_processors.state import Clock
from unbottle.families import SelfAttention, TokenLayout, family_named

B = 1


def dit():
    """A 12×12 latent in 2×2 patches: 6×6 image tokens, class-conditioned, no text in the sequence."""
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=12, patch_size=2,
        num_embeds_ada_norm=10,
    )  # fmt: skip
    inputs = {"hidden_states": torch.randn(B, 4, 12, 12), "timestep": torch.tensor([500] * B),
              "class_labels": torch.tensor([3] * B)}  # fmt: skip
    return model, inputs, {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}, ((1, 6, 6), 0, True)


def ovis_image():
    """5 text tokens, then 4×6 packed image tokens (rows and columns from `img_ids`); double and single blocks."""
    model = diffusers.OvisImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    txt_ids = torch.zeros(5, 3)
    txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(5.0)
    img_ids = torch.zeros(4 * 6, 3)
    img_ids[:, 1] = torch.arange(4.0).repeat_interleave(6)
    img_ids[:, 2] = torch.arange(6.0).repeat(4)
    inputs = {
        "hidden_states": torch.randn(B, 4 * 6, 4), "encoder_hidden_states": torch.randn(B, 5, 16),
        "timestep": torch.full((B,), 0.5), "img_ids": img_ids, "txt_ids": txt_ids,
    }  # fmt: skip
    modules = {f"{kind}transformer_blocks.{i}.attn" for kind in ("", "single_") for i in (0, 1)}
    return model, inputs, modules, ((1, 4, 6), 5, True)


CASES = {
    "DiTTransformer2DModel": ("DiT", dit),
    "OvisImageTransformer2DModel": ("OvisImage", ovis_image),
}
_BUILT: dict[str, Tiny] = {}


def build(name: str) -> Tiny:
    """The tiny seeded fp32 model of class `name`, its inputs, stock output, sparse modules and layout, built once."""
    if name not in _BUILT:
        torch.manual_seed(0)
        model, inputs, modules, expected = CASES[name][1]()
        model = model.eval().float()
        _BUILT[name] = Tiny(model, inputs, run(model, inputs), CASES[name][0], frozenset(modules), expected)
    model = _BUILT[name].model
    assert type(model).__name__ == name
    assert not hasattr(model, "attn_processors")  # reached through each module's get_processor / set_processor
    return _BUILT[name]


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The model's output for `inputs`, without gradients."""
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    return out


def config(density: float) -> unbottle.SparseAttentionConfig:
    """A config whose every step is sparse (no dense warm-up), without the reshape correction."""
    return unbottle.SparseAttentionConfig(density=density, block_size=4, full_steps=0, reshape=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_density_one_is_stock_and_disable_restores_the_processors(name):
    check_density_one_is_stock(build(name), run, config(1.0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_block_kept_runs_the_sparse_path_and_matches_stock(name):
    check_every_block_kept_is_stock(build(name), run, config(0.9999))


@pytest.mark.parametrize("name", sorted(CASES))
def test_low_density_changes_the_output(name):
    check_low_density_changes_the_output(build(name), run, config(0.3))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_layout_explains_every_sparse_call(name, monkeypatch):
    check_the_layout_explains_every_call(build(name), run, config(0.5), monkeypatch)


def test_the_clock_reads_timesteps_not_named_timestep():
    """Z-Image's `t` (1 − σ, rising) reads as σ; HiDream's `timesteps` as given; the default still reads `timestep`."""
    z_image = family_named("ZImage").attention
    hidream = family_named("HiDreamImage").attention
    assert z_image.read_call(None, {"t": torch.tensor([0.25, 0.25])}) == (0.75, None)  # no image: layout unknown
    assert z_image.read_call(None, {"timestep": torch.tensor([0.25])})[0] is None
    assert hidream.read_call(None, {"timesteps": torch.tensor([700, 700])}) == (700.0, None)
    assert hidream.read_call(None, {"timestep": torch.tensor([700])})[0] is None
    assert family_named("Flux").attention.read_call(None, {"timestep": 0.4}) == (0.4, None)


def test_a_rising_timestep_steps_the_clock_instead_of_restarting_it():
    """Z-Image's pipeline passes t = 0, 0.5, 0.9 then starts again at 0: three steps, then a new generation."""
    attention = family_named("ZImage").attention
    clock, news, steps = Clock(), [], []
    for t in (0.0, 0.5, 0.9, 0.0, 0.5):
        news.append(clock.advance(attention.read_call(None, {"t": torch.tensor([t])})[0], None))
        steps.append(clock.step)
    assert news == [True, False, False, True, False]
    assert steps == [0, 1, 2, 0, 1]
    assert clock.first_timestep == 1.0


def test_the_clock_argument_is_validated():
    def layout(model, bound):
        return TokenLayout()

    with pytest.raises(ValueError, match=r"SelfAttention.timestep_arg must name a forward argument .* got 't-1'"):
        SelfAttention("attn", layout, timestep_arg="t-1")
    with pytest.raises(ValueError, match=r"SelfAttention.timestep_rising must be True or False, got 1"):
        SelfAttention("attn", layout, timestep_rising=1)
