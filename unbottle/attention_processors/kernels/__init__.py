"""Triton block-sparse attention kernels for Hopper, each with a PyTorch reference (issue #5)."""

from .block_sparse_fwd import block_sparse_attention_triton

__all__ = ["block_sparse_attention_triton"]
