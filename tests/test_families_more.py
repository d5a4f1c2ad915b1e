"""Sparse attention on HunyuanVideo 1.5, HunyuanImage, LTX-2, Kandinsky 5 and LongCat-Image: tiny models from configs.

Per class: enabled at density 1.0 the output is stock, only the family's self-attention modules are wrapped, and
disabling restores the very processors; a density that keeps every block runs the block-sparse path and still matches
stock (padding masks included); a low density changes the output; and the family's token layout explains every sparse
call with the grid and conditioning split worked out here by hand from the fixture's sizes.
"""

from __future__ import annotations

from types import SimpleNamespace

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
from unbottle.families import TokenLayout, family_for_model

B = 1


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def hunyuan_video15():
    """2×4×4 video tokens, then 3 image + 4 ByT5 + 6 text (2 of them padding) conditioning tokens."""
    model = diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
    )  # fmt: skip
    inputs = {
        "hidden_states": _randn(B, 4, 2, 4, 4), "timestep": torch.full((B,), 500.0),
        "encoder_hidden_states": _randn(B, 6, 16), "encoder_attention_mask": torch.tensor([[1.0, 1, 1, 1, 0, 0]]),
        "encoder_hidden_states_2": _randn(B, 4, 8), "encoder_attention_mask_2": torch.ones(B, 4),
        "image_embeds": _randn(B, 3, 12),
    }  # fmt: skip
    modules = {"transformer_blocks.0.attn", "transformer_blocks.1.attn"}  # not the text refiner's
    return model, inputs, modules, ((2, 4, 4), 3 + 4 + 6, False)


def hunyuan_image():
    """6×6 image tokens, then 4 ByT5 + 6 text (2 of them padding) tokens; double- and single-stream blocks."""
    model = diffusers.HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16, text_embed_2_dim=8,
        rope_axes_dim=(4, 4),
    )  # fmt: skip
    inputs = {
        "hidden_states": _randn(B, 4, 6, 6), "timestep": torch.full((B,), 500.0),
        "encoder_hidden_states": _randn(B, 6, 16), "encoder_attention_mask": torch.tensor([[1.0, 1, 1, 1, 0, 0]]),
        "encoder_hidden_states_2": _randn(B, 4, 8), "encoder_attention_mask_2": torch.ones(B, 4),
    }  # fmt: skip
    modules = {f"{kind}transformer_blocks.{i}.attn" for kind in ("", "single_") for i in (0, 1)}
    return model, inputs, modules, ((1, 6, 6), 4 + 6, False)


def ltx2():
    """2×4×4 packed video tokens; 9 audio tokens whose self-attention stays dense."""
    model = diffusers.LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, caption_channels=16,
        rope_double_precision=False,
    )  # fmt: skip
    inputs = {
        "hidden_states": _randn(B, 2 * 4 * 4, 4), "audio_hidden_states": _randn(B, 9, 4),
        "encoder_hidden_states": _randn(B, 5, 16), "audio_encoder_hidden_states": _randn(B, 5, 16),
        "timestep": torch.full((B,), 500.0), "encoder_attention_mask": torch.ones(B, 5, dtype=torch.bool),
        "num_frames": 2, "height": 4, "width": 4, "audio_num_frames": 9, "fps": 25.0,
    }  # fmt: skip
    modules = {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}
    return model, inputs, modules, ((2, 4, 4), 0, True)


def kandinsky5():
    """(B, F, H, W, C) = 2×8×8 latents in 1×2×2 patches: 2×4×4 visual tokens; text reaches them by cross-attention."""
    model = diffusers.Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=2, num_visual_blocks=2, axes_dims=(2, 2, 4),
    )  # fmt: skip
    for module in model.modules():  # modulations start at zero (every gate shut): open them
        if type(module).__name__ == "Kandinsky5Modulation":
            torch.nn.init.normal_(module.out_layer.weight, std=0.2)
            torch.nn.init.normal_(module.out_layer.bias, std=0.2)
    inputs = {
        "hidden_states": _randn(B, 2, 8, 8, 4), "encoder_hidden_states": _randn(B, 5, 16),
        "timestep": torch.full((B,), 500.0), "pooled_projections": _randn(B, 8),
        "visual_rope_pos": (torch.arange(2), torch.arange(4), torch.arange(4)), "text_rope_pos": torch.arange(5),
    }  # fmt: skip
    modules = {"visual_transformer_blocks.0.self_attention", "visual_transformer_blocks.1.self_attention"}
    return model, inputs, modules, ((2, 4, 4), 0, True)


def longcat_image():
    """5 text tokens, then 4×6 packed image tokens whose position ids start past the text (rows and columns + 5)."""
    model = diffusers.LongCatImageTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[2, 2, 4],
    )  # fmt: skip
    txt_ids = torch.zeros(5, 3)
    txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(5.0)
    img_ids = torch.zeros(4 * 6, 3)
    img_ids[:, 1] = torch.arange(4.0).repeat_interleave(6) + 5
    img_ids[:, 2] = torch.arange(6.0).repeat(4) + 5
    inputs = {
        "hidden_states": _randn(B, 4 * 6, 4), "encoder_hidden_states": _randn(B, 5, 16),
        "timestep": torch.full((B,), 0.5), "img_ids": img_ids, "txt_ids": txt_ids,
    }  # fmt: skip
    modules = {f"{kind}transformer_blocks.{i}.attn" for kind in ("", "single_") for i in (0, 1)}
    return model, inputs, modules, ((1, 4, 6), 5, True)


CASES = {
    "HunyuanVideo15Transformer3DModel": ("HunyuanVideo-1.5", hunyuan_video15),
    "HunyuanImageTransformer2DModel": ("HunyuanImage", hunyuan_image),
    "LTX2VideoTransformer3DModel": ("LTX-2", ltx2),
    "Kandinsky5Transformer3DModel": ("Kandinsky5", kandinsky5),
    "LongCatImageTransformer2DModel": ("LongCat-Image", longcat_image),
}
_BUILT: dict[str, Tiny] = {}


def build(name: str) -> Tiny:
    """The tiny seeded fp32 model of class `name`, its inputs, stock output, sparse modules and layout, built once."""
    if name not in _BUILT:
        torch.manual_seed(0)
        model, inputs, modules, expected = CASES[name][1]()
        model = model.eval().float()
        _BUILT[name] = Tiny(model, inputs, run(model, inputs), CASES[name][0], frozenset(modules), expected)
    assert type(_BUILT[name].model).__name__ == name
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


def test_layouts_of_other_calls():
    """HunyuanImage on video, LTX-2 without its latent sizes, Kandinsky 5's tiled order, LongCat edit's two images."""
    layout = {name: family_for_model(build(name)[0], "sparse").attention.layout for name in CASES}
    text = torch.zeros(B, 6, 16)
    video = SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2)), context_embedder_2=None)
    bound = {"hidden_states": torch.zeros(B, 4, 3, 8, 6), "encoder_hidden_states": text,
             "encoder_hidden_states_2": torch.zeros(B, 4, 8)}  # fmt: skip
    got = layout["HunyuanImageTransformer2DModel"](video, bound)
    assert got == TokenLayout((3, 4, 3), 6, text_first=False)  # no ByT5 projection: its tokens never join

    model, inputs, *_ = build("LTX2VideoTransformer3DModel")
    assert layout["LTX2VideoTransformer3DModel"](model, {**inputs, "num_frames": None}).grid is None
    assert layout["LTX2VideoTransformer3DModel"](model, {**inputs, "height": 8}).grid is None  # 2·8·4 ≠ 32 tokens

    model, inputs, *_ = build("Kandinsky5Transformer3DModel")
    tiled = {**inputs, "sparse_params": {"to_fractal": True}}
    assert layout["Kandinsky5Transformer3DModel"](model, tiled).grid is None

    model, inputs, *_ = build("LongCatImageTransformer2DModel")
    edit = {**inputs, "hidden_states": torch.zeros(B, 2 * 24, 4), "img_ids": torch.cat([inputs["img_ids"]] * 2)}
    assert layout["LongCatImageTransformer2DModel"](model, edit) == TokenLayout(None, 5, text_first=True)
