"""unbottle: training-free speed and alignment methods for diffusers and transformers pipelines.

Public API: sparse attention, bottleneck sampling, structured guidance, rewards and noise search, diffusion LMs, and
the model-family registry every feature reads.
"""

from . import rewards
from .attention_processors import (
    SparseAttentionConfig,
    SparseAttnProcessor,
    block_sparse_attention,
    calibrate_sparse_attention,
    disable_sparse_attention,
    enable_sparse_attention,
    load_head_patterns,
    save_head_patterns,
)
from .families import Family, register_family
from .guidance import disable_structured_guidance, enable_structured_guidance, noun_phrases
from .pipelines import BottleneckSampler, DiffusionLMPipeline, NoiseSearch, Stage
from .rewards import category_rewards, load_reward
from .version import __version__

__all__ = [
    "BottleneckSampler",
    "DiffusionLMPipeline",
    "Family",
    "NoiseSearch",
    "SparseAttentionConfig",
    "SparseAttnProcessor",
    "Stage",
    "__version__",
    "block_sparse_attention",
    "calibrate_sparse_attention",
    "category_rewards",
    "disable_sparse_attention",
    "disable_structured_guidance",
    "enable_sparse_attention",
    "enable_structured_guidance",
    "load_head_patterns",
    "load_reward",
    "noun_phrases",
    "register_family",
    "rewards",
    "save_head_patterns",
]
