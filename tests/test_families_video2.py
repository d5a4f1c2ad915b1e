"""Sparse attention on tiny Allegro, Latte, EasyAnimate and Cosmos transformers (no diffusers AttentionMixin: their
processors are reached through each module's get/set_processor): exact at density 1 and at a density that keeps
every block, changed below it, disable restoring the stock processors, and every sparse call explained by the
family's token layout."""

import diffusers
import pytest
import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro
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


def allegro():
    """Latents (B=1, C=4, F=2, 8×8), patch 2: a (2, 4, 4) grid; 6 caption tokens reach only the cross-attention.
    RoPE over the grid's (t, h, w) positions as the pipeline makes it."""
    torch.manual_seed(0)
    model = diffusers.AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        num_layers=2, cross_attention_dim=24, sample_height=8, sample_width=8, sample_frames=2, caption_channels=16,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    *freqs, t, h, w = get_3d_rotary_pos_embed_allegro(12, ((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=2)
    positions = torch.cartesian_prod(t.long(), h.long(), w.long()).T.reshape(3, 1, -1)  # (3, 1, F·H·W)
    inputs = {"hidden_states": randn(gen, 1, 4, 2, 8, 8), "encoder_hidden_states": randn(gen, 1, 6, 16),
              "timestep": torch.tensor([500]), "image_rotary_emb": (tuple(freqs), tuple(positions))}  # fmt: skip
    return model, inputs


def latte():
    """Latents (B=1, C=4, F=2, 16×16), patch 2: each frame's spatial attention sees an (8, 8) grid."""
    torch.manual_seed(0)
    model = diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=16, patch_size=2, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
        caption_channels=16, video_length=2,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": randn(gen, 1, 4, 2, 16, 16), "encoder_hidden_states": randn(gen, 1, 6, 16),
              "timestep": torch.tensor([500])}  # fmt: skip
    return model, inputs


def easyanimate():
    """Latents (B=1, C=4, F=2, 8×8), patch 2, 4 text + 3 T5 tokens: 7 + 2·4·4 = 39 tokens, text first."""
    torch.manual_seed(0)
    model = diffusers.EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=8,
        sample_height=8, num_layers=2, mmdit_layers=2, time_embed_dim=16, text_embed_dim=16, text_embed_dim_t5=16,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": randn(gen, 1, 4, 2, 8, 8), "timestep": torch.tensor([500]),
              "encoder_hidden_states": randn(gen, 1, 4, 16),
              "encoder_hidden_states_t5": randn(gen, 1, 3, 16)}  # fmt: skip
    return model, inputs


def cosmos():
    """Latents (B=1, C=4, F=2, 8×8) with a padding mask, patch (1, 2, 2): a (2, 4, 4) grid."""
    torch.manual_seed(0)
    model = diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": randn(gen, 1, 4, 2, 8, 8), "timestep": torch.tensor([500]),
              "encoder_hidden_states": randn(gen, 1, 6, 16), "padding_mask": torch.zeros(1, 1, 8, 8)}  # fmt: skip
    return model, inputs


BLOCKS = ("transformer_blocks.0.attn1", "transformer_blocks.1.attn1")
# name → (builder, family, sparse modules, resolved layout of every self-attention call: (grid, text_len, text_first))
CASES = {
    "allegro": (allegro, "Allegro", BLOCKS, ((2, 4, 4), 0, True)),
    "latte": (latte, "Latte", BLOCKS, ((1, 8, 8), 0, True)),
    "easyanimate": (easyanimate, "EasyAnimate", BLOCKS, ((2, 4, 4), 7, True)),
    "cosmos": (cosmos, "Cosmos", BLOCKS, ((2, 4, 4), 0, True)),
}
NAMES = sorted(CASES)
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
    assert not hasattr(model, "attn_processors")  # reached through the modules' own get/set_processor
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
    case = build(name)
    batch = case.inputs["hidden_states"].shape[2] if name == "latte" else 1  # Latte: one spatial sequence per frame
    check_the_layout_explains_every_call(case, forward, EVERY_BLOCK, monkeypatch, batch=batch)
