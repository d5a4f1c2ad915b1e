"""Sparse attention: Re-ttention statistical reshape and SparseD cached per-head block patterns, for every family."""

from .adapters import ADAPTERS, supported_families
from .block_sparse import block_sparse_attention
from .config import SparseAttentionConfig
from .dlm_state import dlm_step_callback, notify_dlm_generation_start, notify_dlm_step
from .enable import SparseAttentionHandle, disable_sparse_attention, enable_sparse_attention
from .pattern_files import load_head_patterns, save_head_patterns
from .processor import SparseAttnProcessor
from .transformers_attention import ATTENTION_NAME, DLMSparseAttentionHandle, sparse_attention_forward

__all__ = [
    "ADAPTERS",
    "ATTENTION_NAME",
    "DLMSparseAttentionHandle",
    "SparseAttentionConfig",
    "SparseAttentionHandle",
    "SparseAttnProcessor",
    "block_sparse_attention",
    "disable_sparse_attention",
    "dlm_step_callback",
    "enable_sparse_attention",
    "load_head_patterns",
    "notify_dlm_generation_start",
    "notify_dlm_step",
    "save_head_patterns",
    "sparse_attention_forward",
    "supported_families",
]
