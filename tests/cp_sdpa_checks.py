"""What tests/test_context_parallel_sdpa.py runs inside each gloo process (see cp_harness.py): tiny SD3, PixArt and
CogVideoX denoisers (their processors call scaled dot-product attention directly), the same seeded weights on every
rank, one forward in the process alone, one under Ulysses-2 through `--parallel`'s `enable_ulysses`, and one under the
family's plan without unbottle's Ulysses attention; each check returns numbers or messages the test compares."""

from __future__ import annotations

import diffusers
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.models._modeling_parallel import ContextParallelConfig

import unbottle
from unbottle.attention_processors.ulysses_sdpa import _UlyssesSDPA, remove_ulysses_attention
from unbottle.cli.parallel import World, enable_ulysses
from unbottle.families import parallel_plan


def sd3(heads: int = 2) -> torch.nn.Module:
    """2 joint blocks (the second one's text output unused), `heads` heads of 8."""
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=heads,
        joint_attention_dim=16, caption_projection_dim=8 * heads, pooled_projection_dim=16, out_channels=4,
    ).eval()  # fmt: skip


def sd3_inputs(text: int = 6) -> dict:
    """8×8 latents in 2×2 patches: 16 image tokens; `text` text tokens; a batch of 2."""
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(2, 4, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(2, text, 16, generator=g),
            "pooled_projections": torch.randn(2, 16, generator=g),
            "timestep": torch.tensor([500.0, 700.0])}  # fmt: skip


def pixart() -> torch.nn.Module:
    """2 blocks (self-attention, cross-attention to the text), 2 heads of 8."""
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=4, cross_attention_dim=16, caption_channels=16,
    ).eval()  # fmt: skip


def pixart_inputs(size: int = 8) -> dict:
    """size×size latents in 2×2 patches: 16 image tokens at 8; 5 text tokens, the last 2 masked out (the
    cross-attention's key mask, whole on every rank)."""
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(1, 4, size, size, generator=g),
            "encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0]]), "timestep": torch.tensor([500]),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}  # fmt: skip


def cogvideox() -> torch.nn.Module:
    """2 blocks with RoPE on the video tokens, 2 heads of 8."""
    torch.manual_seed(0)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        use_rotary_positional_embeddings=True,
    ).eval()  # fmt: skip


def cogvideox_inputs(text: int = 6) -> dict:
    """2 latent frames of 8×8 in 2×2 patches: 32 video tokens; `text` text tokens; random RoPE tables (cos, sin)
    (32, 8), so a video token paired with another token's row would show; a batch of 2."""
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(2, 2, 4, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(2, text, 16, generator=g), "timestep": torch.tensor([500, 700]),
            "image_rotary_emb": (torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g))}  # fmt: skip


MODELS = {"SD3": (sd3, sd3_inputs), "PixArt": (pixart, pixart_inputs), "CogVideoX": (cogvideox, cogvideox_inputs)}


def forward(model: torch.nn.Module, name: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**MODELS[name][1](), return_dict=False)[0]


class Pipe:
    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer


def _error(model: torch.nn.Module, name: str) -> str:
    try:
        forward(model, name)
    except ValueError as e:
        return str(e)
    return "no error"


def checks(rank: int, folder: str) -> dict:
    """Per family: max |Ulysses-2 − one process| through `enable_ulysses`, the same without unbottle's Ulysses
    attention (the plan alone), the output's shape; then the refusals (a self-attention mask, heads, sparse
    attention)."""
    result = {}
    for name, (build, _) in MODELS.items():
        alone = forward(build(), name)
        split = build()
        enable_ulysses(Pipe(split), World(2, rank, rank))
        bare = build()
        plan = parallel_plan(bare)
        remove_ulysses_attention(bare)  # the plan alone: each rank attends to its own tokens
        bare.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2), cp_plan=plan)
        out = forward(split, name)
        result[name] = {"ulysses": (out - alone).abs().max(), "without": (forward(bare, name) - alone).abs().max(),
                        "shape": tuple(out.shape), "alone shape": tuple(alone.shape)}  # fmt: skip
    masked = pixart()
    enable_ulysses(Pipe(masked), World(2, rank, rank))
    try:
        with torch.no_grad():
            masked(**pixart_inputs(), attention_mask=torch.ones(1, 16), return_dict=False)
        result["mask"] = "no error"
    except ValueError as e:
        result["mask"] = str(e)
    odd = sd3(heads=3)
    odd.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2), cp_plan=parallel_plan(odd))
    result["heads"] = _error(odd, "SD3")
    model = cogvideox()
    enable_ulysses(Pipe(model), World(2, rank, rank))
    config = unbottle.SparseAttentionConfig(density=0.5, block_size=8)
    try:
        unbottle.enable_sparse_attention(model, config)
        result["sparse"] = "no error"
    except ValueError as e:
        result["sparse"] = str(e)
    result["sparse left the processors"] = sorted({type(p).__name__ for p in model.attn_processors.values()})
    result["after the refusal"] = (forward(model, "CogVideoX") - forward(cogvideox(), "CogVideoX")).abs().max()
    return result | attention(rank)


def attention(rank: int) -> dict:
    """The Ulysses attention alone on q/k/v (2, 4, N, 8) shared by the ranks as diffusers shards them (tensor_split:
    N = 7 gives 4 + 3 tokens): max |its output − this rank's rows of one process's SDPA|, per N."""
    result = {}
    for n, even in ((8, True), (7, False), (11, False)):
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(2, 4, n, 8, generator=g) for _ in range(3))
        reference = F.scaled_dot_product_attention(q, k, v).tensor_split(2, dim=2)[rank]
        with _UlyssesSDPA("probe", 2, dist.group.WORLD, even=even):
            out = F.scaled_dot_product_attention(*(x.tensor_split(2, dim=2)[rank] for x in (q, k, v)))
        result[f"attention, {n} tokens"] = (out - reference).abs().max()
        result[f"attention shape, {n} tokens"] = tuple(out.shape)
    return result
