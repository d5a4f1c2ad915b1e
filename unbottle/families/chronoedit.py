"""ChronoEdit (ChronoEditTransformer3DModel, ChronoEditPipeline): image editing as a short Wan 2.1 I2V-style video.

Sparse attention uses Wan's layout: the forward is image-to-video by the same signs (CLIP image embeddings, 2·16 + 4
input channels), so the first latent frame, the clean input image, is kept like prompt tokens. The pipeline draws
noise with the VAE's latent channels (z_dim), not the transformer's 36, and edits with 5 frames whatever
`num_frames` says (that is read only with `enable_temporal_reasoning`).
"""

from __future__ import annotations

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import signature_size_default, video_vae
from .wan import _layout as _wan_layout

EDIT_FRAMES = 5  # the pipeline's frame count without temporal reasoning


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(z_dim, F', h, w) of one edit's noise: 5 frames (noise search and bottleneck: no temporal reasoning)."""
    s = video_vae(pipe)
    return pipe.vae.config.z_dim, (EDIT_FRAMES - 1) // pipe.vae_scale_factor_temporal + 1, height // s, width // s


CHRONOEDIT = Family(
    "ChronoEdit",
    model_classes=("ChronoEditTransformer3DModel",),
    pipeline_classes=("ChronoEditPipeline",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _wan_layout),
    # enable_temporal_reasoning: more frames than the noise drawn here, and a scheduler state (UniPC's) it trims
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=_noise,
                    default_size=signature_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    # no structured guidance: its cross-attention sees [image tokens, text] joined inside the forward
    flow_matching=True,
    stock_steps=50,
)
