"""Triton block-sparse attention kernels for Hopper, each with a PyTorch reference (issue #5)."""
