"""Pipeline wrappers: bottleneck (high-low-high) sampling, reward-guided noise search, diffusion-LM generation."""

from .bottleneck import BottleneckSampler, Stage
from .diffusion_lm import DiffusionLMPipeline
from .noise_search import NoiseSearch

__all__ = ["BottleneckSampler", "DiffusionLMPipeline", "NoiseSearch", "Stage"]
