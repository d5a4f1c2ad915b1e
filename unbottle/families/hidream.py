"""HiDream-I1 (HiDreamImageTransformer2DModel, HiDreamImagePipeline): joint attention, image patches first, then T5
and Llama text tokens. Sparse attention and bottleneck sampling (each stage's size set through the pipeline's
default_sample_size, which every call's area is rescaled to); no noise optimization (see the record)."""

from __future__ import annotations

import math

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_vae
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    hidden = bound["hidden_states"]
    if hidden.dim() != 4 or hidden.shape[-2] != hidden.shape[-1] or bound.get("hidden_states_masks") is not None:
        return TokenLayout()  # non-square latents are padded to the model's max sequence: 1-D
    # text after the image: T5, the last Llama layer, and the block's own Llama layer (each of the Llama length)
    t5 = int(bound["encoder_hidden_states_t5"].shape[1])
    llama = bound["encoder_hidden_states_llama3"]
    llama_len = int((llama[0] if isinstance(llama, (list, tuple)) else llama).shape[-2])
    return TokenLayout(image_grid(model, bound), t5 + 2 * llama_len, text_first=False)


def _stage_size(pipe: object, height: int, width: int) -> dict[str, object]:
    """The default_sample_size under which the pipeline renders height × width as asked: it rescales every call to
    the area (default_sample_size × VAE factor)², keeping the aspect ratio, then rounds down to its size multiple."""
    f, area = image_vae(pipe), height * width
    side = math.isqrt(area)
    if side * side == area and side % f == 0:
        return {"default_sample_size": side // f}  # exactly the call's area: the pipeline's scale is 1
    # a hair above the area: the scale lands in (1, 1 + 1/(4·max side)], which the rounding down takes back
    return {"default_sample_size": math.sqrt(area) * (1 + 1 / (4 * max(height, width))) / f}


HIDREAM_IMAGE = Family(
    "HiDreamImage",
    model_classes=("HiDreamImageTransformer2DModel",),
    pipeline_classes=("HiDreamImagePipeline",),
    attention=SelfAttention(r"^(double|single)_stream_blocks\.\d+\.block\.attn1$", _layout,
                             timestep_arg="timesteps"),
    # latents (B, C, h, w) unpacked (the transformer patchifies); each bottleneck stage, the last one too, renders at
    # its planned size under its own default_sample_size (a stock call rescales any size to the default area)
    latents=Latents(video=False, vae_factor=image_vae, stage_attributes=_stage_size),
    prompt=PromptEncoding(("prompt_embeds_t5", "negative_prompt_embeds_t5", "prompt_embeds_llama3",
                           "negative_prompt_embeds_llama3", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")),
    flow_matching=True,
    stock_steps=50,
    # no noise search: the MoE feed-forwards' routed experts run under torch.no_grad (diffusers' `moe_infer`), so the
    # pipeline's output has no gradient through them and ∂image/∂noise would be wrong
    # no structured guidance: joint attention over image and text tokens, no cross-attention to text
)
