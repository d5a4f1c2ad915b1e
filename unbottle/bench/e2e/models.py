"""The real-size, random-weight pipelines of the end-to-end benchmark: FLUX.1-dev, Wan2.1-T2V-1.3B, Stable
Diffusion 3 medium, Wan2.2-T2V-A14B (two experts), Qwen-Image, FLUX.2 [dev] and HunyuanVideo-1.5 480p (denoisers,
VAE and scheduler at their published configs; tiny, never-called text encoders), and prompt embeddings of the real
shape."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..measure import cast_like_from_pretrained
from .options import Case

# ---- real-size configs (FLUX.1-dev, Wan2.1-T2V-1.3B-Diffusers) --------------------------------------------------
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56],
)  # fmt: skip
FLUX_DEV_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
WAN_1_3B_TRANSFORMER = dict(
    patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)  # fmt: skip
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)  # fmt: skip
WAN_SCHEDULER = dict(  # the Diffusers checkpoint's scheduler_config.json (UniPCMultistepScheduler)
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=2,
    solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
)  # fmt: skip

SD3_MEDIUM_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)  # fmt: skip
SD3_VAE = dict(FLUX_DEV_VAE, scaling_factor=1.5305, shift_factor=0.0609)  # the same architecture, SD3's constants
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)

# Wan2.2-T2V-A14B: two experts of this shape (5120 = 40 heads × 128, 40 layers, FFN 13824; 14.3B parameters each),
# the Wan2.1 VAE, and the reference sampler's settings (flow shift 12, the high-noise expert while t ≥ 875)
WAN22_A14B_TRANSFORMER = dict(
    WAN_1_3B_TRANSFORMER, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40,
)  # fmt: skip
WAN22_A14B_SCHEDULER = dict(WAN_SCHEDULER, flow_shift=12.0)
WAN22_A14B_BOUNDARY = 0.875
# Qwen-Image: 60 dual-stream blocks, 3072 = 24 heads × 128, Qwen2.5-VL width 3584 (20.4B parameters); its VAE at the
# diffusers defaults (the published config) and its scheduler (dynamic exponential shift, terminal σ 0.02)
QWEN_IMAGE_TRANSFORMER = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
QWEN_IMAGE_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)  # fmt: skip

# FLUX.2 [dev]: 8 double + 48 single blocks, 6144 = 48 heads × 128, Mistral-3 states of 3 layers (15360 wide), guidance
# embedding (32.2B parameters): diffusers' defaults are the published config, as are its VAE's
FLUX2_DEV_TRANSFORMER: dict = {}
# HunyuanVideo-1.5 480p text-to-video: 54 blocks, 2048 = 16 heads × 128 (8.3B parameters), conditioning latents and
# mask on channels (65 in), its 16× spatial / 4× temporal VAE (32 channels); Qwen2.5-VL 1000 text tokens, ByT5 256,
# 729 image-encoder slots (zeros in text-to-video)
HUNYUAN_VIDEO15_TRANSFORMER = dict(task_type="t2v", target_size=640)
HUNYUAN_VIDEO15_SCHEDULER = dict(shift=5.0)
HUNYUAN_VIDEO15_TOKENS = (1000, 256, 729)  # tokenizer_max_length, tokenizer_2_max_length, vision_num_semantic_tokens


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules in `dtype` (a 14B or 20B model built in fp32 first would need twice its memory)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def flux_dev_transformer() -> torch.nn.Module:
    """FLUX.1-dev's transformer at its real shape (random weights), built on the current default device."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)


def wan_1_3b_transformer() -> torch.nn.Module:
    """Wan2.1-T2V-1.3B's transformer at its real shape (random weights), built on the current default device."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**WAN_1_3B_TRANSFORMER)


def sd3_medium_transformer() -> torch.nn.Module:
    """Stable Diffusion 3 medium's MMDiT at its real shape (random weights), built on the current default device."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**SD3_MEDIUM_TRANSFORMER)


def flux_dev_vae() -> torch.nn.Module:
    """FLUX.1's 16-channel VAE at its real shape (random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**FLUX_DEV_VAE)


def wan_vae() -> torch.nn.Module:
    """Wan2.1's video VAE at its real shape (random weights)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**WAN_VAE)


def build_pipeline(model: str, device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> object:
    """A real-size random-weight FluxPipeline, WanPipeline (Wan2.1 1.3B; Wan2.2 A14B with two experts),
    StableDiffusion3Pipeline, QwenImagePipeline, Flux2Pipeline or HunyuanVideo15Pipeline (tiny unused text encoders)
    for the benchmark of Bottleneck Sampling (Tian et al., 2025)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLFlux2,
        AutoencoderKLHunyuanVideo15,
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        Flux2Pipeline,
        Flux2Transformer2DModel,
        FluxPipeline,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
        StableDiffusion3Pipeline,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    from ...testing import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
    from ...testing.flux2 import tiny_flux2_pipeline
    from ...testing.hunyuan_video15 import tiny_hunyuan_video15_pipeline
    from ...testing.qwen_image import tiny_qwen_image_pipeline

    with torch.device(device):  # random init on the GPU: seconds instead of minutes of CPU init
        if model == "wan22":
            tiny = tiny_wan_pipeline()
            with default_dtype(dtype):
                experts = [WanTransformer3DModel(**WAN22_A14B_TRANSFORMER) for _ in range(2)]
            pipe = WanPipeline(
                tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=wan_vae(), transformer=experts[0],
                transformer_2=experts[1], scheduler=UniPCMultistepScheduler(**WAN22_A14B_SCHEDULER),
                boundary_ratio=WAN22_A14B_BOUNDARY,
            )  # fmt: skip
        elif model == "flux2":
            with torch.device("cpu"):  # its fixture seeds a CPU generator for the VAE's statistics
                tiny = tiny_flux2_pipeline()
            with default_dtype(dtype):
                transformer = Flux2Transformer2DModel(**FLUX2_DEV_TRANSFORMER)
            pipe = Flux2Pipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), vae=AutoencoderKLFlux2(),
                text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=transformer,
            )  # fmt: skip
        elif model == "hunyuan-video15":
            tiny = tiny_hunyuan_video15_pipeline()
            with default_dtype(dtype):
                transformer = HunyuanVideo15Transformer3DModel(**HUNYUAN_VIDEO15_TRANSFORMER)
            pipe = HunyuanVideo15Pipeline(
                text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=transformer,
                vae=AutoencoderKLHunyuanVideo15(), text_encoder_2=tiny.text_encoder_2, tokenizer_2=tiny.tokenizer_2,
                scheduler=FlowMatchEulerDiscreteScheduler(**HUNYUAN_VIDEO15_SCHEDULER), guider=tiny.guider,
            )  # fmt: skip
            pipe.tokenizer_max_length, pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = (
                HUNYUAN_VIDEO15_TOKENS
            )
        elif model == "qwen-image":
            tiny = tiny_qwen_image_pipeline()
            with default_dtype(dtype):
                transformer = QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER)
            pipe = QwenImagePipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=AutoencoderKLQwenImage(),
                text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=transformer,
            )  # fmt: skip
        elif model == "flux":
            tiny = tiny_flux_pipeline()
            pipe = FluxPipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), vae=flux_dev_vae(),
                text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, text_encoder_2=tiny.text_encoder_2,
                tokenizer_2=tiny.tokenizer_2, transformer=flux_dev_transformer(),
            )  # fmt: skip
        elif model == "wan":
            tiny = tiny_wan_pipeline()
            pipe = WanPipeline(
                tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=wan_vae(),
                transformer=wan_1_3b_transformer(), scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER),
            )  # fmt: skip
        elif model == "sd3":
            tiny = tiny_sd3_pipeline()
            pipe = StableDiffusion3Pipeline(
                transformer=sd3_medium_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
                vae=AutoencoderKL(**SD3_VAE), text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                text_encoder_2=tiny.text_encoder_2, tokenizer_2=tiny.tokenizer_2, text_encoder_3=tiny.text_encoder_3,
                tokenizer_3=tiny.tokenizer_3,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown model {model!r}: flux, wan, sd3, wan22, qwen-image, flux2 or hunyuan-video15")
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cast_like_from_pretrained(component, dtype)
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_inputs(pipe: object, case: Case, device: torch.device, seed: int) -> dict:
    """Random precomputed prompt embeddings of the real shape, in the keywords the stock pipeline takes."""
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(seed + 1)
    dtype = pipe.transformer.dtype

    def embeds(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    if case.model == "flux":
        return {"prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "pooled_prompt_embeds": embeds(1, config.pooled_projection_dim)}  # fmt: skip
    if case.model == "flux2":  # embedded guidance: the prompt alone
        return {"prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim)}
    if case.model == "hunyuan-video15":  # the guider's CFG: both prompts, padded to the pipeline's lengths and masked
        text, byt5, _ = HUNYUAN_VIDEO15_TOKENS

        def mask(n: int, valid: int) -> torch.Tensor:
            return (torch.arange(n, device=device) < valid).long()[None]  # (1, n): valid tokens first

        both = {}
        for prefix in ("", "negative_"):
            both |= {f"{prefix}prompt_embeds": embeds(1, text, config.text_embed_dim),
                     f"{prefix}prompt_embeds_mask": mask(text, case.text_tokens),
                     f"{prefix}prompt_embeds_2": embeds(1, byt5, config.text_embed_2_dim),
                     f"{prefix}prompt_embeds_mask_2": mask(byt5, 32)}  # fmt: skip
        return both
    if case.model == "qwen-image":  # true CFG: the prompt and the negative prompt, each with its mask
        mask = torch.ones(1, case.text_tokens, dtype=torch.long, device=device)
        return {"prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim), "prompt_embeds_mask": mask,
                "negative_prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "negative_prompt_embeds_mask": mask}  # fmt: skip
    if case.model == "sd3":
        return {"prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "pooled_prompt_embeds": embeds(1, config.pooled_projection_dim),
                "negative_prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "negative_pooled_prompt_embeds": embeds(1, config.pooled_projection_dim)}  # fmt: skip
    return {"prompt_embeds": embeds(1, case.text_tokens, config.text_dim),
            "negative_prompt_embeds": embeds(1, case.text_tokens, config.text_dim)}  # fmt: skip
