"""Differentiable image preprocessing for reward models: torch ops only, so gradients reach the pixels.

Every reward here (CLIP / open_clip, HPSv2, PickScore, ImageReward's BLIP, the LAION aesthetic predictor) was trained
on the same eval transform: resize the shorter side to the model's input size (bicubic), centre-crop, normalize with
the OpenAI CLIP mean and std (ReNO and CARINOX feed their rewards this way). This module does those steps on a
(B, 3, H, W) tensor in [0, 1] with torch's antialiased bicubic in place of PIL's, which keeps the result within about
one grey level of the PIL path while staying differentiable (no PIL / numpy round trip).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN / _STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("shortest", "squash")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resized_size(h: int, w: int, target: tuple[int, int], shortest_edge: int | None) -> tuple[int, int]:
    """(new_h, new_w) after resizing so the image covers `target`, keeping the aspect ratio (torchvision's rule)."""
    th, tw = target
    if shortest_edge is not None or th == tw:
        # torchvision Resize(int): the shorter side becomes `edge`, the longer int(edge * long / short)
        edge = th if shortest_edge is None else shortest_edge
        return (edge, int(edge * w / h)) if h <= w else (int(edge * h / w), edge)
    scale = max(th / h, tw / w)  # non-square target: open_clip's ResizeKeepRatio (shorter-edge match)
    return max(th, round(h * scale)), max(tw, round(w * scale))


def preprocess(
    images: torch.Tensor,
    size: int | tuple[int, int] = 224,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    shortest_edge: int | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] → (B, 3, h, w) normalized model input, the CLIP eval transform in torch (ReNO).

    resize_mode "shortest": resize so the image covers `size` keeping the aspect ratio (or so its shorter side is
    `shortest_edge`, when given), then centre-crop `size` (the CLIP / open_clip / BLIP / PickScore transform);
    "squash": resize straight to `size`. The resized image is clamped to [0, 1] (PIL stores it as uint8: no bicubic
    overshoot). An image already of the target size is only normalized. Computed in the input's dtype.
    """
    if images.ndim == 3:
        images = images[None]  # (1, 3, H, W)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(images.shape)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    target = _pair(size)
    h, w = images.shape[-2:]
    new = target if resize_mode == "squash" else _resized_size(h, w, target, shortest_edge)
    if new != (h, w):
        images = F.interpolate(images, size=new, mode=interpolation, align_corners=False, antialias=True)
        images = images.clamp(0.0, 1.0)  # (B, 3, new_h, new_w)
    if new != target:
        top, left = int(round((new[0] - target[0]) / 2.0)), int(round((new[1] - target[1]) / 2.0))
        images = images[..., top : top + target[0], left : left + target[1]]  # (B, 3, h, w): centre crop
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


@dataclass(frozen=True)
class ImagePreprocess:
    """A reward model's input transform (size, mean/std, interpolation, resize mode), callable on images (ReNO)."""

    size: int | tuple[int, int] = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    shortest_edge: int | None = None  # "shortest" mode: resize the shorter side to this first (default: to cover size)

    def __post_init__(self) -> None:
        h, w = _pair(self.size)
        if h < 1 or w < 1:
            raise ValueError(f"size must be positive, got {self.size!r}")
        for field_name in ("mean", "std"):
            value = getattr(self, field_name)
            if len(value) != 3:
                raise ValueError(f"{field_name} must have 3 values (RGB), got {value!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.shortest_edge is not None and self.shortest_edge < max(h, w):
            raise ValueError(f"shortest_edge must be >= the crop size {max(h, w)}, got {self.shortest_edge!r}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess(
            images, self.size, self.mean, self.std, self.interpolation, self.resize_mode, self.shortest_edge
        )
