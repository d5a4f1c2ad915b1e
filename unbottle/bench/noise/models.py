"""The real-size, random-weight models of the noise-search benchmark: an SD-Turbo-shaped StableDiffusionPipeline
(SD 2.1 UNet, SD VAE, OpenCLIP-H-sized text encoder, SD-Turbo's scheduler) and two ViT-H-14 rewards (HPS and
CLIPScore around open_clip models), built from configs: nothing is downloaded."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..measure import cast_like_from_pretrained

# ---- real-size configs (SD-Turbo = SD 2.1 shapes) -----------------------------------------------------------------
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, act_fn="silu",
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)  # fmt: skip
SD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)  # fmt: skip
OPENCLIP_H_TEXT = dict(  # CLIPTextConfig keywords; bos/eos/pad ids are those of the offline tokenizer
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=1024, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0,
    eos_token_id=1, pad_token_id=1,
)  # fmt: skip
SD_TURBO_SCHEDULER = dict(  # EulerDiscreteScheduler, SD-Turbo's scheduler_config.json
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing", interpolation_type="linear",
    use_karras_sigmas=False,
)  # fmt: skip
REWARD_MODEL = "ViT-H-14"  # HPSv2.1's and ReNO's CLIP backbone


@dataclass(frozen=True)
class Models:
    """The configs a run builds (SD-Turbo-shaped pipeline, open_clip rewards; CARINOX / ReNO); tests pass tiny ones."""

    unet: dict = field(default_factory=lambda: dict(SD21_UNET))
    vae: dict = field(default_factory=lambda: dict(SD_VAE))
    text_encoder: dict = field(default_factory=lambda: dict(OPENCLIP_H_TEXT))
    scheduler: dict = field(default_factory=lambda: dict(SD_TURBO_SCHEDULER))
    reward_model: str = REWARD_MODEL  # an open_clip architecture name
    reward_config: dict | None = None  # an open_clip model config registered under reward_model (tests: tiny)


def register_open_clip(name: str, config: dict) -> None:
    """Register an open_clip model config under `name` (a tiny reward backbone for tests; ReNO's rewards use real)."""
    import open_clip

    if open_clip.get_model_config(name) == json.loads(json.dumps(config)):
        return
    with tempfile.TemporaryDirectory() as tmp:  # open_clip keeps what it read after the file is gone
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def parameter_count(module: torch.nn.Module) -> int:
    """The parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


def build_pipeline(models: Models, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight SD-Turbo-shaped StableDiffusionPipeline built on `device` from configs (ReNO's generator)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...testing import tiny_clip_tokenizer

    with torch.device(device):  # random init on the GPU: seconds instead of minutes of CPU init
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**models.unet)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**models.vae)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**models.text_encoder))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(model_max_length=77), unet=unet,
        scheduler=EulerDiscreteScheduler(**models.scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cast_like_from_pretrained(component, dtype)
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_rewards(models: Models, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    """{"hps": HPSReward, "clip": CLIPScoreReward} around random-weight open_clip models (HPSv2 / ReNO's CLIP)."""
    import open_clip

    from ...rewards.clip import CLIPScoreReward
    from ...rewards.hps import HPSReward
    from ...rewards.openclip import OpenClipModel, _quiet_open_clip, transform_of

    if models.reward_config is not None:
        register_open_clip(models.reward_model, models.reward_config)
    rewards = {}
    for i, (name, cls) in enumerate((("hps", HPSReward), ("clip", CLIPScoreReward))):
        torch.manual_seed(seed + 10 + i)
        with torch.device(device), _quiet_open_clip():
            model = open_clip.create_model(models.reward_model, pretrained=None, device=device)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        clip = OpenClipModel(model, open_clip.get_tokenizer(models.reward_model), transform_of(model))
        rewards[name] = cls(clip)
    return rewards
