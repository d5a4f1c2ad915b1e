"""Context-parallel plans from the family records, for families whose classes diffusers gives none: Ulysses-2 in two
gloo processes on the CPU (cp_harness.py) equals one process on tiny Wan-VACE, Kandinsky 5, Bria, LongCat-Image,
Ovis-Image and Z-Image denoisers, stock and under sparse attention with every pattern (one spawn; the checks are in
cp_family_checks.py). The families no plan can serve keep none, and `--parallel` says why."""

from __future__ import annotations

import cp_family_checks
import diffusers
import pytest
import torch
from cp_harness import spawn

from unbottle.cli.parallel import World, enable_ulysses
from unbottle.errors import RunError
from unbottle.families import parallel_plan, registered_families

TOLERANCE = 1e-5  # fp32, Ulysses-2 vs one process
SPARSE = 1e-4  # sparse steps change the output by more than this (they are not dense steps in disguise)
PATTERNS = ("cached", "dynamic", "window")
CASES = sorted(cp_family_checks.MODELS)
STEPS = len(cp_family_checks.TIMESTEPS)
SHAPES = {  # one process's output: what Ulysses-2 gathers back
    "Wan-VACE": (STEPS, 1, 4, 2, 8, 8), "Kandinsky5": (STEPS, 1, 2, 8, 8, 4),
    "Kandinsky5, one block": (STEPS, 1, 2, 8, 8, 4),
    "Bria": (STEPS, 1, 64, 4), "LongCat-Image": (STEPS, 1, 64, 4), "OvisImage": (STEPS, 1, 64, 4),
    "ZImage": (STEPS, 1, 4, 1, 16, 16), "ZImage, masked": (STEPS, 2, 4, 1, 16, 16),
}  # fmt: skip

PLANNED = {"Wan-VACE", "Kandinsky5", "Bria", "LongCat-Image", "OvisImage", "ZImage"}
SDPA_PLANNED = {"SD3", "PixArt", "CogVideoX"}  # SDPA-direct, planned with unbottle's Ulysses attention
SDPA_DIRECT = {  # their attention processors call scaled dot-product attention themselves
    "StableDiffusion", "SDXL", "ConsisID", "AuraFlow", "CogView4", "Lumina2",
    "HiDreamImage", "CogView3Plus", "DiT", "Allegro", "Latte", "EasyAnimate", "Cosmos",
}  # fmt: skip
UNSHARDABLE = {"HunyuanVideo", "HunyuanVideo-1.5", "HunyuanImage", "Chroma", "Wan-Animate"}  # dispatcher, no fit

SDPA_REASON = ("calls scaled dot-product attention directly, outside diffusers' context-parallel dispatcher, so under "
               "a plan each rank would attend to its own tokens only")  # fmt: skip
TEXT_MASK = ("its attention mask over the [video or image, text] tokens is built inside forward from the whole text "
             "mask after the text refiner, which needs the whole text, so no plan gives each rank the mask of its own "
             "text shard")  # fmt: skip
SQUARE_MASK = "builds a (query × key) mask, while diffusers' Ulysses attention gathers key masks (…, keys) only"


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    return spawn(cp_family_checks.planned)


@pytest.mark.parametrize("case", CASES)
def test_stock_ulysses_equals_one_process(runs, case):
    for r in runs:
        assert r[case]["stock"] <= TOLERANCE, (case, float(r[case]["stock"]))
        assert r[case]["shape"] == SHAPES[case]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("case", CASES)
def test_sparse_ulysses_equals_one_process(runs, case, pattern):
    for r in runs:
        assert r[case][pattern] <= TOLERANCE, (case, pattern, float(r[case][pattern]))
        assert r[case][f"{pattern} vs dense"] > SPARSE
    # each rank keeps patterns for its own 2 of the 4 heads ("window": one pattern for every head; "dynamic": none)
    expected = {"cached": [2], "dynamic": [], "window": [1]}[pattern]
    assert all(r[case][f"{pattern} heads"] == expected for r in runs)


def test_the_control_stream_reaches_the_output(runs):
    # Wan-VACE's hints move the output: their sharding (the control blocks' plan entry) is under test too
    assert all(r["Wan-VACE"]["control vs none"] > 0.1 for r in runs)


def test_every_family_without_a_diffusers_plan_is_planned_or_has_no_plan():
    unplanned = set()
    for family in registered_families():
        if any(getattr(diffusers, c)._cp_plan is not None for c in family.model_classes):
            assert family.name not in PLANNED | SDPA_DIRECT | UNSHARDABLE and family.parallel_plan is None
            continue
        assert family.name in PLANNED | SDPA_PLANNED | SDPA_DIRECT | UNSHARDABLE | {"SkyReels-V2"}, family.name
        assert (family.parallel_plan is not None) == (family.name in PLANNED | SDPA_PLANNED | {"SkyReels-V2"})
        unplanned.add(family.name)
    assert unplanned == PLANNED | SDPA_PLANNED | SDPA_DIRECT | UNSHARDABLE | {"SkyReels-V2"}


def test_the_records_plans_shard_what_each_model_needs():
    from diffusers.models._modeling_parallel import ContextParallelOutput

    vace = parallel_plan(cp_family_checks.wan_vace())
    assert set(vace) == {"rope", "blocks.0", "vace_blocks.0", "proj_out"}
    assert set(vace["vace_blocks.0"]) == {"hidden_states", "control_hidden_states"}
    for build in (cp_family_checks.bria, cp_family_checks.longcat_image, cp_family_checks.ovis_image):
        plan = parallel_plan(build())  # the text a stream of its own, sharded: sparse attention reorders for it
        assert set(plan[""]) == {"hidden_states", "encoder_hidden_states", "img_ids", "txt_ids"}
        assert plan[""]["encoder_hidden_states"].split_dim == 1 and plan[""]["txt_ids"].split_dim == 0
    kandinsky = parallel_plan(cp_family_checks.kandinsky5())  # gathered after the last visual block
    assert set(kandinsky) == {f"visual_transformer_blocks.{i}" for i in ("0", "*", "1")}
    assert isinstance(kandinsky["visual_transformer_blocks.1"], ContextParallelOutput)
    one = parallel_plan(cp_family_checks.kandinsky5(visual_blocks=1))  # one block: split and gather, two names
    assert set(one["visual_transformer_blocks.*"]) == {"visual_embed", "rope"}
    assert isinstance(one["visual_transformer_blocks.0"], ContextParallelOutput)
    z = parallel_plan(cp_family_checks.z_image())
    assert set(z) == {f"{stack}.{i}" for stack in ("noise_refiner", "layers") for i in ("0", "*", "1")}
    assert set(z["layers.*"]) == {"attn_mask", "freqs_cis", "noise_mask"} and set(z["layers.0"]) == {"x"}


class Pipe:
    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer


def _refusal(model: torch.nn.Module) -> str:
    with pytest.raises(RunError) as e:
        enable_ulysses(Pipe(model), World(2, 0, 0))
    assert model._parallel_config is None  # refused before any work
    head, _, supported = str(e.value).partition("; supported families: ")
    assert PLANNED | SDPA_PLANNED | {"Wan", "Flux", "SkyReels-V2"} <= set(supported.split(", "))
    assert not (SDPA_DIRECT | UNSHARDABLE) & set(supported.split(", "))
    return head


SDPA_MODELS = {  # tiny denoisers of families whose attention processors call SDPA themselves, and that processor
    "SD3": (lambda: diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
    ), "JointAttnProcessor2_0"),
    "PixArt": (lambda: diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=4, cross_attention_dim=16, caption_channels=16,
    ), "AttnProcessor2_0"),
    "CogVideoX": (lambda: diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
    ), "CogVideoXAttnProcessor2_0"),
    "Cosmos": (lambda: diffusers.CosmosTransformer3DModel(  # through the dispatcher, but without the parallel config
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1, mlp_ratio=2,
        text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
    ), "CosmosAttnProcessor2_0"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(SDPA_MODELS) - SDPA_PLANNED))
def test_families_whose_attention_calls_sdpa_directly_are_refused_with_why(name):
    build, processor = SDPA_MODELS[name]
    model = build()
    assert parallel_plan(model) is None
    assert _refusal(model) == (
        f"--parallel: {type(model).__name__} has no context-parallel plan (its attention processor {processor} "
        f"{SDPA_REASON})"
    )


@pytest.mark.parametrize("name", sorted(SDPA_PLANNED))
def test_sdpa_direct_families_with_unbottles_ulysses_attention_are_planned(name):
    # test_context_parallel_sdpa.py runs them under Ulysses-2
    assert parallel_plan(SDPA_MODELS[name][0]()) is not None


UNSHARDABLE_MODELS = {  # tiny denoisers whose attention goes through the dispatcher, and why no plan fits them
    "HunyuanVideo": (lambda: diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    ), TEXT_MASK),
    "HunyuanVideo-1.5": (lambda: diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_refiner_layers=1,
        mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12,
        rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
    ), "its text tokens are joined inside forward (no module output a plan could shard) and its attention "
       + SQUARE_MASK),
    "Chroma": (lambda: diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1,
    ), "its attention " + SQUARE_MASK),
    "Kandinsky5 (NABLA)": (lambda: diffusers.Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(2, 2, 4), attention_type="nabla",
    ), "its NABLA attention (attention_type='nabla') builds its block mask from each rank's own tokens, before "
       "Ulysses attention gathers them"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(UNSHARDABLE_MODELS))
def test_dispatcher_families_no_plan_fits_are_refused_with_why(name):
    build, reason = UNSHARDABLE_MODELS[name]
    model = build()
    assert parallel_plan(model) is None
    assert _refusal(model) == f"--parallel: {type(model).__name__} has no context-parallel plan ({reason})"
