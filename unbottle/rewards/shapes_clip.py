"""shapes-clip: the project's own small open_clip model of the shapes world, the offline default reward (CLIPScore).

Weights ship inside the package (`unbottle/assets/shapes/shapes_clip.safetensors`), so `load_reward("shapes-clip")`
works with no network; model, differentiable preprocessing and tokenizer come from `unbottle.shapes.clip`.
Raw score: `cos(image, caption)` (CLIPScore's core; on held-out rendered scenes about 0.85 for the true caption and
about 0 for another scene's). `unit = (cos + 1) / 2`: the cosine's full range [-1, 1] mapped onto [0, 1] (this model's
cosines do reach -0.5, so `unit = cos` as for the large CLIPs would leave [0, 1]).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .patch_embedding import patch_embeddings_as_matmuls
from .reward import EmbeddingReward
from .weights import WeightsFile, local_file

WEIGHTS = WeightsFile(
    "shapes-clip", "shapes_clip.safetensors", source="save_shapes_clip / examples/shapes/train_clip.py"
)


class ShapesClipReward(EmbeddingReward):
    """shapes-clip CLIPScore: raw `cos(image, caption)` of the shapes open_clip model, unit = (cos + 1) / 2."""

    name = "shapes-clip"
    scale = 1.0

    def __init__(
        self,
        model: torch.nn.Module,
        transform: Callable[[torch.Tensor], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
    ) -> None:
        super().__init__(transform)
        self.model = model
        patch_embeddings_as_matmuls(self.model)  # cheap pixel gradients (see patch_embedding.py)
        self.tokenizer = tokenizer
        self.freeze()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)  # (B, 128)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))  # (N, 128)

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """cos → (cos + 1) / 2 ∈ [0, 1] (CARINOX-style r~)."""
        return (scores + 1.0) / 2.0


def load_shapes_clip_reward(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    pretrained: bool = True,
) -> ShapesClipReward:
    """Load the "shapes-clip" reward (CLIPScore on the shapes open_clip model): the shipped weights, or `path`.

    pretrained=False: a randomly initialized model (tests).
    """
    from unbottle.shapes.clip import load_shapes_clip

    if path is not None:
        path = local_file(path, WEIGHTS)
    model, transform, tokenizer = load_shapes_clip(path, device=device or "cpu", pretrained=pretrained)
    if dtype is not None:
        model = model.to(dtype)
    return ShapesClipReward(model, transform, tokenizer)
