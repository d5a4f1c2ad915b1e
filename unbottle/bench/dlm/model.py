"""The workload of the diffusion-LM benchmark: the LLaDA-8B shape (Nie et al., 2025) as a bidirectional
transformers `GemmaForCausalLM` with random weights, and the arithmetic of a SparseD generation (Wang et al., 2025):
which steps are dense, which computes the patterns, which reuse them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .options import DLMOptions

LAYERS = 32
MAX_POSITIONS = 131072  # ≥ 65,536 + gen_length; RoPE is computed on the fly, so the size costs nothing

# LLaDA-8B (GSAI-ML/LLaDA-8B-Instruct config.json) as GemmaConfig keywords
LLADA_8B: dict[str, Any] = dict(
    vocab_size=126464, hidden_size=4096, intermediate_size=12288, num_hidden_layers=LAYERS, num_attention_heads=32,
    num_key_value_heads=32, head_dim=128, hidden_act="silu", max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}, attention_bias=False, tie_word_embeddings=False,
    pad_token_id=126081, eos_token_id=126081, bos_token_id=None, use_cache=False, initializer_range=0.02,
    use_bidirectional_attention=True, is_causal=False,
)  # fmt: skip


def llada_config(layers: int = LAYERS, **overrides: Any) -> Any:
    """The LLaDA-8B shape (Nie et al., 2025) as a bidirectional sdpa `GemmaConfig`; `overrides` replace keywords."""
    from transformers import GemmaConfig

    kwargs = {**LLADA_8B, "num_hidden_layers": layers, **overrides}
    config = GemmaConfig(**kwargs)
    config._attn_implementation = "sdpa"
    return config


def parameter_count(config: Any) -> int:
    """Parameters of a `GemmaForCausalLM` from its config (LLaDA-8B: 8.02B): embeddings, layers, norm, LM head."""
    h, v, i, d = config.hidden_size, config.vocab_size, config.intermediate_size, config.head_dim
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    attention = h * d * (2 * heads + 2 * kv)  # q, k, v, o projections
    if config.attention_bias:
        attention += d * (heads + 2 * kv) + h
    layer = attention + 3 * h * i + 2 * h  # + gated MLP (gate, up, down) + two RMSNorms
    heads_out = 1 if config.tie_word_embeddings else 2  # input embedding (+ untied LM head)
    return heads_out * v * h + config.num_hidden_layers * layer + h


def build_model(config: Any, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight `GemmaForCausalLM` (LLaDA-8B-shaped, Nie et al. 2025) built directly on `device` in `dtype`."""
    from transformers import GemmaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = GemmaForCausalLM._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def schedule_counts(steps: int, full_steps: float) -> tuple[int, int, int]:
    """(dense, pattern, cached sparse) steps of a T-step SparseD generation (Wang et al. 2025), as the engine runs."""
    from ...attention_processors import SparseAttentionConfig

    n_dense = min(steps, SparseAttentionConfig(full_steps=full_steps).num_full_steps(steps))
    n_pattern = 1 if n_dense < steps else 0
    return n_dense, n_pattern, steps - n_dense - n_pattern


def composed_seconds(dense_s: float, pattern_s: float, sparse_s: float, steps: int, full_steps: float) -> float:
    """Seconds of a T-step SparseD generation (Wang et al. 2025) from its step times: n_dense·dense + pattern +
    n_sparse·sparse."""
    n_dense, n_pattern, n_sparse = schedule_counts(steps, full_steps)
    return n_dense * dense_s + n_pattern * pattern_s + n_sparse * sparse_s


def sparse_config(options: DLMOptions, density: float, pattern: str = "cached") -> Any:
    """SparseD's settings (Wang et al. 2025) as the engine's config: `pattern` at `density`, no reshape, the run's
    block size and dense fraction (SparseD's skip)."""
    from ...attention_processors import SparseAttentionConfig

    return SparseAttentionConfig(density=density, pattern=pattern, reshape=False, block_size=options.block_size,
                                 full_steps=options.full_steps)  # fmt: skip
