"""Pipeline wrappers: bottleneck (high-low-high) sampling, reward-guided noise search, diffusion-LM generation."""

from .._pending import pending_class
from .bottleneck import BottleneckSampler, Stage

NoiseSearch = pending_class("NoiseSearch", "reward-guided initial-noise search (CARINOX)", 8)
DiffusionLMPipeline = pending_class("DiffusionLMPipeline", "diffusion-LM generation", 9)

__all__ = ["BottleneckSampler", "DiffusionLMPipeline", "NoiseSearch", "Stage"]
