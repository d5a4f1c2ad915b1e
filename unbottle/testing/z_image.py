"""Tiny offline Z-Image text-to-image pipeline (stock `ZImagePipeline`), built from configs.

The transformer is the real single-stream design at toy width: an image-only noise refiner, a caption-only context
refiner, then joint layers over image patches (2×2) followed by the caption, each padded to a multiple of 32 tokens.
The pipeline draws float32 latents (B, C, h, w), hands the transformer one (C, 1, h, w) tensor per sample and a
rising t = 1 − σ, and runs CFG for guidance_scale > 0 on per-sample caption embeddings of varying length (the Qwen3
hidden states of the unpadded tokens). The VAE halves the image once (height/width multiples of 4); the scheduler is
Z-Image's static shift 3. Configs follow diffusers' own pipeline test recipe (tests/pipelines/z_image), with the
tokenizer built locally.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

# Qwen3's chat format: im_start turns, the assistant's turn opened (an empty think block only with thinking off)
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3-style word-level chat tokenizer: no bos/eos added, pad `<|endoftext|>` (id 0)."""
    specials = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
    tokenizer = word_level_tokenizer(
        512, pad="<|endoftext|>", eos=None, extra_special=specials, words=WORDS + ("user", "assistant")
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def tiny_z_image_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> ZImagePipeline:
    """Tiny Z-Image (single-stream DiT, Qwen3 captions); height/width multiples of 4 (a 32 × 32 image: 64 tokens)."""
    # 32×32 image → latents (1, 4, 16, 16) → 8×8 patches of 2×2: 64 image tokens, then the caption padded to 32
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[2, 2, 4], axes_lens=[256, 32, 32],
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the padding embeddings are left uninitialised (torch.empty) by the model
        transformer.x_pad_token.copy_(torch.randn(transformer.x_pad_token.shape, generator=generator))
        transformer.cap_pad_token.copy_(torch.randn(transformer.cap_pad_token.shape, generator=generator))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(  # two blocks: vae_scale_factor 2; Z-Image's latent scaling and shift
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1,
        scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    tokenizer = _qwen3_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=512, pad_token_id=0,
    ))  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # Z-Image's static shift
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    return finish_pipeline(pipe, device, dtype)
