"""LTX-2 (LTX2VideoTransformer3DModel, LTX2Pipeline): audio-video; sparse on the video self-attention, video tokens
only; bottleneck sampling with the audio carried across stages; noise search on the video noise.

`LTX2Pipeline` draws two noises from its generator, in this order: the video latents (B, C, F', h, w), then the audio
latents (B, C_a, L, M), whose length L follows num_frames and frame_rate, not the size. It takes `latents=` as packed
tokens (B, F'·h·w, C) as they are (5-D latents it normalizes with the VAE's statistics first) and, with `latents=`
given, still draws one video-sized noise to re-noise them by `noise_scale` (0: unchanged). So noise search, which
passes the video noise and the generator in its state after that noise, gets an audio noise drawn after a second
video-sized draw: the same at every iteration and in the result's call, but not seed s's stock audio noise; pass
`audio_latents=` to fix it (the stock call with that seed and those audio latents then equals the search's start).
"""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import signature_size_default, video_noise, video_vae
from .layout import TokenLayout
from .ltx import pack, unpack

DEFAULT_FRAMES = 121  # LTX2Pipeline's num_frames when the call gives none and it has no duration head


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # packed video tokens (B, F·H·W, C) in raster order over the latent (frames, height, width) the forward is given;
    # without them (explicit video_coords) the tokens are a 1-D sequence
    frames, height, width = bound.get("num_frames"), bound.get("height"), bound.get("width")
    if frames is None or height is None or width is None:
        return TokenLayout()
    p, pt = model.config.patch_size, model.config.patch_size_t
    grid = (int(frames) // pt, int(height) // p, int(width) // p)
    return TokenLayout(grid if grid[0] * grid[1] * grid[2] == bound["hidden_states"].shape[1] else None)


def to_grid(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int) -> torch.Tensor:
    """Pipeline latents → (B, C, F', h, w) in the space its noise is drawn in: packed tokens unpacked; the 5-D latent
    output (`output_type="latent"`, denormalized) normalized as the pipeline normalizes 5-D `latents=`."""
    if latents.ndim == 5:
        vae = pipe.vae
        return pipe._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    return unpack(pipe, latents, height, width, frames)


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(C, F', h, w) of one sample's video noise; the audio noise is the pipeline's own."""
    if frames is None:
        if getattr(pipe, "duration_head", None) is not None:
            raise ValueError(
                f"num_frames=None: this {type(pipe).__name__} predicts the video's length from the prompt (its "
                "duration_head), so the noise shape is unknown beforehand; give num_frames (8k+1, e.g. 121)"
            )
        frames = DEFAULT_FRAMES
    return video_noise(pipe, height, width, frames)


LTX2 = Family(
    "LTX-2",
    model_classes=("LTX2VideoTransformer3DModel",),
    pipeline_classes=("LTX2Pipeline",),
    # video self-attention only: the audio stream's self-attention (a short 1-D sequence) and the text and
    # audio↔video cross-attentions stay dense
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    # bottleneck stages hand the pipeline the resized video x̂0 and the audio x̂0 (which keeps its length) clean, and
    # `noise_scale` = the next stage's strength: the pipeline noises both itself, in its normalized latent space
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=32, to_grid=to_grid, from_grid=pack,
                    noise_grid=_noise, default_size=signature_size_default, float32_noise=True,
                    renoise_arg="noise_scale", carried=((1, "audio_latents"),)),  # fmt: skip
    prompt=PromptEncoding(
        ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    ),
    # no structured guidance: the text reaches the denoiser through the connectors, not token for token
    flow_matching=True,
    stock_steps=30,
)
