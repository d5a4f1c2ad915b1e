"""Tiny offline text-to-video pipelines: CogVideoX, Wan 2.1, HunyuanVideo and LTX-Video, in stock diffusers classes.

Configs follow diffusers' own pipeline test recipes (tests/pipelines/{cogvideo,wan,hunyuan_video,ltx}), with text
encoders built from configs and the offline tokenizers of `unbottle.testing.tokenizers`. Every transformer keeps its
real attention layout (joint text+video attention in CogVideoX, self + cross attention in Wan and LTX, dual- and
single-stream joint attention plus the token refiner in HunyuanVideo) with ≥ 2 heads. The pipelines' own default
`max_sequence_length` works; passing a smaller one (e.g. 16) is faster still.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from tokenizers import Regex, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from ._common import finish_pipeline
from .tokenizers import WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer, word_level_tokenizer

# CogVideoX 2b ships a CogVideoXDDIMScheduler, 5b a CogVideoXDPMScheduler; swap here to test the other one.
COGVIDEOX_SCHEDULER: type[CogVideoXDDIMScheduler | CogVideoXDPMScheduler] = CogVideoXDDIMScheduler


def _t5_config(cls: type[T5Config | UMT5Config], vocab_size: int) -> T5Config | UMT5Config:
    # pad 0 / eos 2 as in tiny_t5_tokenizer; 2 heads of 16
    return cls(
        vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=32, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
    )  # fmt: skip


def _llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3-style word-level tokenizer on which HunyuanVideo's default template prefix is `crop_start` tokens.

    Like Llama 3 (and unlike the plain word-level splitter) it keeps "\\n\\n" and a space before a digit as tokens of
    their own; with `<|begin_of_text|>` prepended, the template's system prefix is then exactly 95 tokens, so the
    stock pipeline crops the whole system prompt and keeps every prompt token.
    """
    crop_start = DEFAULT_PROMPT_TEMPLATE["crop_start"]  # 95
    specials = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    tokenizer = word_level_tokenizer(
        256 + crop_start, bos="<|begin_of_text|>", eos=None, extra_special=specials, words=WORDS + ("\n\n", " ")
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n\n| (?=\d)|\w+|[^\w\s]+"), behavior="removed", invert=True
    )
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    if len(tokenizer(prefix).input_ids) != crop_start:
        raise RuntimeError("HunyuanVideo's prompt template changed: its prefix no longer tokenizes to crop_start")
    return tokenizer


def tiny_cogvideox_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> CogVideoXPipeline:
    """Tiny CogVideoX (joint-attn DiT, 3D RoPE, T5); height/width multiples of 16, num_frames = 8k+1 (1, 9, 17, …)."""
    # Like the real model, the VAE decodes an even latent frame count L to 4L frames: num_frames 5 (L = 2) gives 8.
    # 16×16×9 video → latents (1, 3, 4, 2, 2) → 3 × 1 × 1 patch tokens after the 2×2 patchify.
    tokenizer = tiny_t5_tokenizer(226)
    torch.manual_seed(seed)
    # 3D RoPE (CogVideoX-5b layout) so any text length works; head_dim 16 splits into t/h/w rotary dims 4/6/6
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=2, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(  # 3 spatial (×8) and 2 temporal (×4) downsamples
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    )  # fmt: skip
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(_t5_config(T5Config, len(tokenizer)))
    scheduler = COGVIDEOX_SCHEDULER(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False
    )  # as in the CogVideoX checkpoints' scheduler_config
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return finish_pipeline(pipe, device, dtype)


def tiny_wan_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> WanPipeline:
    """Tiny Wan 2.1 text-to-video (self + cross attention, UMT5); height/width multiples of 16, num_frames = 4k+1."""
    # 16×16×5 video → latents (1, 16, 2, 2, 2) → 2 × 1 × 1 tokens (1×2×2 patches); RoPE covers ≤ 32 per axis.
    tokenizer = tiny_t5_tokenizer(512)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    # z_dim must stay 16: the pipeline normalises latents with the 16-entry default latents_mean/std
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(_t5_config(UMT5Config, len(tokenizer)))
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)


def tiny_hunyuan_video_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> HunyuanVideoPipeline:
    """Tiny HunyuanVideo (dual/single-stream DiT, Llama + CLIP); height/width multiples of 16, num_frames = 4k+1."""
    # 16×16×5 video → latents (1, 4, 2, 2, 2) → 8 tokens (patch 1); the stock template's 95 prefix tokens are cropped.
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo(  # 3 spatial (×8) and 2 temporal (×4) downsamples
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )  # fmt: skip
    tokenizer = _llama3_tokenizer()
    torch.manual_seed(seed + 2)
    # 3 layers: the pipeline reads hidden_states[-3], i.e. the output of the first decoder layer
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, bos_token_id=2, eos_token_id=None, pad_token_id=0,
        )
    )  # fmt: skip
    torch.manual_seed(seed + 3)
    # bos/eos/pad ids match tiny_clip_tokenizer (<|startoftext|>=0, <|endoftext|>=1)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000, hidden_size=8, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )  # fmt: skip
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_clip_tokenizer(77),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)


def tiny_ltx_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LTXPipeline:
    """Tiny LTX-Video (self + cross attention, T5); height/width multiples of 32, num_frames = 4k+1 (e.g. 5)."""
    # 32×32×5 video → latents (1, 8, 2, 8, 8) → 128 tokens (patch 1); the real VAE compresses ×32/×8, this one ×4/×4.
    tokenizer = tiny_t5_tokenizer(128)
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=2, caption_channels=32,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLLTXVideo(  # 2 spatio-temporal downsamples: ×4 in space and time
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )  # fmt: skip
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(_t5_config(T5Config, len(tokenizer)))
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer,
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)
