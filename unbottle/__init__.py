"""unbottle: training-free speed and alignment methods for diffusers and transformers pipelines.

Public API (names fixed by DESIGN.md). Features whose issue has not landed are importable stand-ins that raise
`NotImplementedError` naming the issue.
"""

from . import rewards
from ._pending import PendingFeatureError
from .attention_processors import (
    SparseAttentionConfig,
    SparseAttnProcessor,
    block_sparse_attention,
    disable_sparse_attention,
    enable_sparse_attention,
    load_head_patterns,
    save_head_patterns,
)
from .guidance import disable_structured_guidance, enable_structured_guidance, noun_phrases
from .pipelines import BottleneckSampler, DiffusionLMPipeline, NoiseSearch, Stage
from .rewards import category_rewards, load_reward

__version__ = "0.1.0"

__all__ = [
    "BottleneckSampler",
    "DiffusionLMPipeline",
    "NoiseSearch",
    "PendingFeatureError",
    "SparseAttentionConfig",
    "SparseAttnProcessor",
    "Stage",
    "__version__",
    "block_sparse_attention",
    "category_rewards",
    "disable_sparse_attention",
    "disable_structured_guidance",
    "enable_sparse_attention",
    "enable_structured_guidance",
    "load_head_patterns",
    "load_reward",
    "noun_phrases",
    "rewards",
    "save_head_patterns",
]
