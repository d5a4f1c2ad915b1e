"""Tiny offline HunyuanVideo-1.5 text-to-video pipeline (stock `HunyuanVideo15Pipeline`), built from configs.

The transformer keeps its real conditioning: Qwen2.5-VL text tokens through the token refiner, ByT5 glyph tokens for
quoted text, the (zero, masked) image tokens of text-to-video, and the conditioning latents and mask concatenated on
channels (in_channels = 2 × latent channels + 1). The VAE compresses like the real one (×16 in space, ×4 in time), so
height/width are multiples of 16 and num_frames = 4k + 1; the guider runs CFG (two transformer calls per step, the
negative prompt through a second `encode_prompt`). Configs follow diffusers' own pipeline test recipe
(tests/pipelines/hunyuan_video1_5), with the tokenizers built locally.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input
from tokenizers import Regex, pre_tokenizers
from transformers import (
    ByT5Tokenizer,
    PreTrainedTokenizerFast,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    T5Config,
    T5EncoderModel,
)

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

# Qwen2's chat format: each message as <|im_start|>role\ncontent<|im_end|>\n, then the assistant's turn opened
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CROP_START = 108  # the pipeline's prompt_template_encode_start_idx: the templated prefix it crops
TOKENS = (32, 32, 16)  # text, ByT5 glyph and image tokens of the tiny pipeline (stock: 1000, 256, 729)


def _qwen_tokenizer(max_length: int = TOKENS[0]) -> PreTrainedTokenizerFast:
    """Qwen2-style word-level chat tokenizer on which the pipeline's system prefix is exactly `CROP_START` tokens.

    Like Qwen's BPE it keeps "\\n" and runs of four spaces (the indentation inside the stock system message) as
    tokens; the templated prefix up to the user's prompt is then 108 tokens, so the stock crop removes the whole
    system message and keeps every prompt token.
    """
    tokenizer = word_level_tokenizer(
        max_length + CROP_START, eos=None, extra_special=("<|im_start|>", "<|im_end|>"),
        words=WORDS + ("\n", "    ", "system", "user", "assistant", "sign", "says", "hello"),
    )  # fmt: skip
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n| {4}|\w+|[^\w\s]+"), behavior="removed", invert=True
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _check_crop(pipe: HunyuanVideo15Pipeline) -> None:
    """The stock crop start must land on the prompt's first token with this tokenizer and system message."""
    conversation = format_text_input(["red"], pipe.system_message)
    ids = pipe.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True).input_ids
    crop = pipe.prompt_template_encode_start_idx
    if crop != CROP_START or ids[0][crop] != pipe.tokenizer.convert_tokens_to_ids("red"):
        raise RuntimeError("HunyuanVideo-1.5's prompt template changed: its prefix is no longer crop_start tokens")


def tiny_hunyuan_video15_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> HunyuanVideo15Pipeline:
    """Tiny HunyuanVideo-1.5 text-to-video (joint-attn DiT, Qwen2.5-VL + ByT5, CFG guider); height/width multiples of
    16, num_frames = 4k+1; 48 × 80 when no size is given."""
    # 64×64×5 video → latents (1, 4, 2, 4, 4) → 32 video tokens (patch 1), then 16 image + 32 ByT5 + 32 text tokens
    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=16,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=64, task_type="t2v",
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo15(  # 4 spatial (×16) and 2 temporal (×4) downsamples, as the real VAE
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, spatial_compression_ratio=16,
        temporal_compression_ratio=4, downsample_match_channel=False, upsample_match_channel=False,
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed + 2)
    # 3 layers: the pipeline reads hidden_states[-3], i.e. the output of the first decoder layer; head_dim 8 splits
    # into the multimodal RoPE sections (1, 1, 2)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=None, eos_token_id=None,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
        )
    )  # fmt: skip
    tokenizer_2 = ByT5Tokenizer()  # byte-level: no vocabulary file
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )
    )  # fmt: skip
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )  # fmt: skip
    _check_crop(pipe)
    # shorter conditioning than the stock budgets (pipeline attributes, not config): a tiny call stays fast
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = TOKENS
    return finish_pipeline(pipe, device, dtype)
