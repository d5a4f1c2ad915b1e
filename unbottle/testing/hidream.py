"""Tiny offline HiDream-I1 text-to-image pipeline (stock `HiDreamImagePipeline`), built from configs.

The transformer keeps its real structure: 2×2 patches of the latent image first in a joint sequence with the T5
tokens and two Llama layers' tokens (one Llama layer per block), one double-stream and one single-stream block whose
feed-forwards are mixtures of experts (a shared expert and 2 of 4 routed experts per token), and the pooled CLIP-L +
CLIP-G projections in the time embedding. The four text encoders are built from configs (CLIP-L and CLIP-G with
projections, T5, a 2-layer Llama whose every hidden state the pipeline stacks). The VAE is ×4, so height/width are
multiples of 8. Like the real pipeline, every call renders the area of its default size, (default_sample_size × VAE
factor)², at the requested aspect ratio: 32 × 32 here. Configs follow diffusers' own pipeline test recipe
(tests/pipelines/hidream_image), with the tokenizers built locally.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from ._common import finish_pipeline
from .tokenizers import WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer, word_level_tokenizer


def _clip(seed: int) -> CLIPTextModelWithProjection:
    # bos/eos/pad ids match tiny_clip_tokenizer (<|startoftext|>=0, <|endoftext|>=1); 128 positions: the pipeline pads
    # CLIP prompts to min(max_sequence_length, 218) tokens
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            projection_dim=16, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )  # fmt: skip


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3-style word-level tokenizer: `<|begin_of_text|>` prepended, `<|eot_id|>` the eos (and, as the pipeline
    sets it, the padding)."""
    tokenizer = word_level_tokenizer(128, bos="<|begin_of_text|>", eos=None, extra_special=("<|eot_id|>",),
                                     words=WORDS)  # fmt: skip
    tokenizer.eos_token = "<|eot_id|>"
    return tokenizer


def tiny_hidream_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> HiDreamImagePipeline:
    """Tiny HiDream-I1 (joint-attention MoE DiT; CLIP-L, CLIP-G, T5, Llama); renders 32 × 32 px of area at any
    requested aspect ratio."""
    # 32×32 image → latents (1, 4, 8, 8) → 16 tokens of 2×2 patches, then T5 + 2 × Llama tokens in the joint sequence
    torch.manual_seed(seed)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[16, 16], text_emb_dim=32, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16), llama_layers=(0, 1),
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(  # three blocks: ×4
        block_out_channels=(8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    tokenizer_3 = tiny_t5_tokenizer(128)
    torch.manual_seed(seed + 4)
    text_encoder_3 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer_3), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2)  # fmt: skip
    )
    tokenizer_4 = _llama_tokenizer()
    torch.manual_seed(seed + 5)
    text_encoder_4 = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer_4), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=3,
            attn_implementation="eager",  # the pipeline asks for attention weights
        )
    )  # fmt: skip
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=_clip(seed + 2),
        tokenizer=tiny_clip_tokenizer(128), text_encoder_2=_clip(seed + 3), tokenizer_2=tiny_clip_tokenizer(128),
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, text_encoder_4=text_encoder_4,
        tokenizer_4=tokenizer_4, transformer=transformer,
    )  # fmt: skip
    pipe.default_sample_size = 8  # the stock 128 (× VAE factor: 1024 px) is the real model's
    return finish_pipeline(pipe, device, dtype)
