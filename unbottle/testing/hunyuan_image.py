"""Tiny offline HunyuanImage 2.1 text-to-image pipeline (stock `HunyuanImagePipeline`, the base model), from configs.

The transformer keeps its real conditioning: Qwen2.5-VL text tokens through the token refiner and ByT5 glyph tokens
for quoted text, joined after the image tokens (one per latent position: patch 1 × 1). Its guiders run adaptive
projected mix guidance (CFG with two transformer calls per step; the negative prompt through a second
`encode_prompt`), the plain one for prompts without quoted text and the OCR one for prompts with it. The VAE halves
the image once (height/width multiples of 2, the pipeline's own checks ask for 4); the scheduler is a static
flow-matching shift. Configs follow diffusers' own pipeline test recipe (tests/pipelines/hunyuan_image_21), with the
tokenizers built locally and the text budgets cut to 16 tokens each (stock: 1000 and 128).
"""

from __future__ import annotations

import torch
from diffusers import (
    AdaptiveProjectedMixGuidance,
    AutoencoderKLHunyuanImage,
    FlowMatchEulerDiscreteScheduler,
    HunyuanImagePipeline,
    HunyuanImageTransformer2DModel,
)
from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

from ._common import finish_pipeline
from .qwen_image import (
    _qwen_tokenizer,  # the same system prompt prefix: 34 tokens the pipeline drops
    tiny_qwen2_5_vl_text_encoder,
)

TOKENS = (16, 16)  # Qwen2.5-VL and ByT5 glyph tokens of the tiny pipeline


def tiny_hunyuan_image_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> HunyuanImagePipeline:
    """Tiny HunyuanImage 2.1 (joint attention, Qwen2.5-VL + ByT5, APG guiders); height/width multiples of 2."""
    # 16×16 image → latents (1, 4, 8, 8) → 64 image tokens, then 16 text + 16 glyph tokens
    torch.manual_seed(seed)
    transformer = HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False, text_embed_dim=16, text_embed_2_dim=8,
        rope_axes_dim=(4, 4),
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanImage(  # group norms of 32: the narrowest blocks it builds; ×2
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32), layers_per_block=1,
        scaling_factor=0.476986, spatial_compression_ratio=2, sample_size=32,
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    vocab = len(tokenizer)
    # 3 layers: the pipeline reads the third-last state
    text_encoder = tiny_qwen2_5_vl_text_encoder(vocab, seed + 2, num_hidden_layers=3)
    tokenizer_2 = ByT5Tokenizer()
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(T5Config(
        d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=32, vocab_size=len(tokenizer_2), feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
    ))  # fmt: skip
    pipe = HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
        guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=2),
        ocr_guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=3),
    )  # fmt: skip
    prefix = pipe.prompt_template_encode.split("{}")[0]
    if len(tokenizer(prefix).input_ids) != pipe.prompt_template_encode_start_idx:
        raise RuntimeError("HunyuanImagePipeline's prompt template changed: its prefix no longer tokenizes to the "
                           "prompt_template_encode_start_idx tokens the pipeline drops")  # fmt: skip
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = TOKENS
    pipe.default_sample_size = 8  # the stock default (64 × vae_scale_factor) is for the real model
    return finish_pipeline(pipe, device, dtype)
