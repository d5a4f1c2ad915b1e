"""Tiny offline Kandinsky 5 text-to-video pipeline (stock `Kandinsky5T2VPipeline`), built from configs.

Like the released text-to-video models the transformer conditions on visual channels (`visual_cond=True`): the
pipeline's latents are channels-last (B, F', h, w, C) noise followed by C zero conditioning channels and a zero mask,
and the denoiser's visual blocks cross-attend to the Qwen2.5-VL text (refined by its own text blocks), with the CLIP
pooled embedding in the time embedding. The HunyuanVideo VAE compresses ×8 in space and ×4 in time, so height/width
are multiples of 16 (the pipeline's check) and num_frames = 4k + 1. Configs follow diffusers' own pipeline test recipe
(tests/pipelines/kandinsky5), with the tokenizers built locally.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    Kandinsky5T2VPipeline,
    Kandinsky5Transformer3DModel,
)
from tokenizers import Regex, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from ._common import finish_pipeline
from .qwen_image import tiny_qwen2_5_vl_text_encoder
from .tokenizers import WORDS, tiny_clip_tokenizer, word_level_tokenizer


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2-style word-level tokenizer: `<|im_start|>`/`<|im_end|>` specials, "\\n" a token, pad `<|endoftext|>`."""
    tokenizer = word_level_tokenizer(
        1024, pad="<|endoftext|>", eos=None, extra_special=("<|im_start|>", "<|im_end|>"),
        words=WORDS + ("\n", "system", "user"),
    )  # fmt: skip
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True
    )
    return tokenizer


def tiny_kandinsky5_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Kandinsky5T2VPipeline:
    """Tiny Kandinsky 5 text-to-video (cross-attention DiT, Qwen2.5-VL + CLIP, CFG); height/width multiples of 16,
    num_frames = 4k+1."""
    # 32×32×5 video → latents (1, 2, 4, 4, 4) channels last → 2 × 2 × 2 = 8 visual tokens (patch 1 × 2 × 2)
    torch.manual_seed(seed)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=32, time_dim=16, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 2, 2), visual_cond=True,
    )  # fmt: skip
    for module in transformer.modules():  # the modulations start at zero (every gate shut, as before training)
        if type(module).__name__ == "Kandinsky5Modulation":
            torch.nn.init.normal_(module.out_layer.weight, std=0.2)
            torch.nn.init.normal_(module.out_layer.bias, std=0.2)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo(  # 3 spatial (×8) and 2 temporal (×4) downsamples
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    vocab = len(tokenizer)
    text_encoder = tiny_qwen2_5_vl_text_encoder(vocab, seed + 2)
    torch.manual_seed(seed + 3)
    # bos/eos/pad ids match tiny_clip_tokenizer (<|startoftext|>=0, <|endoftext|>=1); the pipeline pads to 77
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )  # fmt: skip
    pipe = Kandinsky5T2VPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tiny_clip_tokenizer(77),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )  # fmt: skip
    # the stock crop (128) is the system prompt's length in Qwen's BPE; here the crop is the same prefix in this
    # tokenizer's tokens, so the encoding keeps exactly the prompt's tokens (and the closing <|im_end|>)
    prefix = pipe.prompt_template.split("{}")[0]
    pipe.prompt_template_encode_start_idx = len(tokenizer(prefix).input_ids)
    return finish_pipeline(pipe, device, dtype)
