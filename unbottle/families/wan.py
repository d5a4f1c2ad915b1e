"""Wan 2.1 (WanTransformer3DModel, WanPipeline): video latents, UMT5 text, noise drawn in float32. An image-to-video
forward's first latent frame, the clean conditioning frame, is laid out as prompt tokens: sparse attention keeps it."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .latents import rounded_video_noise, signature_size_default, video_vae
from .layout import TokenLayout, video_grid


def _image_to_video(model: torch.nn.Module, bound: dict, grid: tuple[int, int, int]) -> bool:
    """Whether a forward conditions on a clean first latent frame (WanImageToVideoPipeline)."""
    if bound.get("encoder_hidden_states_image") is not None:  # Wan 2.1 I2V: CLIP image embeddings
        return True
    config = model.config
    if config.in_channels == 2 * (config.out_channels or config.in_channels) + 4:  # noise, mask, condition (2.1, 2.2)
        return True
    f, h, w = grid
    t = bound.get("timestep")  # Wan 2.2 TI2V (expand_timesteps): (B, N) per token, 0 on the clean first frame
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[1] != f * h * w:
        return False
    return bool((t[:, : h * w] == 0).all())


def _timestep(bound: dict) -> float | None:
    # text-to-video: (B,); expand_timesteps: (B, N) per token, 0 on a clean conditioning frame (TI2V): the noisy
    # tokens' timestep, the largest
    t = bound.get("timestep")
    if not isinstance(t, torch.Tensor):
        return None if t is None else float(t)
    return float(t[0].max()) if t.dim() > 1 else float(t.flatten()[0])


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    f, h, w = video_grid(model, bound)
    if f > 1 and _image_to_video(model, bound, (f, h, w)):  # the conditioning frame kept like prompt tokens
        return TokenLayout((f - 1, h, w), text_len=h * w, text_first=True)
    return TokenLayout((f, h, w))


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(prompt)


WAN = Family(
    "Wan",
    model_classes=("WanTransformer3DModel",),
    pipeline_classes=("WanPipeline",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout, read_timestep=_timestep),
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=rounded_video_noise,
                    default_size=signature_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.condition_embedder.text_embedder, _text,
        max_length_arg="max_sequence_length", exact=True,  # text-to-video WanPipeline itself
    ),
    flow_matching=True,
    stock_steps=50,
)
