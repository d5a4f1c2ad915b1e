"""Tiny offline EasyAnimate V5.1 text-to-video pipeline (EasyAnimatePipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/easyanimate): a 2-block MMDiT with joint
text-video attention (text first), the MagVIT VAE (×8 in space, ×4 in time) and the default FlowMatchEulerDiscrete
scheduler. The text encoder is the V5.1 default, Qwen2-VL, built from a config, with a Qwen-style word-level
tokenizer whose chat template renders the pipeline's conversation (a default system turn, the user's text parts).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLMagvit,
    EasyAnimatePipeline,
    EasyAnimateTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
)
from tokenizers import Regex, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

# Qwen2-VL's conversation format: a default system turn, then each message's text parts inside im_start turns
_QWEN2_VL_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen2_vl_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen-style word-level tokenizer: im_start turns, "\\n" a token, no bos/eos added, pad `<|endoftext|>` (id 0)."""
    words = tuple(dict.fromkeys(WORDS + ("system", "user", "assistant", "you", "helpful", "\n")))
    tokenizer = word_level_tokenizer(
        512, pad="<|endoftext|>", eos=None, extra_special=("<|im_start|>", "<|im_end|>"), words=words
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True
    )
    tokenizer.chat_template = _QWEN2_VL_TEMPLATE
    return tokenizer


def tiny_easyanimate_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> EasyAnimatePipeline:
    """Tiny EasyAnimate V5.1 (MMDiT, joint attention, Qwen2-VL); height/width multiples of 16, num_frames = 4k+1."""
    # 32×32×5 video → latents (1, 4, 2, 4, 4) → 2 × 2 × 2 tokens of 2×2 patches, after the text tokens
    torch.manual_seed(seed)
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=16,
        sample_height=16, num_layers=2, mmdit_layers=2, time_embed_dim=16, text_embed_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLMagvit(  # 3 spatial (×8) and 2 temporal (×4) downsamples
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
        up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3, norm_num_groups=2,
        spatial_group_norm=False,
    )  # fmt: skip
    tokenizer = _qwen2_vl_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed + 2)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, rope_theta=1e6, bos_token_id=None, eos_token_id=None, pad_token_id=0,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        ),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=1),
        # vision tokens past the text vocabulary: text prompts never contain them
        image_token_id=vocab, video_token_id=vocab + 1, vision_start_token_id=vocab + 2, vision_end_token_id=vocab + 3,
    )  # fmt: skip
    text_encoder = Qwen2VLForConditionalGeneration(config)
    pipe = EasyAnimatePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)
