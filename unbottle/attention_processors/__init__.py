"""Sparse attention: Re-ttention statistical reshape and SparseD cached per-head block patterns (issue #3)."""

from .._pending import pending_class, pending_function

_FEATURE = "sparse attention (Re-ttention reshape + SparseD cached head patterns)"

SparseAttentionConfig = pending_class("SparseAttentionConfig", _FEATURE, 3)
SparseAttnProcessor = pending_class("SparseAttnProcessor", _FEATURE, 3)
enable_sparse_attention = pending_function("enable_sparse_attention", _FEATURE, 3)
disable_sparse_attention = pending_function("disable_sparse_attention", _FEATURE, 3)
save_head_patterns = pending_function("save_head_patterns", _FEATURE, 3)
load_head_patterns = pending_function("load_head_patterns", _FEATURE, 3)
block_sparse_attention = pending_function("block_sparse_attention", "block-sparse attention over a BlockMask", 3)

__all__ = [
    "SparseAttentionConfig",
    "SparseAttnProcessor",
    "block_sparse_attention",
    "disable_sparse_attention",
    "enable_sparse_attention",
    "load_head_patterns",
    "save_head_patterns",
]
