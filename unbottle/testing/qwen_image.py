"""Tiny offline Qwen-Image text-to-image pipeline (QwenImagePipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/qwenimage): a 2-block MMDiT with joint
text-image attention over 2×2-packed latent tokens, a Qwen2.5-VL text encoder built from a config, the causal 3-D
Qwen-Image VAE (×4 here, ×8 in the real model) and Qwen-Image's own flow-matching schedule (dynamic exponential shift,
terminal σ 0.02). The tokenizer is built in memory so that the pipeline's chat template prefix is exactly the
`prompt_template_encode_start_idx` tokens it drops, as with the real Qwen2 tokenizer.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import Regex, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

# the words of QwenImagePipeline's system prompt, so its template tokenizes into known ids
_TEMPLATE_WORDS = tuple(
    """
    system user assistant describe detailing color shape size texture quantity text spatial relationships objects
    background
    """.split()
)


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2-style word-level tokenizer: `<|im_start|>`/`<|im_end|>` specials, "\\n" a token, pad `<|endoftext|>`."""
    specials = ("<|im_start|>", "<|im_end|>")
    tokenizer = word_level_tokenizer(
        1024, pad="<|endoftext|>", eos=None, extra_special=specials, words=WORDS + _TEMPLATE_WORDS + ("\n",)
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True
    )
    return tokenizer


def tiny_qwen2_5_vl_text_encoder(
    vocab: int, seed: int, num_hidden_layers: int = 2
) -> Qwen2_5_VLForConditionalGeneration:
    """A seeded 16-wide Qwen2.5-VL built from a config, its vision token ids past the `vocab` text ids."""
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=16, intermediate_size=16, num_hidden_layers=num_hidden_layers,
            num_attention_heads=2, num_key_value_heads=2, rope_theta=1e6, bos_token_id=None, eos_token_id=None,
            pad_token_id=0, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        # vision tokens past the text vocabulary: text prompts never contain them
        image_token_id=vocab, video_token_id=vocab + 1, vision_start_token_id=vocab + 2, vision_end_token_id=vocab + 3,
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config)


def tiny_qwen_image_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> QwenImagePipeline:
    """Tiny Qwen-Image (MMDiT, joint attention, Qwen2.5-VL); height/width multiples of 8, default 32."""
    # 32×32 image → latents (1, 4, 1, 8, 8) → 16 tokens of 2×2 packed positions; text first in the joint sequence
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(  # 2 spatial downsamples: ×4; z_dim 4 with a neutral latent normalisation
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    vocab = len(tokenizer)
    text_encoder = tiny_qwen2_5_vl_text_encoder(vocab, seed + 2)
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler_config
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
        time_shift_type="exponential", use_dynamic_shifting=True,
    )  # fmt: skip
    pipe = QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    prefix = pipe.prompt_template_encode.split("{}")[0]
    if len(tokenizer(prefix).input_ids) != pipe.prompt_template_encode_start_idx:
        raise RuntimeError("QwenImagePipeline's prompt template changed: its prefix no longer tokenizes to the "
                           "prompt_template_encode_start_idx tokens the pipeline drops")  # fmt: skip
    pipe.default_sample_size = 8  # the stock default (128 × vae_scale_factor) is for the real model
    return finish_pipeline(pipe, device, dtype)
