"""Benchmarks that ship with the package, so that the installed `unbottle bench SUITE -o DIR` can run them.

`attention`: dense SDPA (cuDNN, flash), compiled FlexAttention and our Triton block-sparse kernel (issue #5).
`e2e`: whole-generation wall time, stock vs Bottleneck Sampling (and + sparse attention) on real-size pipelines (#6).
"""
