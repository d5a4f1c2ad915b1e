"""HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel, HunyuanVideo15Pipeline): joint attention, video tokens
first, then the conditioning; Qwen2.5-VL + ByT5 prompts, negatives through the guider's second `encode_prompt`."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import latent_frames, video_vae
from .layout import TokenLayout, video_grid
from .parallel import SQUARE_MASK_REFUSAL


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # conditioning after the video tokens: image-encoder tokens, ByT5 tokens and MLLM text tokens, valid ones first
    # and padding after (the attention mask hides the padding; the count is what places the split)
    conditioning = sum(
        int(bound[key].shape[1])
        for key in ("encoder_hidden_states", "encoder_hidden_states_2", "image_embeds")
        if isinstance(bound.get(key), torch.Tensor)
    )
    return TokenLayout(video_grid(model, bound), conditioning, text_first=False)


def noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(C, F', h, w) of one sample's noise: the VAE's latent channels, not the transformer's in_channels (2C + 1:
    the pipeline concatenates conditioning latents and a mask on channels, zeros for text-to-video)."""
    s = video_vae(pipe)
    return pipe.num_channels_latents, latent_frames(pipe, frames), height // s, width // s


def default_size(pipe: object) -> tuple[int, int]:
    """(height, width) without a size: the 9:16 bucket of the transformer's `target_size`, as the pipeline picks."""
    width, height = pipe.default_aspect_ratio
    return tuple(pipe.video_processor.calculate_default_height_width(height, width, pipe.target_size))


HUNYUAN_VIDEO15 = Family(
    "HunyuanVideo-1.5",
    model_classes=("HunyuanVideo15Transformer3DModel",),
    # text-to-video only: the image-to-video pipeline takes no height/width (its size follows the image) and
    # re-encodes the image into conditioning latents at that size on every call, so a stage's latents cannot differ
    pipeline_classes=("HunyuanVideo15Pipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn$", _layout),  # not the text refiner's attention
    latents=Latents(video=True, vae_factor=video_vae, noise_grid=noise, default_size=default_size),
    prompt=PromptEncoding(("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2"),
                          separate_negative=True),  # fmt: skip
    flow_matching=True,
    stock_steps=50,
    parallel_refusal=("its text tokens are joined inside forward (no module output a plan could shard) and "
                      + SQUARE_MASK_REFUSAL),
)
