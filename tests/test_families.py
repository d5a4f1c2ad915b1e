"""The family registry: lookups along the MRO, each feature's supported set, errors, `register_family` (validation,
a user family that sparse attention then drives, replace=True), the shared prompt encoding, and no feature module
keeping a family table of its own."""

import re
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

import unbottle
from unbottle.families import (
    Family,
    Latents,
    PromptEncoding,
    SelfAttention,
    UnsupportedModelError,
    family_for_model,
    family_for_pipeline,
    register_family,
    registered_families,
    registry,
)
from unbottle.families.prompt import encode_prompt_once
from unbottle.families.stable_diffusion import UNET_ATTENTION
from unbottle.families.wan import WAN
from unbottle.testing import tiny_wan_pipeline

PACKAGE = Path(unbottle.__file__).parent


def bare(cls):
    """An instance of `cls` without running its __init__: lookups only read the class."""
    return cls.__new__(cls)


@pytest.fixture(autouse=True)
def _registry():
    saved = list(registry._FAMILIES)
    yield
    registry._FAMILIES[:] = saved


# -- lookups ----------------------------------------------------------------------------------------------------------
MODELS = {
    "FluxTransformer2DModel": "Flux", "SD3Transformer2DModel": "SD3", "PixArtTransformer2DModel": "PixArt",
    "CogVideoXTransformer3DModel": "CogVideoX", "WanTransformer3DModel": "Wan",
    "HunyuanVideoTransformer3DModel": "HunyuanVideo", "LTXVideoTransformer3DModel": "LTX-Video",
    "UNet2DConditionModel": "StableDiffusion",
}  # fmt: skip


@pytest.mark.parametrize("cls", sorted(MODELS))
def test_model_lookup_by_class_and_by_a_subclass(cls):
    model_cls = getattr(diffusers, cls)
    assert family_for_model(bare(model_cls)).name == MODELS[cls]
    sub = type("Renamed", (model_cls,), {})
    assert family_for_model(bare(sub)).name == MODELS[cls]


def test_sd_and_sdxl_share_the_unet_and_are_told_apart_by_pipeline():
    unet = bare(diffusers.UNet2DConditionModel)
    assert family_for_model(unet).name == "StableDiffusion"  # the first registered that lists the class
    assert family_for_model(unet) is family_for_model(unet)
    by_name = {f.name: f for f in registered_families()}
    assert by_name["StableDiffusion"].attention is by_name["SDXL"].attention
    assert family_for_pipeline(bare(diffusers.StableDiffusionPipeline), "noise").name == "StableDiffusion"
    assert family_for_pipeline(bare(diffusers.StableDiffusionXLPipeline), "noise").name == "SDXL"
    assert family_for_pipeline(bare(diffusers.StableDiffusionXLPipeline), "guidance").name == "SDXL"
    # registration order decides the shared class: SDXL first, and the UNet resolves to SDXL
    registry._FAMILIES.sort(key=lambda f: f.name != "SDXL")
    assert family_for_model(unet).name == "SDXL"


def test_the_nearest_class_in_the_mro_wins():
    sub = type("MyFlux", (diffusers.FluxTransformer2DModel,), {})
    mine = Family("MyFlux", ("MyFlux",), attention=SelfAttention(r"^x$", lambda model, bound: None))
    register_family(mine)  # registered after Flux, but its class is nearer
    assert family_for_model(bare(sub)) is mine
    assert family_for_model(bare(diffusers.FluxTransformer2DModel)).name == "Flux"


SUPPORTED = {
    "sparse": {
        "Flux": (), "SD3": (), "PixArt": (), "CogVideoX": (), "Wan": (), "HunyuanVideo": (), "LTX-Video": (),
        "StableDiffusion": (), "SDXL": (),
        "Wan-VACE": (), "SkyReels-V2": (), "ChronoEdit": (), "Wan-Animate": (), "ConsisID": (),
        "HunyuanVideo-1.5": (), "HunyuanImage": (), "LTX-2": (), "Kandinsky5": (), "LongCat-Image": (),
        "QwenImage": (), "Flux2": (), "Chroma": (), "AuraFlow": (), "CogView4": (), "Lumina2": (), "ZImage": (),
        "HiDreamImage": (), "CogView3Plus": (), "Bria": (), "DiT": (), "OvisImage": (),
        "Allegro": (), "Latte": (), "EasyAnimate": (), "Cosmos": (),
    },
    "bottleneck": {
        "Flux": ("FluxPipeline",), "SD3": ("StableDiffusion3Pipeline",), "Wan": ("WanPipeline",),
        "HunyuanVideo": ("HunyuanVideoPipeline",), "LTX-Video": ("LTXPipeline",),
        "Wan-I2V": ("WanImageToVideoPipeline",), "HunyuanVideo-1.5": ("HunyuanVideo15Pipeline",),
        "QwenImage": ("QwenImagePipeline",), "Flux2": ("Flux2Pipeline", "Flux2KleinPipeline"),
        "LTX-2": ("LTX2Pipeline",), "Wan-VACE": ("WanVACEPipeline",), "SkyReels-V2": ("SkyReelsV2Pipeline",),
        "ChronoEdit": ("ChronoEditPipeline",), "HunyuanImage": ("HunyuanImagePipeline",),
        "Kandinsky5": ("Kandinsky5T2VPipeline",), "Chroma": ("ChromaPipeline",), "AuraFlow": ("AuraFlowPipeline",),
        "CogView4": ("CogView4Pipeline",), "Lumina2": ("Lumina2Pipeline",), "ZImage": ("ZImagePipeline",),
        "Bria": ("BriaPipeline",), "OvisImage": ("OvisImagePipeline",), "EasyAnimate": ("EasyAnimatePipeline",),
        "HiDreamImage": ("HiDreamImagePipeline",),
    },
    "noise": {
        "StableDiffusion": ("StableDiffusionPipeline",), "SDXL": ("StableDiffusionXLPipeline",),
        "PixArt": ("PixArtAlphaPipeline", "PixArtSigmaPipeline"), "SD3": ("StableDiffusion3Pipeline",),
        "Flux": ("FluxPipeline",), "Wan": ("WanPipeline",),
        "Wan-I2V": ("WanImageToVideoPipeline",), "HunyuanVideo-1.5": ("HunyuanVideo15Pipeline",),
        "QwenImage": ("QwenImagePipeline",), "Flux2": ("Flux2Pipeline", "Flux2KleinPipeline"),
        "LTX-2": ("LTX2Pipeline",), "Wan-VACE": ("WanVACEPipeline",), "SkyReels-V2": ("SkyReelsV2Pipeline",),
        "ChronoEdit": ("ChronoEditPipeline",), "HunyuanImage": ("HunyuanImagePipeline",),
        "Chroma": ("ChromaPipeline",), "AuraFlow": ("AuraFlowPipeline",), "CogView4": ("CogView4Pipeline",),
        "Lumina2": ("Lumina2Pipeline",), "ZImage": ("ZImagePipeline",), "Bria": ("BriaPipeline",),
        "OvisImage": ("OvisImagePipeline",), "EasyAnimate": ("EasyAnimatePipeline",),
    },
    "guidance": {
        "StableDiffusion": ("StableDiffusionPipeline",), "SDXL": ("StableDiffusionXLPipeline",),
        "PixArt": ("PixArtAlphaPipeline", "PixArtSigmaPipeline"), "Wan": ("WanPipeline",),
        "Wan-VACE": ("WanVACEPipeline",), "SkyReels-V2": ("SkyReelsV2Pipeline",), "Allegro": ("AllegroPipeline",),
        "Latte": ("LattePipeline",), "Cosmos": ("Cosmos2TextToImagePipeline",),
    },
}  # fmt: skip
PIPELINES = sorted({p for f in SUPPORTED.values() for ps in f.values() for p in ps} | {"CogVideoXPipeline"})


@pytest.mark.parametrize("feature", sorted(SUPPORTED))
def test_each_feature_supports_exactly_its_families(feature):
    assert {f.name for f in registered_families() if f.supports(feature)} == set(SUPPORTED[feature])
    if feature == "sparse":
        return
    for cls in PIPELINES:
        pipe = bare(getattr(diffusers, cls))
        expected = next((name for name, ps in SUPPORTED[feature].items() if cls in ps), None)
        if expected is None:
            assert family_for_pipeline(pipe, feature, required=False) is None
            with pytest.raises(UnsupportedModelError, match=cls):
                family_for_pipeline(pipe, feature)
        else:
            assert family_for_pipeline(pipe, feature).name == expected


def test_structured_guidance_takes_wan_pipeline_itself_only():
    sub = bare(type("MyWanPipeline", (diffusers.WanPipeline,), {}))
    assert family_for_pipeline(sub, "noise").name == "Wan"  # subclasses elsewhere
    assert family_for_pipeline(sub, "bottleneck").name == "Wan"
    assert family_for_pipeline(sub, "guidance", required=False) is None
    sd = bare(type("MySDPipeline", (diffusers.StableDiffusionPipeline,), {}))
    assert family_for_pipeline(sd, "guidance").name == "StableDiffusion"


# -- errors -----------------------------------------------------------------------------------------------------------
HOW = "register one with unbottle.register_family(unbottle.Family(...)); see the README's 'Adding a model family'"


def test_unknown_model_names_the_class_lists_the_families_and_how_to_add_one():
    with pytest.raises(UnsupportedModelError) as info:
        family_for_model(torch.nn.Linear(2, 2))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith("unbottle sparse attention does not support Linear; supported families: ")
    assert "Flux (FluxTransformer2DModel)" in message and "SDXL (UNet2DConditionModel)" in message
    assert "LTX-Video (LTXVideoTransformer3DModel)" in message and HOW in message
    with pytest.raises(UnsupportedModelError, match="does not support Linear"):
        unbottle.enable_sparse_attention(torch.nn.Linear(2, 2), unbottle.SparseAttentionConfig())


def test_unsupported_pipeline_lists_only_the_families_of_that_feature():
    with pytest.raises(UnsupportedModelError) as info:
        family_for_pipeline(bare(diffusers.PixArtSigmaPipeline), "bottleneck")
    message = str(info.value)
    assert "does not support PixArtSigmaPipeline" in message and HOW in message
    listed = message.split("supported pipelines: ")[1].split(";")[0]
    pairs = re.findall(r"([\w.-]+) \(([\w/]+)\)", listed)  # "Family (APipeline/BPipeline)", in registry order
    assert ", ".join(f"{n} ({c})" for n, c in pairs) == listed
    assert {n: tuple(c.split("/")) for n, c in pairs} == SUPPORTED["bottleneck"]
    assert [n for n, _ in pairs][:5] == ["Flux", "SD3", "Wan", "HunyuanVideo", "LTX-Video"]  # the built-ins first


def test_lookup_for_any_feature():
    assert family_for_pipeline(bare(diffusers.HunyuanVideoPipeline), None).name == "HunyuanVideo"
    assert family_for_model(bare(diffusers.CogVideoXTransformer3DModel), None).name == "CogVideoX"
    assert family_for_model(torch.nn.Linear(2, 2), None, required=False) is None
    with pytest.raises(UnsupportedModelError, match=r"no registered family lists Linear; registered: Flux, SD3, "):
        family_for_model(torch.nn.Linear(2, 2), None)


def test_unknown_feature_is_refused():
    with pytest.raises(ValueError, match="unknown feature 'video'; expected one of sparse, bottleneck, noise"):
        family_for_pipeline(bare(diffusers.FluxPipeline), "video")
    with pytest.raises(ValueError, match="unknown feature 'video'"):
        registered_families("video")


# -- register_family --------------------------------------------------------------------------------------------------
def _attention(modules=r"^blocks\.\d+\.attn1$"):
    return SelfAttention(modules, WAN.attention.layout)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Family("", ("A",)), "Family.name must be a non-empty string, got ''"),
        (lambda: Family("A", "AModel"), "Family.model_classes must be a tuple of non-empty class names, got 'AModel'"),
        (lambda: Family("A", (), pipeline_classes=("",)), "Family.pipeline_classes must be a tuple"),
        (lambda: Family("A", ()), "Family 'A' names no class"),
        (lambda: Family("A", ("A",), attention="x"), "Family.attention must be an unbottle.families.SelfAttention"),
        (lambda: Family("A", ("A",), stock_steps=0), "Family.stock_steps must be an integer ≥ 1, got 0"),
        (lambda: SelfAttention("(", lambda m, b: None), "SelfAttention.modules '(' is not a valid regex"),
        (lambda: SelfAttention("x", None), "SelfAttention.layout must be a function, got None"),
        (lambda: Latents(False, lambda p: 8, packing=0), "Latents.packing must be an integer ≥ 1, got 0"),
        (lambda: PromptEncoding(()), "PromptEncoding.encoded must be a non-empty tuple"),
    ],
)
def test_bad_records_are_refused_by_field(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_register_family_refuses_conflicts_unless_replace():
    with pytest.raises(TypeError, match="register_family expects an unbottle.Family, got dict"):
        register_family({"name": "A"})
    before = registered_families()
    with pytest.raises(ValueError, match="cannot register family 'Flux': the name 'Flux' is registered; pass repl"):
        register_family(Family("Flux", ("Other",)))
    with pytest.raises(ValueError, match="'Wan' already lists the pipeline class WanPipeline"):
        register_family(Family("MyWan", (), pipeline_classes=("WanPipeline",)))
    with pytest.raises(ValueError, match="'Wan' already lists the model class WanTransformer3DModel with another"):
        register_family(Family("MyWan", ("WanTransformer3DModel",), attention=_attention(r"^blocks\.0\.attn1$")))
    assert registered_families() == before  # nothing half-registered
    # the same attention part may share the model class (as SDXL does the UNet); a pipeline-only family too
    shared = register_family(Family("SD-variant", ("UNet2DConditionModel",), attention=UNET_ATTENTION))
    other = register_family(Family("NoiseOnly", ("WanTransformer3DModel",), pipeline_classes=("MyPipe",)))
    assert registered_families()[-2:] == (shared, other)
    assert family_for_model(bare(diffusers.UNet2DConditionModel)).name == "StableDiffusion"


def test_replace_takes_the_place_of_the_family_it_replaces():
    index = [f.name for f in registered_families()].index("Wan")
    mine = Family("Wan", ("WanTransformer3DModel",), ("WanPipeline",), attention=_attention(r"^blocks\.0\.attn1$"))
    assert register_family(mine, replace=True) is mine
    assert registered_families()[index] is mine and [f.name for f in registered_families()].count("Wan") == 1
    assert family_for_model(bare(diffusers.WanTransformer3DModel)) is mine
    assert family_for_pipeline(bare(diffusers.WanPipeline), "noise", required=False) is None  # it has no latents


def test_every_feature_sees_a_registered_family():
    mine = Family("Mine", ("MyModel",), ("MyPipeline",), latents=WAN.latents, prompt=WAN.prompt, flow_matching=True)
    unbottle.register_family(mine)
    assert family_for_pipeline(bare(type("MyPipeline", (), {})), "bottleneck") is mine
    last = r"EasyAnimate \(EasyAnimatePipeline\)"  # the last built-in, then the user's
    with pytest.raises(UnsupportedModelError, match=rf"{last}, Mine \(MyPipeline\); to add"):
        unbottle.BottleneckSampler(bare(diffusers.PixArtSigmaPipeline), [unbottle.Stage(1.0, 2)])
    with pytest.raises(UnsupportedModelError, match=rf"{last}, Mine \(MyPipeline\)\. iterations=0"):
        unbottle.NoiseSearch(bare(diffusers.CogVideoXPipeline), {"a": (torch.nn.Identity(), 1.0)}, iterations=1)


def test_a_user_family_drives_sparse_attention_on_its_own_model():
    """A renamed Wan transformer: its family makes only the first block sparse, through its own layout reader."""
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a red circle", num_inference_steps=3, height=32, width=32, num_frames=9, max_sequence_length=16,
                    output_type="np", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip

    stock = run()
    pipe.transformer.__class__ = type("MyVideoTransformer", (diffusers.WanTransformer3DModel,), {})
    calls = []

    def layout(model, bound):
        calls.append(model)
        return WAN.attention.layout(model, bound)

    mine = unbottle.register_family(
        unbottle.Family("MyVideo", ("MyVideoTransformer",), attention=SelfAttention(r"^blocks\.0\.attn1$", layout))
    )
    dense = unbottle.SparseAttentionConfig(density=1.0, block_size=8, full_steps=1)
    sparse = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=2)
    handle = unbottle.enable_sparse_attention(pipe, dense)
    try:
        assert handle.family is mine
        processors = pipe.transformer.attn_processors
        wrapped = {k for k, p in processors.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {"blocks.0.attn1.processor"}
        out = run()
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert calls and all(model is pipe.transformer for model in calls)
    assert float(np.abs(out - stock).max()) <= 1e-5
    unbottle.enable_sparse_attention(pipe, sparse)
    try:
        out = run()
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert np.isfinite(out).all() and float(np.abs(out - stock).max()) > 1e-5
    np.testing.assert_array_equal(run(), stock)


# -- the shared prompt encoding ---------------------------------------------------------------------------------------
class _Recorder:
    """A pipeline whose `encode_prompt` records its arguments and returns one tensor per output."""

    _execution_device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def __call__(self, prompt=None, negative_prompt=None, guidance_scale=5.0, true_cfg_scale=1.0,
                 prompt_embeds=None, negative_prompt_embeds=None, max_sequence_length=512):  # fmt: skip
        raise AssertionError("not run")

    def encode_prompt(self, prompt, device=None, do_classifier_free_guidance=True, prompt_embeds=None,
                      max_sequence_length=226):  # fmt: skip
        self.calls.append(dict(prompt=prompt, device=device, cfg=do_classifier_free_guidance,
                               max_sequence_length=max_sequence_length))  # fmt: skip
        return torch.full((1,), float(len(self.calls))), None


class _TrueCFG(_Recorder):
    def encode_prompt(self, prompt, device=None, prompt_embeds=None, max_sequence_length=226):  # fmt: skip
        self.calls.append(dict(prompt=prompt, max_sequence_length=max_sequence_length))
        return torch.full((1,), float(len(self.calls))), None


CFG = PromptEncoding(("prompt_embeds", "negative_prompt_embeds"))
TRUE_CFG = PromptEncoding(("prompt_embeds", None), separate_negative=True)


def test_negatives_are_encoded_as_each_feature_needs():
    pipe = _Recorder()
    out = encode_prompt_once(pipe, CFG, {"prompt": "a", "guidance_scale": 1.0}, always_negative=False)
    # no CFG at guidance_scale 1: no negative; `max_sequence_length` from __call__ (512), not encode_prompt's 226
    assert pipe.calls == [dict(prompt="a", device=torch.device("cpu"), cfg=False, max_sequence_length=512)]
    assert list(out) == ["prompt_embeds"]  # the None negative is left out
    encode_prompt_once(pipe, CFG, {"prompt": "a"}, always_negative=False)  # __call__'s guidance_scale 5 → CFG
    encode_prompt_once(pipe, CFG, {"prompt": "a", "guidance_scale": 1.0}, always_negative=True)
    assert [c["cfg"] for c in pipe.calls] == [False, True, True]

    pipe = _TrueCFG()
    call = {"prompt": "a", "negative_prompt": "b", "max_sequence_length": 64}
    assert list(encode_prompt_once(pipe, TRUE_CFG, call, always_negative=False)) == ["prompt_embeds"]
    out = encode_prompt_once(pipe, TRUE_CFG, dict(call, true_cfg_scale=4.0), always_negative=False)
    assert list(out) == ["prompt_embeds", "negative_prompt_embeds"] and float(out["negative_prompt_embeds"]) == 3.0
    assert pipe.calls[1:] == [dict(prompt="a", max_sequence_length=64), dict(prompt="b", max_sequence_length=64)]
    out = encode_prompt_once(pipe, TRUE_CFG, call, always_negative=True)  # true_cfg_scale 1, still encoded
    assert pipe.calls[-1] == dict(prompt="b", max_sequence_length=64) and "negative_prompt_embeds" in out
    encode_prompt_once(pipe, TRUE_CFG, {"prompt": "a"}, always_negative=True)  # no negative given: one call
    assert pipe.calls[-1] == dict(prompt="a", max_sequence_length=512) and len(pipe.calls) == 6


# -- one table, no copies ---------------------------------------------------------------------------------------------
def test_no_feature_module_keeps_a_family_table():
    for gone in ("adapters.py", "bottleneck_families.py", "noise_families.py"):
        assert not list(PACKAGE.rglob(gone)), gone
    names = r"FAMILIES|ADAPTERS|STOCK_STEPS|_SD|_SDXL|_PIXART|_WAN"
    table = re.compile(rf"^({names})\b\s*[:=]|^def (_family|adapter_for)\(", re.M)
    features = [p for p in PACKAGE.rglob("*.py") if "families" not in p.parts]
    offenders = [str(p.relative_to(PACKAGE)) for p in features if table.search(p.read_text())]
    assert offenders == []
    flux = PACKAGE / "families" / "flux.py"
    assert [str(p.relative_to(PACKAGE)) for p in features if "_pack_latents(grid" in p.read_text()] == []
    assert "_pack_latents(grid" in flux.read_text()


def test_families_import_no_feature():
    features = ("attention_processors", "pipelines", "guidance", "rewards", "batch", "cli", "bench")
    for path in (PACKAGE / "families").glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*from \.\.|^\s*import unbottle|^\s*from unbottle", source, re.M), path.name
        assert not any(f"unbottle.{f}" in source for f in features), path.name
