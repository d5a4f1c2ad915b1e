"""HPSv2.1 (Wu et al. 2023, "Human Preference Score v2"): open_clip ViT-H-14 fine-tuned on human preferences.

The model is the stock open_clip ViT-H-14 architecture with the state dict of `HPS_v2.1_compressed.pt`
(huggingface.co/xswu/HPSv2), loaded with `torch.load(weights_only=True)` (its "state_dict" entry when present); the
tokenizer is open_clip's own (`open_clip.get_tokenizer("ViT-H-14")`, shipped with open_clip: no file copying as the
hpsv2 package needs). Raw score: the official HPS, `cos` of the normalized image and text features (typically
0.19-0.33). `unit = 2 * cos`, CARINOX's normalization (its HPS loss is `1 - 2 * cos`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip import OpenClipReward
from .openclip import build_open_clip
from .weights import WeightsFile, read_state_dict, resolve_file

MODEL_NAME = "ViT-H-14"
WEIGHTS = WeightsFile("hps", "HPS_v2.1_compressed.pt", "xswu/HPSv2")


class HPSReward(OpenClipReward):
    """HPSv2.1 (Wu et al. 2023): raw `cos(image, text)`, unit = 2·cos (CARINOX's HPS loss is 1 − 2·cos)."""

    name = "hps"
    scale = 1.0

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """cos → 2·cos (CARINOX)."""
        return 2.0 * scores


def load_hps(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    model_name: str = MODEL_NAME,
    cache_dir: str | Path | None = None,
    grad_checkpointing: bool = False,
) -> HPSReward:
    """Load the "hps" reward: HPSv2.1 (Wu et al. 2023) on open_clip ViT-H-14, as ReNO and CARINOX use it.

    path: the local HPS_v2.1_compressed.pt, or "hf-hub:xswu/HPSv2" (downloads); None: the file from the local hub
    cache, never downloaded. model_name: the open_clip architecture the state dict fits (tests use a tiny one).
    """
    file = resolve_file(path, WEIGHTS, cache_dir)  # before building: a missing file fails fast
    clip = build_open_clip(
        model_name, state_dict=read_state_dict(file, "hps"), device=device, dtype=dtype, reward="hps"
    )
    if grad_checkpointing:
        clip.model.set_grad_checkpointing(True)  # CARINOX runs HPS with gradient checkpointing
    return HPSReward(clip)
