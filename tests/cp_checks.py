"""What tests/test_context_parallel.py runs inside each gloo process (see cp_harness.py): tiny Flux and Wan
transformers, the same weights on every rank, called step after step with falling timesteps through the step clock,
once in the process alone and once under Ulysses-2; each check returns numbers the test compares."""

from __future__ import annotations

import os
from unittest import mock

import torch
from diffusers import FluxTransformer2DModel, SkyReelsV2Transformer3DModel, WanTransformer3DModel
from diffusers.models._modeling_parallel import ContextParallelConfig

import unbottle
from unbottle.attention_processors.context_parallel import SequenceShards
from unbottle.attention_processors.enable import sparse_handle
from unbottle.attention_processors.processor import SparseAttnProcessor
from unbottle.families import parallel_plan

TIMESTEPS = (1.0, 0.9, 0.75, 0.6, 0.45, 0.3)  # full step, then sparse steps with a refresh after every 2
BLOCK = 8


def config(pattern: str) -> unbottle.SparseAttentionConfig:
    return unbottle.SparseAttentionConfig(density=0.34, block_size=BLOCK, pattern=pattern, full_steps=1,
                                          refresh_every=2)  # fmt: skip


def flux(heads: int = 4) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()  # fmt: skip


def flux_inputs() -> dict:
    """8 text + 8×8 image tokens: 9 blocks of 8, text and image each sharded in two."""
    g = torch.Generator().manual_seed(1)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    img_ids = torch.stack([torch.zeros(64), rows.flatten(), cols.flatten()], -1).float()
    text = torch.randn(1, 8, 32, generator=g)
    return {
        "hidden_states": torch.randn(1, 64, 4, generator=g), "encoder_hidden_states": text,
        "pooled_projections": torch.randn(1, 32, generator=g), "img_ids": img_ids, "txt_ids": torch.zeros(8, 3),
    }  # fmt: skip


def wan(cls: type = WanTransformer3DModel) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()  # fmt: skip


def skyreels() -> SkyReelsV2Transformer3DModel:
    """Wan's shape in SkyReels-V2's class, which diffusers gives no context-parallel plan (its family record does)."""
    return wan(SkyReelsV2Transformer3DModel)


def wan_inputs() -> dict:
    """2 frames × 8×8 latents → 2×4×4 = 32 tokens: 4 blocks of 8."""
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(1, 16, 2, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 6, 32, generator=g)}  # fmt: skip


MODELS = {  # builder, inputs, timestep scale of each forward
    "flux": (flux, flux_inputs, 1.0), "wan": (wan, wan_inputs, 1000.0), "skyreels": (skyreels, wan_inputs, 1000.0),
}  # fmt: skip


def denoise(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The model's outputs over TIMESTEPS, stacked (steps, ...)."""
    inputs, scale = MODELS[name][1](), MODELS[name][2]
    outs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            outs.append(model(**inputs, timestep=torch.tensor([t * scale]), return_dict=False)[0])
    return torch.stack(outs)


def parallel(model: torch.nn.Module, **cp) -> torch.nn.Module:
    model.enable_parallelism(config=ContextParallelConfig(**cp), cp_plan=parallel_plan(model))
    return model


def equalities(rank: int, folder: str, name: str) -> dict:
    """Max |Ulysses-2 − one process| of the stock model and of sparse attention with each pattern, and how many
    patterns each rank cached (heads per pattern)."""
    build = MODELS[name][0]
    result = {"stock": (denoise(parallel(build(), ulysses_degree=2), name) - denoise(build(), name)).abs().max()}
    for pattern in ("cached", "dynamic", "window"):
        alone, split = build(), parallel(build(), ulysses_degree=2)
        handles = [unbottle.enable_sparse_attention(m, config(pattern)) for m in (alone, split)]
        reference, out = denoise(alone, name), denoise(split, name)
        dense = denoise(build(), name)
        result[pattern] = (out - reference).abs().max()
        result[f"{pattern} vs dense"] = (reference - dense).abs().max()  # sparse steps really ran sparse
        result[f"{pattern} heads"] = sorted({t.shape[1] for t, _ in handles[1].store.patterns.values()})
    if name != "flux":
        return result
    with mock.patch.object(SequenceShards, "order", lambda *args: None):  # attend in the order the ranks gather
        alone, split = build(), parallel(build(), ulysses_degree=2)
        for m in (alone, split):
            unbottle.enable_sparse_attention(m, config("cached"))
        result["cached, gathered order"] = (denoise(split, name) - denoise(alone, name)).abs().max()
    return result


def videos(rank: int, folder: str) -> dict:
    """Wan (diffusers' plan) and SkyReels-V2 (the family record's plan) in one spawn."""
    return {"wan": equalities(rank, folder, "wan"), "skyreels": equalities(rank, folder, "skyreels")}


def flux_all(rank: int, folder: str) -> dict:
    """Every Flux check in one spawn: equalities, pattern files, refusals."""
    return {**equalities(rank, folder, "flux"), **pattern_files(rank, folder), **refusals(rank, folder)}


def pattern_files(rank: int, folder: str) -> dict:
    """Flux "cached" patterns: saved alone → loaded under Ulysses-2, saved under Ulysses-2 → loaded alone."""
    single, gathered = os.path.join(folder, "single.safetensors"), os.path.join(folder, "gathered.safetensors")
    alone = flux()
    unbottle.enable_sparse_attention(alone, config("cached"))
    reference = denoise(alone, "flux")
    if rank == 0:
        unbottle.save_head_patterns(alone, single)
    torch.distributed.barrier()
    result = {}

    split = parallel(flux(), ulysses_degree=2)  # the single process's file on two ranks: each takes its heads
    handle = unbottle.enable_sparse_attention(split, config("cached"))
    result["loaded on 2"] = unbottle.load_head_patterns(split, single)
    own = slice(2 * rank, 2 * rank + 2)
    result["own heads"] = all(torch.equal(handle.store.patterns[k][1], c[:, own])
                              for k, (_, c) in sparse_handle(alone).store.patterns.items())  # fmt: skip
    result["2 from file vs alone"] = (denoise(split, "flux") - reference).abs().max()
    result["computed on 2 from file"] = dict(handle.store.computed)

    made = parallel(flux(), ulysses_degree=2)  # patterns made on two ranks, saved as one file
    unbottle.enable_sparse_attention(made, config("cached"))
    denoise(made, "flux")
    unbottle.save_head_patterns(made, gathered)  # every rank calls it; rank 0 writes
    from safetensors import safe_open

    with safe_open(single, "pt") as a, safe_open(gathered, "pt") as b:
        result["same tensors"] = sorted(a.keys()) == sorted(b.keys()) and all(
            torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()
        )
        result["same metadata"] = a.metadata() == b.metadata()
    fresh = flux()
    fresh_handle = unbottle.enable_sparse_attention(fresh, config("cached"))
    result["loaded on 1"] = unbottle.load_head_patterns(fresh, gathered)
    result["1 from 2's file vs alone"] = (denoise(fresh, "flux") - reference).abs().max()
    result["computed on 1 from file"] = dict(fresh_handle.store.computed)
    return result


def _error(call) -> str:
    try:
        call()
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def refusals(rank: int, folder: str) -> dict:
    """The errors for ring attention (enabled before or after sparse attention), heads Ulysses cannot split, and
    Ulysses enabled after sparse attention; whether a refused enable left the model untouched."""
    result = {}
    ring = parallel(flux(), ring_degree=2)
    processors = dict(ring.attn_processors)
    result["ring before"] = _error(lambda: unbottle.enable_sparse_attention(ring, config("cached")))
    result["ring before untouched"] = (sparse_handle(ring) is None and dict(ring.attn_processors) == processors)

    late = flux()
    unbottle.enable_sparse_attention(late, config("cached"))
    parallel(late, ring_degree=2)
    result["ring after"] = _error(lambda: denoise(late, "flux"))

    late = flux()
    unbottle.enable_sparse_attention(late, config("cached"))
    parallel(late, ulysses_degree=2)
    result["ulysses after"] = _error(lambda: denoise(late, "flux"))
    unbottle.disable_sparse_attention(late)  # the remedy the error names
    unbottle.enable_sparse_attention(late, config("cached"))
    alone = flux()
    unbottle.enable_sparse_attention(alone, config("cached"))
    result["ulysses after, enabled again"] = (denoise(late, "flux") - denoise(alone, "flux")).abs().max()

    drop_in = parallel(flux(), ulysses_degree=2)
    drop_in.set_attn_processor(SparseAttnProcessor(config("cached")))
    result["drop-in"] = _error(lambda: denoise(drop_in, "flux"))

    odd = parallel(flux(heads=3), ulysses_degree=2)
    result["heads"] = _error(lambda: unbottle.enable_sparse_attention(odd, config("cached")))
    return result
