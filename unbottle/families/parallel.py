"""Context-parallel plans (diffusers' `_cp_plan` format) that family records carry for models that have none, and
the plan a model runs under: `model.enable_parallelism(config=..., cp_plan=parallel_plan(model))`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .registry import family_for_model

TEXT_MASK_REFUSAL = (
    "its attention mask over the [video or image, text] tokens is built inside forward from the whole text mask after "
    "the text refiner, which needs the whole text, so no plan gives each rank the mask of its own text shard"
)
SQUARE_MASK_REFUSAL = (
    "its attention builds a (query × key) mask, while diffusers' Ulysses attention gathers key masks (…, keys) only"
)


_SDPA_ATTENTION: list[Callable[[torch.nn.Module], None]] = []  # readies SDPA-direct attention for a plan


def on_sdpa_plan(ready: Callable[[torch.nn.Module], None]) -> None:
    """Register `ready(model)`, which readies the self-attention of a denoiser whose processors call scaled
    dot-product attention directly for the plans below (the attention layer registers its Ulysses attention here)."""
    if ready not in _SDPA_ATTENTION:
        _SDPA_ATTENTION.append(ready)


def _ready_sdpa_attention(model: torch.nn.Module) -> None:
    if not _SDPA_ATTENTION:
        raise RuntimeError(
            f"{type(model).__name__}'s attention processors call scaled dot-product attention directly and need "
            "unbottle's Ulysses attention under context parallelism, which is not loaded; import unbottle first"
        )
    for ready in _SDPA_ATTENTION:
        ready(model)


def video_blocks_plan() -> dict:
    """Wan-shaped video DiTs: the tokens entering the first block and the RoPE tables (B, N, 1, D) sharded along the
    sequence, the output projection gathered (the text stays whole: cross-attention reads all of it)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    rope = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)
    return {
        "rope": {0: rope, 1: rope},
        "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def vace_blocks_plan() -> dict:
    """Wan-VACE: Wan's plan, and the first control block's video and control tokens (the control tokens padded to the
    video's length) sharded alike; the hints the control blocks return join the sharded video tokens."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    return {**video_blocks_plan(), "vace_blocks.0": {"hidden_states": tokens, "control_hidden_states": tokens}}


def joint_ids_plan() -> dict:
    """FLUX.1-shaped joint text-image DiTs without an attention mask: the text and the image tokens (B, N, C) each
    sharded along the sequence with their position ids (N, 3), the output projection gathered (diffusers' Flux plan;
    attention sees [text₀, image₀, text₁, image₁, …], each token with its own RoPE)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    ids = ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)
    return {
        "": {"hidden_states": tokens, "encoder_hidden_states": tokens, "img_ids": ids, "txt_ids": ids},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _sharded_blocks(prefix: str, count: int, first: dict, every: dict, outputs: int = 1) -> dict:
    """The `count` blocks of the ModuleList `prefix` on sharded tokens: the `first` inputs of block 0 and the `every`
    inputs of each block split, the last block's output (B, N, C) (each of its `outputs` such tensors) gathered."""
    from diffusers.models._modeling_parallel import ContextParallelOutput

    gather = ContextParallelOutput(gather_dim=1, expected_dims=3)
    gather = gather if outputs == 1 else [gather] * outputs
    if count == 1:  # one block: its split and gather hooks under two names
        return {f"{prefix}.*": {**every, **first}, f"{prefix}.0": gather}
    return {f"{prefix}.0": first, f"{prefix}.*": every, f"{prefix}.{count - 1}": gather}


def kandinsky5_plan(model: torch.nn.Module) -> dict | None:
    """Kandinsky 5: the visual tokens (B, N, C) entering the first visual block and every visual block's RoPE table
    (B, N, 1, D/2, 2, 2) sharded, the last visual block's output gathered (the text blocks run whole on every rank);
    None under NABLA attention, whose block mask is built from each rank's own tokens."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    if model.config.attention_type == "nabla":
        return None
    tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    rope = ContextParallelInput(split_dim=1, expected_dims=6, split_output=False)
    return _sharded_blocks("visual_transformer_blocks", len(model.visual_transformer_blocks),
                           {"visual_embed": tokens}, {"rope": rope})  # fmt: skip


def z_image_plan(model: torch.nn.Module) -> dict:
    """Z-Image: the image tokens through the noise refiner and the unified [image, text] sequence through the main
    layers, each sharded with its key mask (B, N), RoPE table (B, N, D/2) and noise mask (B, N), each stack's last
    output gathered (every stream is padded to a multiple of 32 tokens; the text refiner runs whole on every rank)."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    per_token = ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)
    every = {"attn_mask": per_token, "freqs_cis": tokens, "noise_mask": per_token}
    return {**_sharded_blocks("noise_refiner", len(model.noise_refiner), {"x": tokens}, every),
            **_sharded_blocks("layers", len(model.layers), {"x": tokens}, every)}  # fmt: skip


def sd3_plan(model: torch.nn.Module) -> dict:
    """SD3: the image tokens (B, N, C) leaving the patch embedding and the text (B, T, C) entering the model sharded
    along the sequence, the output projection gathered; each joint attention sees [image₀, text₀, image₁, text₁, …]
    (no mask, so the order does not matter). Readies unbottle's Ulysses attention on its self-attention."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    _ready_sdpa_attention(model)
    return {
        "": {"encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
        "pos_embed": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def pixart_plan(model: torch.nn.Module) -> dict:
    """PixArt: the image tokens (B, N, C) leaving the patch embedding sharded, the output projection gathered (the
    text stays whole: cross-attention reads all of it). Readies unbottle's Ulysses attention on its self-attention."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    _ready_sdpa_attention(model)
    return {
        "pos_embed": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def cogvideox_plan(model: torch.nn.Module) -> dict:
    """CogVideoX: the video and the text tokens (B, N, C) entering the first block and every block's RoPE tables
    (cos, sin) (N, D) sharded along the sequence, the last block's outputs gathered; each joint attention sees
    [text₀, video₀, text₁, video₁, …], RoPE applied per token before. Readies unbottle's Ulysses attention."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    _ready_sdpa_attention(model)
    tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    rope = ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)
    return _sharded_blocks("transformer_blocks", len(model.transformer_blocks),
                           {"hidden_states": tokens, "encoder_hidden_states": tokens},
                           {"image_rotary_emb": [rope, rope]}, outputs=2)  # fmt: skip


def parallel_plan(model: torch.nn.Module) -> dict | None:
    """The context-parallel plan of a denoiser: its own `_cp_plan`, else its family record's (a plan, or a function
    of no arguments or of the model returning one or None), else None. A family whose processors call scaled
    dot-product attention directly gets unbottle's Ulysses attention with its plan (inert until the model is under
    context parallelism)."""
    own = getattr(model, "_cp_plan", None)
    if own is not None:
        return own
    family = family_for_model(model, None, required=False)
    plan = family.parallel_plan if family is not None else None
    if not callable(plan):
        return plan
    return plan(model) if inspect.signature(plan).parameters else plan()


def no_plan_reason(model: torch.nn.Module) -> str:
    """Why a denoiser with no plan (`parallel_plan` None) has none, as a clause for an error message."""
    family = family_for_model(model, None, required=False)
    if family is not None and family.parallel_refusal is not None:
        return family.parallel_refusal
    processors = (getattr(m, "processor", None) for m in model.modules())
    outside = sorted({type(p).__name__ for p in processors if p is not None and not hasattr(p, "_parallel_config")})
    if outside:  # diffusers' dispatcher-based processors carry the parallel config; these compute attention alone
        return (f"its attention processor{'s' * (len(outside) > 1)} {', '.join(outside)} call"
                f"{'s' * (len(outside) == 1)} scaled dot-product attention directly, outside diffusers' "
                "context-parallel dispatcher, so under a plan each rank would attend to its own tokens only")
    return "diffusers gives it none and no family record does"
