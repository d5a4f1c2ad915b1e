"""CLIPScore with open_clip (Hessel et al. 2021, "CLIPScore"), the "clip" reward of ReNO (laion ViT-H-14).

Raw score: `100 * cos(image, text)`, the scale of torchmetrics' CLIPScore and of ReNO's CLIP loss
(`100 - logit_scale * cos` with logit_scale = 100 for the laion models), **without** the clamp at 0 of the published
metric (100 * max(cos, 0)): the two agree whenever cos >= 0, which holds for real CLIP models on real pairs, and the
unclamped form keeps a gradient everywhere. `unit = score / 100 = cos`, so `weight * (1 - unit)` is ReNO's CLIP loss
divided by 100 (ReNO's lambda 0.01 is weight 1 here).

Weights: `path` = a local open_clip checkpoint file, or an open_clip hub id "hf-hub:owner/name" (downloaded); with
`path=None` the (model_name, pretrained) weights must already be in the local hub cache (default ViT-H-14 /
laion2B-s32B-b79K, hub laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .openclip import OpenClipModel, build_open_clip, open_clip_weights, quick_gelu_of
from .patch_embedding import patch_embeddings_as_matmuls
from .reward import EmbeddingReward

MODEL_NAME = "ViT-H-14"
PRETRAINED = "laion2B-s32B-b79K"


class OpenClipReward(EmbeddingReward):
    """`scale * cos` of an open_clip model's normalized image and text embeddings (CLIPScore, HPSv2)."""

    def __init__(self, clip: OpenClipModel) -> None:
        super().__init__(clip.transform)
        self.model = clip.model
        patch_embeddings_as_matmuls(self.model)  # cheap pixel gradients (see patch_embedding.py)
        self.tokenizer = clip.tokenizer
        self.freeze()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)  # (B, D)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)  # (N, context_length)
        return self.model.encode_text(tokens)  # (N, D)


class CLIPScoreReward(OpenClipReward):
    """CLIPScore (Hessel et al. 2021): raw `100 * cos` (unclamped), unit = cos (ReNO's CLIP loss / 100)."""

    name = "clip"
    scale = 100.0

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """100·cos → cos (ReNO: loss 100 − 100·cos ∝ 1 − unit)."""
        return scores / 100.0


def load_clip(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    model_name: str = MODEL_NAME,
    pretrained: str | None = PRETRAINED,
    quick_gelu: bool | None = None,
    cache_dir: str | Path | None = None,
    grad_checkpointing: bool = False,
) -> CLIPScoreReward:
    """Load the "clip" reward: CLIPScore (Hessel et al. 2021) with open_clip, ReNO's laion ViT-H-14 by default.

    path: local checkpoint file, or "hf-hub:owner/name" (downloads); None: the cached (model_name, pretrained)
    weights. quick_gelu: None = as open_clip's pretrained tag says (True for OpenAI weights).
    """
    name, weights = open_clip_weights("clip", path, model_name, pretrained, cache_dir)
    gelu = quick_gelu_of(model_name, pretrained) if quick_gelu is None else quick_gelu
    clip = build_open_clip(name, weights=weights, quick_gelu=gelu, device=device, dtype=dtype, reward="clip")
    if grad_checkpointing:
        clip.model.set_grad_checkpointing(True)
    return CLIPScoreReward(clip)
