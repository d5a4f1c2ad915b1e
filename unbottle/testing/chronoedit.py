"""Tiny offline ChronoEdit pipeline (stock ChronoEditPipeline): image editing as a short image-to-video generation.

A Wan 2.1 I2V-shaped transformer (ChronoEditTransformer3DModel): 36 input channels (16 noise + 4 mask + 16
condition), CLIP image embeddings through added key/value projections in cross-attention, UMT5 text, the Wan VAE and
the flow-mode UniPC scheduler (flow shift 5). Configs follow diffusers' own recipe
(tests/pipelines/chronoedit/test_chronoedit.py). The attention splits off the text as the last 512 tokens (diffusers
hardcodes the text length), so calls keep the pipeline's default `max_sequence_length=512`.
"""

from __future__ import annotations

import torch
from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from ._common import finish_pipeline
from ._wan_like import flow_unipc, text_and_vae

IMAGE_DIM = 8  # the CLIP vision encoder's hidden size: the image embeddings the transformer takes
_HEADS, _HEAD_DIM = 2, 12


def tiny_chronoedit_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> ChronoEditPipeline:
    """Tiny ChronoEdit (CLIP vision encoder, 36-channel input); sizes multiples of 16; an edit is 5 frames."""
    # a 32×32 edit: 5 frames → latents (1, 16, 2, 4, 4) → 2 × 2 × 2 tokens; the image gives 17 CLIP tokens
    torch.manual_seed(seed)
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=IMAGE_DIM,
        added_kv_proj_dim=_HEADS * _HEAD_DIM,  # image tokens' own keys/values, as in Wan 2.1 I2V
    )  # fmt: skip
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8)  # fmt: skip
    )
    image_processor = CLIPImageProcessor(size=32, crop_size=32)
    pipe = ChronoEditPipeline(
        transformer=transformer, scheduler=flow_unipc(5.0), image_encoder=image_encoder,
        image_processor=image_processor, **text_and_vae(seed),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)
