"""Tiny offline LongCat-Image text-to-image pipeline (stock `LongCatImagePipeline`), built from configs.

The transformer is the real Flux-like MMDiT at toy width (one double- and one single-stream block): text tokens
first, then 2×2-packed latent tokens (the pipeline draws 16 latent channels, so the transformer takes 64), positions
from `img_ids`/`txt_ids`. The text encoder is a Qwen2.5-VL built from a config whose last hidden state the pipeline
reads between its fixed system prefix and assistant suffix; the prompt budget is cut to 16 tokens (stock: 512). CFG
runs for guidance_scale > 1, the negative prompt ("" by default) through a second `encode_prompt`. The prompt
rewrite (`enable_prompt_rewrite`, on by default) generates text with a `text_processor` this fixture does not have:
call it with `enable_prompt_rewrite=False`. The VAE halves the image once (height/width multiples of 4).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    LongCatImagePipeline,
    LongCatImageTransformer2DModel,
)
from transformers import PreTrainedTokenizerFast

from ._common import finish_pipeline
from .qwen_image import tiny_qwen2_5_vl_text_encoder
from .tokenizers import WORDS, word_level_tokenizer

TOKENS = 16  # prompt tokens of the tiny pipeline (the stock `tokenizer_max_length` is 512)
# the words of the pipeline's system prefix, so its template tokenizes into known ids
_TEMPLATE_WORDS = tuple(
    "system user assistant as an image captioning expert generate descriptive text prompt based on content suitable "
    "for input to model".split()
)


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2-style word-level tokenizer: `<|im_start|>`/`<|im_end|>` specials, no bos/eos, pad `<|endoftext|>`."""
    specials = ("<|im_start|>", "<|im_end|>")
    words = WORDS + _TEMPLATE_WORDS
    return word_level_tokenizer(1024, pad="<|endoftext|>", eos=None, extra_special=specials, words=words)


def tiny_longcat_image_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LongCatImagePipeline:
    """Tiny LongCat-Image (MMDiT, joint attention, Qwen2.5-VL); height/width multiples of 4, default 32."""
    # 32×32 image → latents (1, 16, 16, 16) → 8×8 tokens of 16 channels × 2 × 2, after 16 text tokens
    torch.manual_seed(seed)
    transformer = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[2, 2, 4],
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(  # two blocks: vae_scale_factor 2; the FLUX VAE's latent scaling and shift
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=16, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1,
        scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    vocab = len(tokenizer)
    text_encoder = tiny_qwen2_5_vl_text_encoder(vocab, seed + 2)
    scheduler = FlowMatchEulerDiscreteScheduler(  # Flux-style dynamic shift: the pipeline passes μ(tokens)
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True,
    )  # fmt: skip
    pipe = LongCatImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_processor=None,
        transformer=transformer,
    )  # fmt: skip
    pipe.tokenizer_max_length = TOKENS
    pipe.default_sample_size = 16  # the stock default (128 × vae_scale_factor) is for the real model
    return finish_pipeline(pipe, device, dtype)
