"""The realized density of "dynamic" sparse attention: patterns made every call are never stored, so the store counts
the kept tiles of the sparse steps' patterns (a refresh's pattern only feeds the reshape statistics) and the handle
reports them like the cached patterns' densities."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import unbottle  # noqa: E402
from unbottle.attention_processors.block_sparse import block_sparse_attention  # noqa: E402
from unbottle.attention_processors.engine import (  # noqa: E402
    AttentionCall,
    DiTPatterns,
    LayerState,
    PatternStore,
    block_sparse_kernels,
)
from unbottle.attention_processors.handle import layer_densities  # noqa: E402
from unbottle.families.layout import TokenLayout  # noqa: E402
from unbottle.testing import tiny_flux_pipeline  # noqa: E402

FLUX_CALL = dict(height=32, width=32, output_type="np", max_sequence_length=16)


def call_of(seed: int) -> AttentionCall:
    """20 tokens (4 text + a 4 × 4 grid), 2 heads: 5 blocks of 4."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g) for _ in range(3))
    return AttentionCall(q, k, v, scale=8**-0.5)


def test_sparse_steps_count_their_kept_tiles_and_refreshes_do_not():
    # block 0 is text: its row keeps all 5 blocks, every other row its text column and its diagonal (2 ≥ the 1
    # block that density 0.2 keeps); 5 + 4 · 2 = 13 of 25 tiles per head
    cfg = unbottle.SparseAttentionConfig(density=0.2, block_size=4, pattern="dynamic")
    store = PatternStore()
    patterns = DiTPatterns("layer", cfg, store, TokenLayout(grid=(1, 4, 4), text_len=4))
    assert layer_densities(store) == {}
    patterns.block_mask(call_of(0), LayerState(), torch.zeros(1, 2, 20))  # a refresh: its exact LSE is given
    assert store.dynamic == {}
    for seed in (1, 2, 3):  # three sparse steps
        mask = patterns.block_mask(call_of(seed), LayerState(), None)
        assert mask.full_kv_num_blocks.tolist() == [[[5, 2, 2, 2, 2]] * 2]
    kept, tiles = store.dynamic[("layer", 20, 4)]
    assert (int(kept), tiles) == (3 * 2 * 13, 3 * 2 * 25)
    assert layer_densities(store) == {"layer": 13 / 25}
    assert store.patterns == {} and store.computed == {}  # nothing cached, nothing counted as a computation


@pytest.mark.parametrize("reshape", [False, True])
def test_handle_reports_the_tiles_the_sparse_steps_ran(reshape):
    """The realized density equals the kept tiles of the block masks the kernel ran on the sparse steps, counted here
    from those masks (with reshape, the first step is a refresh, whose masks are left out)."""
    pipe = tiny_flux_pipeline()
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, pattern="dynamic", full_steps=1, reshape=reshape)
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    masks = []

    def recording(q, k, v, block_mask, scale=None, return_lse=False):
        masks.append(block_mask)
        return block_sparse_attention(q, k, v, block_mask, scale=scale, return_lse=return_lse)

    try:
        with block_sparse_kernels(fast=recording):
            pipe("a red circle", generator=torch.Generator().manual_seed(0), num_inference_steps=3, **FLUX_CALL)
    finally:
        unbottle.disable_sparse_attention(pipe)
    layers = 2  # the tiny Flux's two sparse layers, one call each per step
    sparse = masks[layers:] if reshape else masks  # step 0: dense (no reshape) or a refresh (its masks ran too)
    assert len(masks) == (3 if reshape else 2) * layers
    kept = sum(int(m.full_kv_num_blocks.sum()) for m in sparse)
    tiles = sum(m.full_kv_num_blocks.numel() * m.full_kv_indices.shape[-1] for m in sparse)
    assert set(handle.pattern_densities) == {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
    assert handle.realized_density == pytest.approx(kept / tiles, abs=1e-12)
    assert 0.3 < handle.realized_density < 1  # the text rows and columns are forced beyond the density


def test_no_sparse_step_no_density():
    pipe = tiny_flux_pipeline()
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, pattern="dynamic", full_steps=1)
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:  # one step: a refresh only (its pattern feeds the statistics; nothing ran sparse)
        pipe("a red circle", generator=torch.Generator().manual_seed(0), num_inference_steps=1, **FLUX_CALL)
        assert handle.realized_density is None and handle.pattern_densities == {}
    finally:
        unbottle.disable_sparse_attention(pipe)
