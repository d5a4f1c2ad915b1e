"""LAION aesthetic predictor (Schuhmann et al., improved-aesthetic-predictor; the "aesthetic" reward of ReNO).

A linear MLP head (768 → 1024 → 128 → 64 → 16 → 1, dropouts between, no activations) on the L2-normalized CLIP
ViT-L/14 image embedding (open_clip "ViT-L-14" with the OpenAI weights, QuickGELU). The prompt is ignored. Raw score:
the predicted rating on a 1-10 scale (about 5-6 for typical generations). `unit = score / 10`: ReNO's aesthetic loss
is `10 - score`.

`path`: the head's state dict (the predictor's released `sac+logos+ava1-l14-linearMSE.pth`, or a .safetensors with
the same keys), or "hf-hub:owner/name/file". The CLIP weights: `clip_path` (a local open_clip checkpoint or
"hf-hub:..."), else (model_name, pretrained) from the local hub cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .openclip import OpenClipModel, build_open_clip, open_clip_weights, quick_gelu_of
from .patch_embedding import patch_embeddings_as_matmuls
from .reward import Reward
from .weights import WeightsFile, read_state_dict, resolve_file

MODEL_NAME = "ViT-L-14"
PRETRAINED = "openai"
WEIGHTS = WeightsFile(
    "aesthetic",
    "sac+logos+ava1-l14-linearMSE.pth",
    source="github.com/christophschuhmann/improved-aesthetic-predictor",
)


class AestheticHead(torch.nn.Module):
    """The aesthetic predictor's MLP; `layers` indices match the published state dict (Linear at 0, 2, 4, 6, 7)."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(embed_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)  # (B, D) → (B,)


class AestheticReward(Reward):
    """LAION aesthetic score (improved-aesthetic-predictor): MLP on the normalized CLIP embedding; unit = score/10."""

    name = "aesthetic"

    def __init__(self, clip: OpenClipModel, head: AestheticHead) -> None:
        super().__init__()
        self.model = clip.model
        patch_embeddings_as_matmuls(self.model)  # cheap pixel gradients (see patch_embedding.py)
        self.transform = clip.transform
        self.head = head
        self.freeze()

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | str = "") -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B,) float32 aesthetic rating (prompts are checked but not used)."""
        x = self.transform(self.pixels(images))  # (B, 3, 224, 224) normalized
        self.prompt_list(prompts, x.shape[0])
        embedding = F.normalize(self.model.encode_image(x.to(self.dtype)).float(), dim=-1)  # (B, 768)
        return self.head(embedding.to(self.head.layers[0].weight.dtype)).float()  # (B,)

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """Rating (1-10) → rating / 10 (ReNO's aesthetic loss is 10 − score)."""
        return scores / 10.0


def load_aesthetic(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    clip_path: str | Path | None = None,
    model_name: str = MODEL_NAME,
    pretrained: str | None = PRETRAINED,
    quick_gelu: bool | None = None,
    cache_dir: str | Path | None = None,
) -> AestheticReward:
    """Load the "aesthetic" reward: the LAION aesthetic predictor (improved-aesthetic-predictor) on CLIP ViT-L/14."""
    head_file = resolve_file(path, WEIGHTS, cache_dir)  # the head first: a missing file fails before CLIP is built
    name, weights = open_clip_weights("aesthetic", clip_path, model_name, pretrained, cache_dir)
    gelu = quick_gelu_of(model_name, pretrained) if quick_gelu is None else quick_gelu
    clip = build_open_clip(name, weights=weights, quick_gelu=gelu, device=device, dtype=dtype, reward="aesthetic")
    state = read_state_dict(head_file, "aesthetic")
    embed_dim = int(state["layers.0.weight"].shape[1]) if "layers.0.weight" in state else 768
    head = AestheticHead(embed_dim)
    head.load_state_dict(state)  # strict: the published keys
    head = head.to(device=device or "cpu", dtype=dtype)
    return AestheticReward(clip, head)
