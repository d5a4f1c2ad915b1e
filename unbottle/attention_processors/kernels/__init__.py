"""Triton block-sparse attention kernels for Hopper, each with a PyTorch reference."""

from .block_sparse_fwd import block_sparse_attention_triton

__all__ = ["block_sparse_attention_triton"]
