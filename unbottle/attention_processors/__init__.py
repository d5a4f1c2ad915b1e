"""Sparse attention: Re-ttention statistical reshape and SparseD cached per-head block patterns, for every family.

One engine (engine.py: schedule × pattern × reshape) behind two fronts: diffusers processors and hooks
(processor.py, state.py, attach.py) and transformers' attention interface (transformers_attention.py, dlm_state.py).
"""

from .block_sparse import block_sparse_attention
from .calibrate import calibrate_sparse_attention
from .config import SparseAttentionConfig
from .dlm_state import dlm_step_callback, notify_dlm_generation_start, notify_dlm_step
from .enable import disable_sparse_attention, enable_sparse_attention
from .handle import PipelineSparseAttention, SparseAttentionHandle
from .pattern_files import load_head_patterns, save_head_patterns
from .processor import SparseAttnProcessor
from .transformers_attention import ATTENTION_NAME, sparse_attention_forward
from .ulysses_sdpa import ready_ulysses_attention, remove_ulysses_attention  # registers with the family plans

__all__ = [
    "ATTENTION_NAME",
    "PipelineSparseAttention",
    "SparseAttentionConfig",
    "SparseAttentionHandle",
    "SparseAttnProcessor",
    "block_sparse_attention",
    "calibrate_sparse_attention",
    "disable_sparse_attention",
    "dlm_step_callback",
    "enable_sparse_attention",
    "load_head_patterns",
    "notify_dlm_generation_start",
    "notify_dlm_step",
    "ready_ulysses_attention",
    "remove_ulysses_attention",
    "save_head_patterns",
    "sparse_attention_forward",
]
