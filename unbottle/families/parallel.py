"""Context-parallel plans (diffusers' `_cp_plan` format) that family records carry for models that have none, and
the plan a model runs under: `model.enable_parallelism(config=..., cp_plan=parallel_plan(model))`."""

from __future__ import annotations

import torch

from .registry import family_for_model


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


def parallel_plan(model: torch.nn.Module) -> dict | None:
    """The context-parallel plan of a denoiser: its own `_cp_plan`, else its family record's, else None."""
    own = getattr(model, "_cp_plan", None)
    if own is not None:
        return own
    family = family_for_model(model, None, required=False)
    plan = family.parallel_plan if family is not None else None
    return plan() if callable(plan) else plan
