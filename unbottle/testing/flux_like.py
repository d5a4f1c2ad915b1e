"""Tiny offline FLUX.1-like text-to-image pipelines in stock diffusers classes: Chroma (ChromaPipeline), Bria
(BriaPipeline) and Ovis-Image (OvisImagePipeline), each packing its latents 2×2 into tokens as FLUX.1 does.

Configs follow diffusers' own pipeline tests (tests/pipelines/chroma, bria, ovis_image) with the text encoders built
from configs: a 2-layer T5 encoder and the word-level T5-style tokenizer (Chroma, Bria), a 2-layer Qwen3 model and a
Qwen-style word-level tokenizer whose minimal chat template renders the stock conversation (Ovis-Image). Each VAE
halves the image once (2 blocks), so latent positions and pixels differ; Chroma and Ovis-Image run FLUX.1's dynamic
shift, Bria the default static scheduler (its pipeline's own training-σ schedule).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    BriaPipeline,
    BriaTransformer2DModel,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    OvisImagePipeline,
    OvisImageTransformer2DModel,
)
from tokenizers import Regex, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model, T5Config, T5EncoderModel

from ._common import finish_pipeline
from .tokenizers import WORDS, tiny_t5_tokenizer, word_level_tokenizer

# Qwen3's conversation format: im_start turns, the assistant's opened with an empty think block when thinking is off
_QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# the words of OvisImagePipeline's system prompt, so its conversation tokenizes into known ids
_OVIS_WORDS = tuple(
    "describe the image by detailing color quantity text shape size texture spatial relationships of objects and "
    "background".split()
)


def _vae(latent_channels: int, seed: int) -> AutoencoderKL:
    # two blocks: one downsampling, latents at half the image's side; FLUX.1's latent shift and scale
    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels, norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip


def _t5(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=256, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2))


def _flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1's scheduler config: exponential dynamic shift between 0.5 (256 tokens) and 1.15 (4096 tokens)."""
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15
    )


def tiny_chroma_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> ChromaPipeline:
    """Tiny Chroma (double + single stream blocks, modulation approximator, masked T5); height/width multiples of 4,
    default 32."""
    # 32×32 image → latents (1, 2, 16, 16) → 64 tokens of 2×2 packed positions (8 channels); text first
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1,
    )  # fmt: skip
    pipe = ChromaPipeline(
        scheduler=_flux_scheduler(), vae=_vae(2, seed + 1), text_encoder=_t5(seed + 2),
        tokenizer=tiny_t5_tokenizer(512), transformer=transformer,
    )  # fmt: skip
    pipe.default_sample_size = 16  # × vae_scale_factor 2 = 32 px; the stock 128 is for real Chroma
    return finish_pipeline(pipe, device, dtype)


def tiny_bria_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> BriaPipeline:
    """Tiny Bria (double + single stream blocks, T5 padded with zeros, batched CFG); height/width multiples of 4
    (its vae_scale_factor, which counts the packing), default 32."""
    # 32×32 image → latents (1, 2, 16, 16) → 64 tokens of 2×2 packed positions (8 channels); text first
    torch.manual_seed(seed)
    transformer = BriaTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=[0, 4, 4],
    )  # fmt: skip
    pipe = BriaPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(2, seed + 1),
        text_encoder=_t5(seed + 2), tokenizer=tiny_t5_tokenizer(512),
    )  # fmt: skip
    pipe.default_sample_size = 8  # × vae_scale_factor 4 = 32 px; the stock 64 × 16 is for real Bria
    return finish_pipeline(pipe, device, dtype)


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen-style word-level tokenizer: im_start turns, "\\n" a token, no bos/eos added, pad `<|endoftext|>` (id 0)."""
    specials = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
    words = tuple(dict.fromkeys(WORDS + _OVIS_WORDS + ("user", "assistant", "\n")))
    tokenizer = word_level_tokenizer(512, pad="<|endoftext|>", eos=None, extra_special=specials, words=words)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True
    )
    tokenizer.chat_template = _QWEN3_TEMPLATE
    return tokenizer


def tiny_ovis_image_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> OvisImagePipeline:
    """Tiny Ovis-Image (double + single stream blocks, Qwen3 text model behind a system prompt); height/width
    multiples of 4, default 32."""
    # 32×32 image → latents (1, 2, 16, 16) → 64 tokens of 2×2 packed positions (8 channels); text first
    torch.manual_seed(seed)
    transformer = OvisImageTransformer2DModel(
        patch_size=1, in_channels=8, out_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 4, 8),
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
            pad_token_id=0, bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip
    pipe = OvisImagePipeline(
        scheduler=_flux_scheduler(), vae=_vae(2, seed + 1), text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer,
    )  # fmt: skip
    # the conversation's prefix (turn opening and system prompt) is what the pipeline drops: 28 real Qwen tokens
    prefix = pipe._get_messages("{}")[0].split("{}")[0]
    ids = tokenizer(prefix, add_special_tokens=False).input_ids
    if tokenizer.unk_token_id in ids:
        raise RuntimeError("OvisImagePipeline's system prompt changed: a word of it is not in the tiny vocabulary")
    pipe.user_prompt_begin_id = len(ids)
    pipe.default_sample_size = 16  # × vae_scale_factor 2 = 32 px; the stock 128 is for real Ovis-Image
    return finish_pipeline(pipe, device, dtype)
