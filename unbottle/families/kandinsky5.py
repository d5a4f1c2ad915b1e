"""Kandinsky 5 (Kandinsky5Transformer3DModel, Kandinsky5T2VPipeline): visual self-attention, video tokens only; text
by cross-attention. The pipeline's latents are channels last, (B, F', h, w, C), followed on channels by zero
visual-conditioning channels and a zero mask when the transformer conditions on them (`visual_cond`)."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import signature_size_default, video_vae
from .layout import TokenLayout
from .parallel import kandinsky5_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    sparse = bound.get("sparse_params")
    if isinstance(sparse, dict) and sparse.get("to_fractal"):  # tokens regrouped in 8×8 tiles: not raster order
        return TokenLayout()
    f, h, w = bound["hidden_states"].shape[1:4]  # (B, F, H, W, C), channels last
    pt, ph, pw = model.config.patch_size
    return TokenLayout((f // pt, h // ph, w // pw))


def to_grid(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    """(B, F', h, w, C) channels-last latents (`output_type="latent"`: the noise channels only) → (B, C, F', h, w)."""
    c = pipe.transformer.config.in_visual_dim
    return latents[..., :c].permute(0, 4, 1, 2, 3)


def from_grid(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    """(B, C, F', h, w) → the pipeline's `latents=`: channels last, then (with `visual_cond`) C zero conditioning
    channels and a zero mask, as its `prepare_latents` lays out text-to-video latents."""
    latents = grid.permute(0, 2, 3, 4, 1)  # (B, F', h, w, C)
    if pipe.transformer.visual_cond:
        mask = latents.new_zeros((*latents.shape[:-1], 1))
        latents = torch.cat([latents, torch.zeros_like(latents), mask], dim=-1)  # (B, F', h, w, 2C + 1)
    return latents.contiguous()


KANDINSKY5 = Family(
    "Kandinsky5",
    model_classes=("Kandinsky5Transformer3DModel",),
    pipeline_classes=("Kandinsky5T2VPipeline",),
    # the visual blocks' self-attention; not the text encoder blocks' nor the visual blocks' cross-attention
    attention=SelfAttention(r"^visual_transformer_blocks\.\d+\.self_attention$", _layout),
    # no noise search (noise_grid None): `latents=` carries the visual-conditioning channels and mask along with the
    # noise (a search would optimize them too), and the pipeline writes its steps into `latents=` in place
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, to_grid=to_grid, from_grid=from_grid,
                    default_size=signature_size_default),  # fmt: skip
    # encode_prompt → (Qwen embeddings, CLIP pooled, cumulative Qwen lengths); CFG's negative by a second call
    prompt=PromptEncoding(("prompt_embeds_qwen", "prompt_embeds_clip", "prompt_cu_seqlens"), separate_negative=True),
    # no structured guidance: the text passes the transformer's own text blocks (attention across tokens) before
    # the visual blocks' cross-attention, so there is no per-token projection to guide
    flow_matching=True,  # no sigmas= argument: a stage's σ grid comes from the stage scheduler
    stock_steps=50,
    parallel_plan=kandinsky5_plan,  # diffusers gives this class none (none under NABLA attention)
    parallel_refusal=("its NABLA attention (attention_type='nabla') builds its block mask from each rank's own "
                      "tokens, before Ulysses attention gathers them"),  # the only case kandinsky5_plan gives None
)
