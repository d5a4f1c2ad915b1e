"""Sparse attention on tiny video transformers of the Wan-derived and ConsisID families: exact at density 1 and at a
density that keeps every block, changed below it, disable restoring the stock processors, and every sparse call
explained by the family's token layout."""

import diffusers
import pytest
import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from family_checks import (
    Tiny,
    check_density_one_is_stock,
    check_every_block_kept_is_stock,
    check_low_density_changes_the_output,
    check_the_layout_explains_every_call,
)

import unbottle
from unbottle.families import family_for_model

BLOCK = 8
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=BLOCK, full_steps=0)
EVERY_BLOCK = unbottle.SparseAttentionConfig(density=0.9999, block_size=BLOCK, reshape=False, full_steps=0)
SPARSE = unbottle.SparseAttentionConfig(density=0.3, block_size=BLOCK, reshape=False, full_steps=0)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


def wan_like(cls, **config):
    """A 2-layer, 2-head Wan-style transformer and (B=1, C=4, F=2, 8×8) latents: a (2, 4, 4) token grid."""
    torch.manual_seed(0)
    model = cls(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=16, num_layers=2, rope_max_seq_len=32, **config)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": randn(gen, 1, 4, 2, 8, 8), "timestep": torch.tensor([500]),
              "encoder_hidden_states": randn(gen, 1, 6, 16)}  # fmt: skip
    return model, inputs


def wan_vace():
    model, inputs = wan_like(diffusers.WanVACETransformer3DModel, vace_layers=[0, 1], vace_in_channels=4)
    inputs["control_hidden_states"] = randn(torch.Generator().manual_seed(2), 1, 4, 2, 8, 8)
    return model, inputs


def skyreels_v2():
    return wan_like(diffusers.SkyReelsV2Transformer3DModel)


def skyreels_v2_causal():
    """Diffusion forcing: blocks of 2 frames attend causally (a boolean (1, 1, N, N) mask), 4 frames of 4×4."""
    model, inputs = wan_like(diffusers.SkyReelsV2Transformer3DModel, num_frame_per_block=2)
    gen = torch.Generator().manual_seed(1)
    inputs.update(hidden_states=randn(gen, 1, 4, 4, 8, 8), timestep=torch.tensor([[500, 500, 300, 300]]),
                  enable_diffusion_forcing=True)  # fmt: skip
    return model, inputs


def chronoedit():
    return wan_like(diffusers.ChronoEditTransformer3DModel)


def wan_animate():
    """Reference + 2 pose frames of 8×8 latents; 5 face frames encode to 3 motion frames (one per video frame)."""
    torch.manual_seed(0)
    model = diffusers.WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=12, latent_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=16, num_layers=2, image_dim=16, rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": randn(gen, 1, 12, 3, 8, 8), "timestep": torch.tensor([500]),
        "encoder_hidden_states": randn(gen, 1, 6, 16), "encoder_hidden_states_image": randn(gen, 1, 4, 16),
        "pose_hidden_states": randn(gen, 1, 4, 2, 8, 8), "face_pixel_values": randn(gen, 1, 3, 5, 16, 16),
    }  # fmt: skip
    return model, inputs


def consisid():
    """Latents (B=1, F=2, C=4, 8×8) with patch 2 and 6 text tokens: 6 + 2·4·4 = 38 tokens, text first; RoPE on the
    video tokens as the pipeline makes it."""
    torch.manual_seed(0)
    model = diffusers.ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        max_text_seq_length=6, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=2, use_real=True)
    inputs = {"hidden_states": randn(gen, 1, 2, 4, 8, 8), "encoder_hidden_states": randn(gen, 1, 6, 16),
              "timestep": torch.tensor([500]), "image_rotary_emb": rope}  # fmt: skip
    return model, inputs


# name → (builder, family, sparse modules, resolved layout of every self-attention call: (grid, text_len, text_first))
CASES = {
    "wan_vace": (wan_vace, "Wan-VACE", ("blocks.0.attn1", "blocks.1.attn1", "vace_blocks.0.attn1",
                                        "vace_blocks.1.attn1"), ((2, 4, 4), 0, True)),
    "skyreels_v2": (skyreels_v2, "SkyReels-V2", ("blocks.0.attn1", "blocks.1.attn1"), ((2, 4, 4), 0, True)),
    "skyreels_v2_causal": (skyreels_v2_causal, "SkyReels-V2", ("blocks.0.attn1", "blocks.1.attn1"),
                           ((4, 4, 4), 0, True)),
    "chronoedit": (chronoedit, "ChronoEdit", ("blocks.0.attn1", "blocks.1.attn1"), ((2, 4, 4), 0, True)),
    "wan_animate": (wan_animate, "Wan-Animate", ("blocks.0.attn1", "blocks.1.attn1"), ((3, 4, 4), 0, True)),
    "consisid": (consisid, "ConsisID", ("transformer_blocks.0.attn1", "transformer_blocks.1.attn1"),
                 ((2, 4, 4), 6, True)),
}  # fmt: skip
NAMES = sorted(CASES)
MASKED = {"skyreels_v2_causal"}  # its self-attention calls carry a mask
_BUILT: dict[str, Tiny] = {}


def build(name: str) -> Tiny:
    """A case's model (eval mode, fp32, stock processors), inputs, stock output, family, sparse modules and layout."""
    if name not in _BUILT:
        builder, family, modules, layout = CASES[name]
        model, inputs = builder()
        model = model.eval().float()
        _BUILT[name] = Tiny(model, inputs, forward(model, inputs), family, frozenset(modules), layout)
    return _BUILT[name]


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


@pytest.fixture(scope="module", autouse=True)
def _release():
    yield
    _BUILT.clear()


@pytest.mark.parametrize("name", NAMES)
def test_family_lookup_and_its_sparse_modules(name):
    model = build(name).model
    family = family_for_model(model, "sparse")
    assert family.name == CASES[name][1]
    selected = {n for n, m in model.named_modules() if hasattr(m, "processor") and family.attention.selects(n)
                and not getattr(m, "is_cross_attention", False)}  # fmt: skip
    assert selected == set(CASES[name][2])


@pytest.mark.parametrize("name", NAMES)
def test_density_one_matches_stock_and_disable_restores_the_processors(name):
    check_density_one_is_stock(build(name), forward, DENSE)


@pytest.mark.parametrize("name", NAMES)
def test_keeping_every_block_runs_the_sparse_path_and_matches_stock(name):
    check_every_block_kept_is_stock(build(name), forward, EVERY_BLOCK)


@pytest.mark.parametrize("name", NAMES)
def test_low_density_changes_the_output(name):
    check_low_density_changes_the_output(build(name), forward, SPARSE)


@pytest.mark.parametrize("name", NAMES)
def test_the_layout_explains_every_sparse_call(name, monkeypatch):
    check_the_layout_explains_every_call(build(name), forward, EVERY_BLOCK, monkeypatch, masked=name in MASKED)
