"""Tiny offline LTX-2 audio-video pipeline: `LTX2Pipeline` with LTX-2.3's layout, in stock diffusers classes.

The transformer has LTX-2.3's switches (gated attention, cross-attention modulation, perturbed self-attention for
spatio-temporal guidance, text projected per modality in the connectors); Gemma 3 is a two-layer
`Gemma3ForConditionalGeneration` (a one-layer vision tower that text prompts never run) with a word-level tokenizer
(`<bos>` first, left padding as the pipeline sets it). The video VAE compresses ×16 in space and ×4 in time (pixel
patches of 4 like the real one), so 64×64×9 is a 3×4×4 latent grid; the audio VAE, vocoder and the VAEs' latent
statistics (non-trivial, as in a checkpoint) are tiny too.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, PreTrainedTokenizerFast

from ._common import finish_pipeline
from .tokenizers import word_level_tokenizer

VIDEO_CHANNELS, AUDIO_CHANNELS, MEL_BINS = 4, 2, 8  # latent mel bins: MEL_BINS / 4


def _gemma_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-style word-level tokenizer: `<bos>` prepended, no end token, pad id 0."""
    return word_level_tokenizer(1024, bos="<bos>", eos=None)


def _gemma3(tokenizer: PreTrainedTokenizerFast) -> Gemma3ForConditionalGeneration:
    text = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.pad_token_id, sliding_window=8,
    )  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)  # fmt: skip
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))


def tiny_ltx2_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LTX2Pipeline:
    """Tiny LTX-2 (video + audio streams, Gemma 3 + connectors); height/width multiples of 32 (64 keeps 4×4 latent
    rows), num_frames = 4k+1; pass max_sequence_length=16 (the default 1024 works, slower)."""
    tokenizer = _gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma3(tokenizer)
    layers = text_encoder.config.text_config.num_hidden_layers
    torch.manual_seed(seed + 1)
    connectors = LTX2TextConnectors(  # LTX-2.3: per-modality projections to the video (16) and audio (8) widths
        caption_channels=16, text_proj_in_factor=layers + 1, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, video_gated_attn=True, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=4, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, audio_gated_attn=True, connector_rope_base_seq_len=32,
        rope_double_precision=False, rope_type="split", per_modality_projections=True, video_hidden_dim=16,
        audio_hidden_dim=8,
    )  # fmt: skip
    torch.manual_seed(seed + 2)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=VIDEO_CHANNELS, out_channels=VIDEO_CHANNELS, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=AUDIO_CHANNELS * MEL_BINS // 4,
        audio_out_channels=AUDIO_CHANNELS * MEL_BINS // 4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=2, gated_attn=True, cross_attn_mod=True, audio_gated_attn=True,
        audio_cross_attn_mod=True, use_prompt_embeddings=False, perturbed_attn=True, rope_type="split",
        rope_double_precision=False, vae_scale_factors=(4, 16, 16),
    )  # fmt: skip
    torch.manual_seed(seed + 3)
    vae = AutoencoderKLLTX2Video(  # pixel patches 4 × two spatio-temporal downsamples: ×16 in space, ×4 in time
        latent_channels=VIDEO_CHANNELS, block_out_channels=(8, 8), down_block_types=("LTX2VideoDownBlock3D",) * 2,
        decoder_block_out_channels=(8, 8), layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        spatio_temporal_scaling=(True, True), decoder_spatio_temporal_scaling=(True, True),
        decoder_inject_noise=(False, False, False), downsample_type=("spatiotemporal",) * 2,
        upsample_type=("spatiotemporal",) * 2, upsample_residual=(False, False), upsample_factor=(1, 1),
        timestep_conditioning=False, patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )  # fmt: skip
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    torch.manual_seed(seed + 4)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=AUDIO_CHANNELS * MEL_BINS // 4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=None, in_channels=2, resolution=32, latent_channels=AUDIO_CHANNELS, norm_type="pixel",
        causality_axis="height", mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160,
        is_causal=True, mel_bins=MEL_BINS,
    )  # fmt: skip
    torch.manual_seed(seed + 5)
    vocoder = LTX2Vocoder(
        in_channels=2 * MEL_BINS, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=16000,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed + 6)
    for module in (vae, audio_vae):  # a checkpoint's per-channel latent statistics, so (de)normalization matters
        module.latents_mean.copy_(0.5 * torch.randn(module.latents_mean.shape, generator=generator))
        module.latents_std.copy_(0.5 + torch.rand(module.latents_std.shape, generator=generator))
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
        tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder,
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)
