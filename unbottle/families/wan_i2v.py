"""Wan image-to-video (WanImageToVideoPipeline): Wan 2.1 I2V, Wan 2.2 I2V-A14B and TI2V-5B (`expand_timesteps`).

Pipeline parts only: the denoiser is WanTransformer3DModel, whose sparse attention the Wan family drives (its layout
keeps an image-to-video forward's conditioning frame). The pipeline draws noise with the VAE's latent channels
(z_dim), not the transformer's input channels (noise, mask and condition concatenated: 36 for Wan 2.1 I2V).
"""

from __future__ import annotations

from .family import Family, Latents, PromptEncoding
from .latents import patch_size, signature_size_default, video_vae


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(z_dim, F', h, w) of one sample's noise, with the pipeline's own rounding of frames and of the size."""
    temporal = pipe.vae_scale_factor_temporal
    if frames % temporal != 1:  # the pipeline rounds num_frames to k·temporal + 1
        frames = frames // temporal * temporal + 1
    frames = max(frames, 1)
    s = video_vae(pipe)
    _, ph, pw = patch_size(pipe)
    h, w = height // (s * ph) * ph, width // (s * pw) * pw  # the pipeline rounds the size down to VAE × patch
    return pipe.vae.config.z_dim, (frames - 1) // temporal + 1, h, w


WAN_I2V = Family(
    "Wan-I2V",
    model_classes=("WanTransformer3DModel",),  # sparse attention: the Wan family (this record has no attention part)
    pipeline_classes=("WanImageToVideoPipeline",),
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=_noise,
                    default_size=signature_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    # no structured guidance: Wan 2.1 I2V's cross-attention sees [image tokens, text] joined inside the forward
    flow_matching=True,
    stock_steps=50,
)
