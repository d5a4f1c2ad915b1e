"""Pipeline wrappers: bottleneck (high-low-high) sampling, reward-guided noise search, diffusion-LM generation."""

from .._pending import pending_class
from .bottleneck import BottleneckSampler, Stage
from .noise_search import NoiseSearch

DiffusionLMPipeline = pending_class("DiffusionLMPipeline", "diffusion-LM generation", 9)

__all__ = ["BottleneckSampler", "DiffusionLMPipeline", "NoiseSearch", "Stage"]
