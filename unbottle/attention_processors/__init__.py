"""Sparse attention: Re-ttention statistical reshape and SparseD cached per-head block patterns, for every family."""

from .adapters import ADAPTERS, supported_families
from .block_sparse import block_sparse_attention
from .config import SparseAttentionConfig
from .enable import SparseAttentionHandle, disable_sparse_attention, enable_sparse_attention
from .pattern_files import load_head_patterns, save_head_patterns
from .processor import SparseAttnProcessor

__all__ = [
    "ADAPTERS",
    "SparseAttentionConfig",
    "SparseAttentionHandle",
    "SparseAttnProcessor",
    "block_sparse_attention",
    "disable_sparse_attention",
    "enable_sparse_attention",
    "load_head_patterns",
    "save_head_patterns",
    "supported_families",
]
