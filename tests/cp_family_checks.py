"""What tests/test_context_parallel_families.py runs inside each gloo process (see cp_harness.py): tiny denoisers of
the families whose context-parallel plan is their family record's (diffusers gives their classes none), the same
seeded weights on every rank, called step after step through the step clock, once in the process alone and once under
Ulysses-2, stock and with sparse attention; each check returns numbers the test compares."""

from __future__ import annotations

from collections.abc import Callable

import diffusers
import torch
from cp_checks import TIMESTEPS, config, parallel

import unbottle

PATTERNS = ("cached", "dynamic", "window")


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def wan_vace() -> torch.nn.Module:
    """Wan's tiny shape with 2 control blocks (one per main block), 4 heads."""
    torch.manual_seed(0)
    return diffusers.WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=16, ffn_dim=16, num_layers=2, rope_max_seq_len=32, vace_layers=[0, 1], vace_in_channels=4,
    ).eval()  # fmt: skip


def wan_vace_inputs() -> dict:
    """2 frames × 8×8 latents → 2×4×4 = 32 video tokens (4 blocks of 8) and as many control tokens; 6 text tokens."""
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": _randn(g, 1, 4, 2, 8, 8), "encoder_hidden_states": _randn(g, 1, 6, 16),
            "control_hidden_states": _randn(g, 1, 4, 2, 8, 8)}  # fmt: skip


def _joint(cls: type, **config: object) -> torch.nn.Module:
    """A FLUX.1-shaped joint text-image transformer: 1 double and 1 single block, 4 heads of 16."""
    torch.manual_seed(0)
    return cls(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
               num_attention_heads=4, joint_attention_dim=16, axes_dims_rope=[4, 4, 8], **config).eval()  # fmt: skip


def bria() -> torch.nn.Module:
    return _joint(diffusers.BriaTransformer2DModel)


def longcat_image() -> torch.nn.Module:
    return _joint(diffusers.LongCatImageTransformer2DModel, pooled_projection_dim=16)


def ovis_image() -> torch.nn.Module:
    return _joint(diffusers.OvisImageTransformer2DModel, out_channels=4)


def joint_inputs(offset: int = 0) -> dict:
    """8 text + 8×8 image tokens (9 blocks of 8, text and image each sharded in two); image rows and columns start at
    `offset` in the position ids (LongCat-Image counts them past the text)."""
    g = torch.Generator().manual_seed(1)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    img_ids = torch.stack([torch.zeros(64), rows.flatten() + offset, cols.flatten() + offset], -1).float()
    txt_ids = torch.zeros(8, 3)
    if offset:
        txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(8.0)
    return {"hidden_states": _randn(g, 1, 64, 4), "encoder_hidden_states": _randn(g, 1, 8, 16), "img_ids": img_ids,
            "txt_ids": txt_ids}  # fmt: skip


def kandinsky5(visual_blocks: int = 2) -> torch.nn.Module:
    """2 text and `visual_blocks` visual blocks, 4 heads of 8; the modulations (zero at init: every gate shut)
    opened."""
    torch.manual_seed(0)
    model = diffusers.Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=32, num_text_blocks=2, num_visual_blocks=visual_blocks, axes_dims=(2, 2, 4),
    )  # fmt: skip
    for module in model.modules():
        if type(module).__name__ == "Kandinsky5Modulation":
            torch.nn.init.normal_(module.out_layer.weight, std=0.2)
            torch.nn.init.normal_(module.out_layer.bias, std=0.2)
    return model.eval()


def kandinsky5_inputs() -> dict:
    """(B, F, H, W, C) = 2×8×8 latents in 1×2×2 patches: 32 visual tokens (4 blocks of 8); 5 text tokens."""
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": _randn(g, 1, 2, 8, 8, 4), "encoder_hidden_states": _randn(g, 1, 5, 16),
            "pooled_projections": _randn(g, 1, 8), "text_rope_pos": torch.arange(5),
            "visual_rope_pos": (torch.arange(2), torch.arange(4), torch.arange(4))}  # fmt: skip


def z_image() -> torch.nn.Module:
    """2 refiner and 2 main layers, 4 heads of 8."""
    torch.manual_seed(0)
    return diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=2, n_heads=4,
        n_kv_heads=4, cap_feat_dim=16, axes_dims=[2, 2, 4], axes_lens=[128, 32, 32],
    ).eval()  # fmt: skip


def z_image_inputs() -> dict:
    """16×16 latents in 2×2 patches: 64 image tokens (8 blocks of 8), then 8 caption tokens padded to 32."""
    g = torch.Generator().manual_seed(1)
    return {"x": [_randn(g, 4, 1, 16, 16)], "cap_feats": [_randn(g, 8, 16)]}


def z_image_masked_inputs() -> dict:
    """Two samples whose captions (8 and 40 tokens) pad to 32 and 64: the shorter sequence's last 32 tokens masked."""
    g = torch.Generator().manual_seed(1)
    latents = [_randn(g, 4, 1, 16, 16), _randn(g, 4, 1, 16, 16)]
    return {"x": latents, "cap_feats": [_randn(g, 8, 16), _randn(g, 40, 16)]}


def _timestep(scale: float) -> Callable[[float], dict]:
    return lambda t: {"timestep": torch.tensor([t * scale])}


MODELS = {  # builder, inputs, the timestep arguments of a forward at a falling timestep t in [0, 1]
    "Wan-VACE": (wan_vace, wan_vace_inputs, _timestep(1000.0)),
    "Kandinsky5": (kandinsky5, kandinsky5_inputs, _timestep(1000.0)),
    "Kandinsky5, one block": (lambda: kandinsky5(visual_blocks=1), kandinsky5_inputs, _timestep(1000.0)),
    "Bria": (bria, joint_inputs, _timestep(1000.0)),
    "LongCat-Image": (longcat_image, lambda: joint_inputs(offset=8), _timestep(1.0)),
    "OvisImage": (ovis_image, joint_inputs, _timestep(1.0)),
    "ZImage": (z_image, z_image_inputs, lambda t: {"t": torch.tensor([1.0 - t])}),  # t rises: 1 − σ
    "ZImage, masked": (z_image, z_image_masked_inputs, lambda t: {"t": torch.tensor([1.0 - t] * 2)}),
}


def denoise(model: torch.nn.Module, name: str, **changed: torch.Tensor) -> torch.Tensor:
    """The model's outputs over TIMESTEPS, stacked (steps, ...); `changed` replaces inputs."""
    inputs, step = {**MODELS[name][1](), **changed}, MODELS[name][2]
    outs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            out = model(**inputs, **step(t), return_dict=False)
            out = out[0] if isinstance(out, tuple) else out  # Kandinsky 5 returns the tensor itself
            outs.append(torch.stack(out) if isinstance(out, list) else out)  # Z-Image: one sample a list item
    return torch.stack(outs)


def equalities(rank: int, folder: str, name: str) -> dict:
    """Max |Ulysses-2 − one process| of the stock model and of sparse attention with each pattern; how far each
    pattern's sparse steps are from dense ones; the heads each rank cached per pattern; the output's shape."""
    build = MODELS[name][0]
    dense, split = denoise(build(), name), denoise(parallel(build(), ulysses_degree=2), name)
    result = {"stock": (split - dense).abs().max(), "shape": tuple(split.shape)}
    if name == "Wan-VACE":  # the control stream reaches the output: its sharding is under test too
        zeros = torch.zeros_like(wan_vace_inputs()["control_hidden_states"])
        result["control vs none"] = (denoise(build(), name, control_hidden_states=zeros) - dense).abs().max()
    for pattern in PATTERNS:
        alone, split = build(), parallel(build(), ulysses_degree=2)
        handles = [unbottle.enable_sparse_attention(m, config(pattern)) for m in (alone, split)]
        reference = denoise(alone, name)
        result[pattern] = (denoise(split, name) - reference).abs().max()
        result[f"{pattern} vs dense"] = (reference - dense).abs().max()  # sparse steps really ran sparse
        result[f"{pattern} heads"] = sorted({t.shape[1] for t, _ in handles[1].store.patterns.values()})
    return result


def planned(rank: int, folder: str) -> dict:
    """Every family's equalities in one spawn (the processes' start dominates the cost, not the tiny models)."""
    return {name: equalities(rank, folder, name) for name in MODELS}
