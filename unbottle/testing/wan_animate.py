"""Tiny offline Wan-Animate pipeline (stock `WanAnimatePipeline`), built from configs, and its conditioning inputs.

The transformer keeps the real layout: 36 input channels (16 noise + 4 mask + 16 reference / previous-segment
latents), the reference frame as the first latent frame, pose latents added to the patch embedding, the CLIP image
tokens before the text in cross-attention, and face adapters fed by the motion encoder of the face video (16 × 16
px here). The VAE is ×8 in space and ×4 in time (z_dim 16, which the pipeline's latent normalisation needs), so
height/width are multiples of 16 and segments 4k + 1 frames. Configs follow diffusers' own pipeline test recipe
(tests/pipelines/wan/test_wan_animate.py), with the tokenizer built locally.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanAnimatePipeline,
    WanAnimateTransformer3DModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_t5_tokenizer

IMAGE_DIM = 8  # the CLIP vision encoder's hidden size: the image tokens the transformer takes
FACE_SIZE = 16  # the motion encoder's face frame side (px)


def tiny_wan_animate_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> WanAnimatePipeline:
    """Tiny Wan-Animate (animate and replace modes); sizes multiples of 16, segments of 4k + 1 frames."""
    # 32×32 px, segment of 5 frames → latents (1, 16, 1 + 2, 4, 4) → 3 × 2 × 2 tokens (1×2×2 patches)
    tokenizer = tiny_t5_tokenizer(512)
    torch.manual_seed(seed)
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=36, latent_channels=16,
        out_channels=16, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, image_dim=IMAGE_DIM,
        rope_max_seq_len=32, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
        motion_encoder_size=FACE_SIZE, motion_style_dim=8, motion_dim=4, motion_encoder_dim=16,
        face_encoder_hidden_dim=16, face_encoder_num_heads=2, inject_face_latents_blocks=2,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
        )
    )  # fmt: skip
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8)  # fmt: skip
    )
    pipe = WanAnimatePipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        image_processor=CLIPImageProcessor(size=32, crop_size=32), image_encoder=image_encoder,
        transformer=transformer,
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)


def tiny_wan_animate_inputs(
    frames: int, height: int = 32, width: int = 32, seed: int = 0, replace: bool = False
) -> dict[str, object]:
    """Seeded random conditioning for a call: the reference `image`, `pose_video` and `face_video` (`frames` PIL
    frames; faces FACE_SIZE px), and for `replace` a `background_video` and a `mask_video` (left half kept)."""
    rng = np.random.default_rng(seed)

    def picture(h: int, w: int) -> PIL.Image.Image:
        return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    inputs: dict[str, object] = {
        "image": picture(height, width),
        "pose_video": [picture(height, width) for _ in range(frames)],
        "face_video": [picture(FACE_SIZE, FACE_SIZE) for _ in range(frames)],
    }
    if replace:
        mask = np.zeros((height, width, 3), dtype=np.uint8)
        mask[:, width // 2 :] = 255  # white: the character is generated there
        inputs["background_video"] = [picture(height, width) for _ in range(frames)]
        inputs["mask_video"] = [PIL.Image.fromarray(mask) for _ in range(frames)]
    return inputs
