"""Sparse attention on more image families: tiny models from configs, stock equality, the sparse path, and layouts.

Per class: enabled at density 1.0 the output is stock and disabling restores the very processors; a density that
keeps every block runs the block-sparse path and still matches stock; a low density changes the output; and the
family's token layout explains every sparse self-attention call (joint text+image, or image only).
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
from unbottle.families import family_named
from unbottle.families.layout import TokenLayout

B, L = 1, 8  # batch, text tokens


def _ids(h: int, w: int, axes: int = 3) -> torch.Tensor:
    """(h·w, axes) position ids: row in column 1, column in column 2, zeros elsewhere (FLUX's img_ids)."""
    ids = torch.zeros(h * w, axes)
    ids[:, 1] = torch.arange(h).repeat_interleave(w)
    ids[:, 2] = torch.arange(w).repeat(h)
    return ids


def qwen_image():
    model = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    inputs = {
        "hidden_states": torch.randn(B, 8 * 8, 16), "encoder_hidden_states": torch.randn(B, L, 16),
        "encoder_hidden_states_mask": (torch.arange(L) < L - 2).long().repeat(B, 1),  # two padding tokens
        "timestep": torch.full((B,), 0.5), "img_shapes": [[(1, 8, 8)]] * B,
    }  # fmt: skip
    return model, inputs, ((1, 8, 8), L, True)


def flux2():
    model = diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    txt_ids = torch.zeros(L, 4)
    txt_ids[:, 3] = torch.arange(L)
    inputs = {
        "hidden_states": torch.randn(B, 6 * 10, 4), "encoder_hidden_states": torch.randn(B, L, 16),
        "timestep": torch.full((B,), 0.5), "img_ids": _ids(6, 10, 4), "txt_ids": txt_ids,
    }  # fmt: skip
    return model, inputs, ((1, 6, 10), L, True)


def chroma():
    model = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1,
    )  # fmt: skip
    inputs = {
        "hidden_states": torch.randn(B, 8 * 6, 4), "encoder_hidden_states": torch.randn(B, L, 16),
        "timestep": torch.full((B,), 0.5), "img_ids": _ids(8, 6), "txt_ids": torch.zeros(L, 3),
    }  # fmt: skip
    return model, inputs, ((1, 8, 6), L, True)


def auraflow():
    model = diffusers.AuraFlowTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, out_channels=4,
        pos_embed_max_size=64,
    )  # fmt: skip
    inputs = {"hidden_states": torch.randn(B, 4, 16, 12), "encoder_hidden_states": torch.randn(B, L, 16),
              "timestep": torch.full((B,), 500.0)}  # fmt: skip
    return model, inputs, ((1, 8, 6), 8 + L, True)  # 8 register tokens before the text


def _cogview_inputs(h: int, w: int) -> dict:
    size = torch.tensor([[8 * h, 8 * w]] * B, dtype=torch.float32)
    return {"hidden_states": torch.randn(B, 4, h, w), "encoder_hidden_states": torch.randn(B, L, 16),
            "timestep": torch.full((B,), 500.0), "original_size": size, "target_size": size,
            "crop_coords": torch.zeros(B, 2)}  # fmt: skip


def cogview4():
    model = diffusers.CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=8, condition_dim=4, rope_axes_dim=(4, 4),
    )  # fmt: skip
    return model, _cogview_inputs(16, 12), ((1, 8, 6), L, True)


def cogview3_plus():
    model = diffusers.CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2, out_channels=4,
        text_embed_dim=16, time_embed_dim=8, condition_dim=4, pos_embed_max_size=16, sample_size=16,
    )  # fmt: skip
    return model, _cogview_inputs(16, 12), ((1, 8, 6), L, True)


def lumina2():
    model = diffusers.Lumina2Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_refiner_layers=2,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 2, 2), axes_lens=(64, 32, 32),
        cap_feat_dim=8,
    )  # fmt: skip
    mask = torch.ones(B, L + 2, dtype=torch.bool)
    mask[:, L:] = False  # two padding tokens: the caption's real length is L
    inputs = {"hidden_states": torch.randn(B, 4, 16, 12), "timestep": torch.full((B,), 0.5),
              "encoder_hidden_states": torch.randn(B, L + 2, 8), "encoder_attention_mask": mask}  # fmt: skip
    return model, inputs, ((1, 8, 6), L, True)


def z_image():
    model = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16, n_layers=2, n_refiner_layers=2, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[2, 2, 4], axes_lens=[64, 32, 32],
    )  # fmt: skip
    inputs = {"x": [torch.randn(4, 1, 16, 16) for _ in range(B)], "t": torch.full((B,), 0.5),
              "cap_feats": [torch.randn(L, 16) for _ in range(B)]}  # fmt: skip
    return model, inputs, ((1, 8, 8), 32, False)  # the caption padded to 32 tokens, after the image


def hidream():
    model = diffusers.HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=2, num_activated_experts=1,
        axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1, 2, 3), force_inference_output=True,
    )  # fmt: skip
    inputs = {"hidden_states": torch.randn(B, 4, 16, 16), "timesteps": torch.full((B,), 500.0),
              "encoder_hidden_states_t5": torch.randn(B, L, 8),
              "encoder_hidden_states_llama3": torch.randn(4, B, 4, 4),  # (layers, B, Llama tokens, C)
              "pooled_embeds": torch.randn(B, 8)}  # fmt: skip
    return model, inputs, ((1, 8, 8), L + 2 * 4, False)  # T5, the last Llama layer, the block's Llama layer


def bria():
    model = diffusers.BriaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=[0, 4, 4],
    )  # fmt: skip
    inputs = {
        "hidden_states": torch.randn(B, 8 * 6, 4), "encoder_hidden_states": torch.randn(B, L, 16),
        "timestep": torch.full((B,), 500.0), "img_ids": _ids(8, 6), "txt_ids": torch.zeros(L, 3),
    }  # fmt: skip
    return model, inputs, ((1, 8, 6), L, True)


MODELS = {
    "QwenImage": qwen_image, "Flux2": flux2, "Chroma": chroma, "AuraFlow": auraflow, "CogView4": cogview4,
    "Lumina2": lumina2, "ZImage": z_image, "HiDreamImage": hidream, "CogView3Plus": cogview3_plus, "Bria": bria,
}  # fmt: skip
_BUILT: dict[str, Tiny] = {}


def build(name: str) -> Tiny:
    """A tiny seeded fp32 model of the family `name`, its inputs, stock output and joint layout, built once."""
    if name not in _BUILT:
        torch.manual_seed(0)
        model, inputs, expected = MODELS[name]()
        model = model.eval().float()
        _BUILT[name] = Tiny(model, inputs, run(model, inputs), name, None, expected)
    return _BUILT[name]


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    return torch.stack(out) if isinstance(out, (list, tuple)) else out


def sparse(density: float, **kw) -> unbottle.SparseAttentionConfig:
    return unbottle.SparseAttentionConfig(density=density, block_size=8, full_steps=0, reshape=False, **kw)


@pytest.mark.parametrize("name", list(MODELS))
def test_density_one_is_stock_and_disable_restores_the_processors(name):
    check_density_one_is_stock(build(name), run, sparse(1.0))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_block_kept_runs_the_sparse_path_and_matches_stock(name):
    check_every_block_kept_is_stock(build(name), run, sparse(0.9999))


@pytest.mark.parametrize("name", list(MODELS))
def test_low_density_changes_the_output(name):
    check_low_density_changes_the_output(build(name), run, sparse(0.3))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_layout_explains_every_sparse_call(name, monkeypatch):
    check_the_layout_explains_every_call(build(name), run, sparse(0.5), monkeypatch, image_only_calls=True)


def test_layouts_a_grid_cannot_explain_fall_back_to_one_dimension():
    """Reference images, padding inside the image tokens, omni inputs and non-square HiDream latents: 1-D."""
    qwen, z_image, hidream = (family_named(name).attention.layout for name in ("QwenImage", "ZImage", "HiDreamImage"))
    edit = {"hidden_states": torch.zeros(1, 128, 16), "encoder_hidden_states": torch.zeros(1, L, 16),
            "img_shapes": [[(1, 8, 8), (1, 8, 8)]]}  # the latent then one reference image  # fmt: skip
    assert qwen(None, edit) == TokenLayout(None, L)
    plain = {"hidden_states": torch.zeros(1, 64, 16), "encoder_hidden_states": torch.zeros(1, L, 16),
             "img_shapes": [[(1, 8, 8)]]}  # fmt: skip
    assert qwen(None, plain) == TokenLayout((1, 8, 8), L)
    captions = [torch.zeros(L, 16)]
    assert z_image(None, {"x": [torch.zeros(4, 1, 10, 10)], "cap_feats": captions}) == TokenLayout()  # 25 tokens
    assert z_image(None, {"x": [[torch.zeros(4, 1, 16, 16)]], "cap_feats": [captions]}) == TokenLayout()  # omni
    assert z_image(None, {"x": [torch.zeros(4, 1, 16, 16)], "cap_feats": [torch.zeros(40, 16)]}) == TokenLayout(
        (1, 8, 8), 64, text_first=False)  # 40 caption tokens padded to 64  # fmt: skip
    wide = {"hidden_states": torch.zeros(1, 4, 16, 32), "encoder_hidden_states_t5": torch.zeros(1, L, 8),
            "encoder_hidden_states_llama3": torch.zeros(4, 1, 4, 4)}  # fmt: skip
    assert hidream(None, wide) == TokenLayout()
