"""The end-to-end benchmark on the CPU: real-size configs, ratio math, writers, command line, and a dry run
of the timing loop on the tiny fixtures (the code path the H200 runs). Timings are never asserted here.
"""

import dataclasses
import json
import runpy
from pathlib import Path

import pytest
import torch

from unbottle.bench import e2e
from unbottle.bench.e2e import models as e2e_models
from unbottle.cli import main
from unbottle.testing import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from unbottle.testing.flux2 import tiny_flux2_pipeline
from unbottle.testing.hunyuan_video15 import tiny_hunyuan_video15_pipeline
from unbottle.testing.qwen_image import tiny_qwen_image_pipeline
from unbottle.testing.wan22 import tiny_wan22_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _lines(capsys):
    return [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]


def _count(build) -> int:
    with torch.device("meta"):  # shapes only, nothing allocated
        return sum(p.numel() for p in build().parameters())


# ---- real-size configs --------------------------------------------------------------------------------------------


def test_flux_dev_transformer_has_the_published_size():
    with torch.device("meta"):
        model = e2e.flux_dev_transformer()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 12e9) / 12e9 < 0.02  # "12B"; the checkpoint holds 11.90B
    assert len(model.transformer_blocks) == 19 and len(model.single_transformer_blocks) == 38
    assert model.inner_dim == 3072 and model.config.num_attention_heads * model.config.attention_head_dim == 3072
    assert model.config.guidance_embeds and model.config.in_channels == 64  # 16 latent channels × 2×2 packing


def test_wan_transformer_has_the_published_size():
    with torch.device("meta"):
        model = e2e.wan_1_3b_transformer()
    n = sum(p.numel() for p in model.parameters())
    # "1.3B" is the model's name; its diffusers checkpoint holds 1.419B parameters (5.68 GB in fp32)
    assert abs(n - 1.419e9) / 1.419e9 < 0.01 and abs(n - 1.3e9) / 1.3e9 < 0.1
    assert len(model.blocks) == 30 and model.config.num_attention_heads * model.config.attention_head_dim == 1536


def test_sd3_medium_transformer_has_the_published_size():
    with torch.device("meta"):
        model = e2e.sd3_medium_transformer()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 2.03e9) / 2.03e9 < 0.01  # "2B": the diffusers checkpoint of SD3-medium holds 2.028B
    assert len(model.transformer_blocks) == 24 and model.inner_dim == 1536 and model.config.patch_size == 2


@pytest.mark.parametrize("build, expected", [(e2e.flux_dev_vae, 83.8e6), (e2e.wan_vae, 126.9e6)])
def test_vaes_have_the_published_size(build, expected):
    assert abs(_count(build) - expected) / expected < 0.01


def test_cases_are_the_issue_s_requests():
    flux, wan, sparse = (e2e.CASES[n] for n in ("flux", "wan", "wan-sparse"))
    assert (flux.height, flux.width, flux.steps, flux.variants) == (1024, 1024, 50, ("stock", "flux-3x"))
    assert (wan.frames, wan.height, wan.width, wan.steps, wan.guidance_scale) == (81, 480, 832, 50, 5.0)
    assert wan.variants == ("stock", "wan-3x", "wan-2x") and sparse.variants == ("stock", "wan-3x+sparse")
    assert sparse.sparse["density"] == 0.05
    assert e2e.WAN_SCHEDULER["use_flow_sigmas"] and e2e.WAN_SCHEDULER["flow_shift"] == 3.0
    sd3 = e2e.CASES["sd3"]  # SD3's pipeline defaults: 28 steps, guidance 7, CLIP 77 + T5 256 text tokens
    assert (sd3.height, sd3.width, sd3.steps, sd3.guidance_scale, sd3.text_tokens) == (1024, 1024, 28, 7.0, 333)
    assert sd3.variants == ("stock", "sd3-2x")


def test_quick_and_repeats_scale_the_cases():
    quick = e2e.effective_case(e2e.CASES["wan"], e2e.E2EOptions(quick=True))
    assert (quick.steps, quick.frames, quick.repeats) == (e2e.QUICK_STEPS, e2e.QUICK_FRAMES, e2e.QUICK_REPEATS)
    assert [s.steps for s in e2e.variant_stages("wan-3x", quick)] == [1, 4, 2]  # (5, 20, 8) × 10/50
    assert [s.steps for s in e2e.variant_stages("wan-3x+sparse", e2e.CASES["wan"])] == [5, 20, 8]
    assert e2e.variant_stages("stock", quick) is None
    assert e2e.effective_case(e2e.CASES["flux"], e2e.E2EOptions(repeats=7)).repeats == 7
    assert e2e.parse_cases("wan, flux") == ["wan", "flux"]
    # presets are set against their family's stock steps: SD3's 28, not 50
    assert [s.steps for s in e2e.variant_stages("sd3-2x", e2e.CASES["sd3"])] == [3, 10, 5]
    sd3_quick = e2e.effective_case(e2e.CASES["sd3"], e2e.E2EOptions(quick=True))
    assert [s.steps for s in e2e.variant_stages("sd3-2x", sd3_quick)] == [1, 4, 2]  # (3, 10, 5) × 10/28
    with pytest.raises(Exception, match="--cases"):
        e2e.parse_cases("sd4")


# ---- ratios, targets, writers -------------------------------------------------------------------------------------


def _row(case, variant, denoise, error=None):
    row = e2e.run._new_row(e2e.CASES[case], variant, e2e.variant_stages(variant, e2e.CASES[case]))
    row.update(denoise_s=denoise, times_s=[denoise] if denoise else [], error=error, transformer_calls=7,
               transformer_s=denoise - 1.0 if denoise else None,
               per_size={"16x21x60x104": {"calls": 7, "ms_per_call": 2000.0}} if denoise else None)  # fmt: skip
    return row


def test_call_times_per_input_size():
    """CallTimes: every forward counted and timed, grouped by the input's size per generation (stages of BS)."""
    layer = torch.nn.Linear(4, 4)
    with e2e.CallTimes(layer) as times:
        for _ in range(2):  # two "generations": 3 calls at 5 tokens, 1 at 2 tokens each
            for n in (5, 5, 5, 2):
                layer(torch.randn(1, n, 4))
    layer(torch.randn(1, 3, 4))  # outside the block: not counted
    seconds, sizes = times.summary(generations=2)
    assert len(times.calls) == 8 and sizes.keys() == {"5x4", "2x4"}
    assert sizes["5x4"]["calls"] == 3 and sizes["2x4"]["calls"] == 1
    assert seconds > 0 and all(v["ms_per_call"] >= 0 for v in sizes.values())
    assert not layer._forward_hooks and not layer._forward_pre_hooks  # hooks removed


def test_ratio_math():
    assert e2e.speedup(10.0, 4.0) == 2.5 and e2e.speedup(None, 4.0) is None and e2e.speedup(10.0, None) is None
    rows = e2e.finish_case([_row("wan", "stock", 60.0), _row("wan", "wan-3x", 20.0),
                            _row("wan", "wan-2x", None, "OutOfMemoryError: x")], 10.0)  # fmt: skip
    assert [r["speedup_denoise"] for r in rows] == [1.0, 3.0, None]
    assert rows[1]["total_s"] == 30.0 and rows[1]["speedup_total"] == pytest.approx(70 / 30)
    assert rows[2]["total_s"] is None and rows[2]["speedup_total"] is None
    no_decode = e2e.finish_case([_row("flux", "stock", 8.0), _row("flux", "flux-3x", 2.0)], None)
    assert no_decode[1]["speedup_denoise"] == 4.0 and no_decode[1]["total_s"] is None
    targets = e2e.evaluate_targets(rows + no_decode)
    by = {t["variant"]: t for t in targets}
    assert by["wan-3x"]["basis"] == "with decode" and by["wan-3x"]["met"] is False  # 2.33 < 2.5
    assert by["flux-3x"]["basis"] == "denoise only" and by["flux-3x"]["met"] is True
    assert "wan-3x+sparse" not in by


def test_writers_on_a_synthetic_result(tmp_path):
    results = e2e.run._environment(torch.device("cpu"), "python bench/e2e.py -o x", e2e.E2EOptions())
    results.update(gpu="NVIDIA H200", gpu_tag="h200")
    rows = e2e.finish_case([_row("wan", "stock", 60.0), _row("wan", "wan-3x", 20.0),
                            _row("wan", "wan-2x", None, "OutOfMemoryError: CUDA out of memory")], 9.0)  # fmt: skip
    results["rows"] = rows
    results["decode"]["wan"] = {"case": "wan", "model": "wan", "decode_s": 9.0, "times_s": [9.0], "error": None}
    results["targets"] = e2e.evaluate_targets(rows)
    paths = e2e.write_outputs(results, tmp_path)
    assert paths["json"].name == "e2e-h200.json" and paths["md"].name == "e2e-h200.md"
    data = json.loads(paths["json"].read_text())
    assert data["command"] == "python bench/e2e.py -o x" and data["diffusers"] and "git_commit" in data
    assert [r["variant"] for r in data["rows"]] == ["stock", "wan-3x", "wan-2x"]
    md = paths["md"].read_text()
    assert "| wan-3x | 5+20+8 | 7 | 20.00 | 19.00 | 7 × 2000.0 (16x21x60x104) | 3.00× | 29.00 | 2.38× |" in md
    assert "OutOfMemoryError" in md and "| wan | wan-3x | stock | with decode | 2.38× | ≥ 2.5× | ✗ |" in md
    assert "prompt_embeds" in md  # what is not real-size is said
    results["cases"], results["options"]["quick"] = ["wan-sparse"], True
    assert e2e.output_stem(results) == "e2e-h200-wan-sparse-quick"
    results["cases"] = ["wan-sparse", "flux"]  # names the device tool and any file system take: no "+"
    assert e2e.output_stem(results) == "e2e-h200-wan-sparse_flux-quick"


# ---- command line -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_refuses_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "e2e", "-o", str(tmp_path / "out")]) == 2
    assert _lines(capsys) == [f"unbottle bench: error: {e2e.NO_CUDA_MESSAGE}"]
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_script_refuses_without_cuda(tmp_path, capsys):
    script = runpy.run_path(str(ROOT / "bench" / "e2e.py"), run_name="bench_e2e")
    assert script["main"](["--quick", "--cases", "wan", "-o", str(tmp_path / "out")]) == 2
    assert _lines(capsys) == [f"bench/e2e.py: error: {e2e.NO_CUDA_MESSAGE}"]
    assert not (tmp_path / "out").exists()


# ---- a dry run of the timing loop on the tiny fixtures ------------------------------------------------------------


def test_dry_run_on_the_tiny_pipelines_fills_every_row(tmp_path):
    pipes = {"flux": tiny_flux_pipeline(), "wan": tiny_wan_pipeline()}
    tiny = dict(steps=10, repeats=2, text_tokens=16)
    cases = [
        dataclasses.replace(e2e.CASES["flux"], height=32, width=32, **tiny),
        dataclasses.replace(e2e.CASES["wan"], height=64, width=64, frames=9, **tiny),
        dataclasses.replace(e2e.CASES["wan-sparse"], height=64, width=64, frames=9, **tiny,
                            sparse={"density": 0.3, "block_size": 8, "full_steps": 1, "refresh_every": 2}),
    ]  # fmt: skip
    results = e2e.run_benchmark(e2e.E2EOptions(), tmp_path, "dry run", device="cpu", pipelines=pipes, cases=cases,
                                log=lambda message: None)  # fmt: skip
    rows = results["rows"]
    assert [(r["case"], r["variant"]) for r in rows] == [
        ("flux", "stock"), ("flux", "flux-3x"), ("wan", "stock"), ("wan", "wan-3x"), ("wan", "wan-2x"),
        ("wan-sparse", "stock"), ("wan-sparse", "wan-3x+sparse"),
    ]  # fmt: skip
    for r in rows:
        assert r["error"] is None, r
        assert len(r["times_s"]) == 2 and r["denoise_s"] > 0 and r["warmup_s"] > 0
        assert r["decode_s"] > 0 and r["total_s"] == pytest.approx(r["denoise_s"] + r["decode_s"])
        assert r["speedup_denoise"] > 0 and r["speedup_total"] > 0
    calls = {(r["case"], r["variant"]): r["transformer_calls"] for r in rows}
    assert calls[("flux", "stock")] == 10 and calls[("flux", "flux-3x")] == 1 + 3 + 1  # guidance-distilled: 1 pass
    assert calls[("wan", "stock")] == 20 and calls[("wan", "wan-3x")] == 2 * (1 + 4 + 2)  # CFG: 2 passes a step
    sparse = rows[-1]
    assert sparse["sparse"]["density"] == 0.3 and sparse["warmup"] == "whole generation"
    assert sparse["patterns_computed_timed"] == 0  # patterns cached at warm-up, reused as across generations
    assert rows[-2]["stock_from"] == "wan" and rows[-2]["denoise_s"] == rows[2]["denoise_s"]
    assert {t["variant"] for t in results["targets"]} == {"flux-3x", "wan-3x", "wan-3x+sparse"}
    for pipe in pipes.values():  # sparse attention is off again
        assert not any("Sparse" in type(p).__name__ for p in pipe.transformer.attn_processors.values())
    data = json.loads((tmp_path / f"{e2e.output_stem(results)}.json").read_text())
    assert len(data["rows"]) == 7 and data["wall_s"] is not None


def test_wan22_a14b_and_qwen_image_have_the_published_size():
    from diffusers import QwenImageTransformer2DModel, WanTransformer3DModel

    with torch.device("meta"):
        wan = WanTransformer3DModel(**e2e_models.WAN22_A14B_TRANSFORMER)
        qwen = QwenImageTransformer2DModel(**e2e_models.QWEN_IMAGE_TRANSFORMER)
    n_wan, n_qwen = (sum(p.numel() for p in m.parameters()) for m in (wan, qwen))
    assert abs(n_wan - 14.29e9) / 14.29e9 < 0.01  # "A14B": each expert of the diffusers checkpoint, 14.29B
    assert len(wan.blocks) == 40 and wan.config.num_attention_heads * wan.config.attention_head_dim == 5120
    assert abs(n_qwen - 20.43e9) / 20.43e9 < 0.01  # "20B"; the checkpoint holds 20.43B
    assert len(qwen.transformer_blocks) == 60 and qwen.inner_dim == 3072


def test_flux2_dev_and_hunyuan_video15_have_the_published_size():
    from diffusers import Flux2Transformer2DModel, HunyuanVideo15Transformer3DModel

    with torch.device("meta"):
        flux2 = Flux2Transformer2DModel(**e2e_models.FLUX2_DEV_TRANSFORMER)
        hunyuan = HunyuanVideo15Transformer3DModel(**e2e_models.HUNYUAN_VIDEO15_TRANSFORMER)
    n_flux2, n_hunyuan = (sum(p.numel() for p in m.parameters()) for m in (flux2, hunyuan))
    assert abs(n_flux2 - 32e9) / 32e9 < 0.01  # "32B"
    assert len(flux2.transformer_blocks) == 8 and len(flux2.single_transformer_blocks) == 48
    assert abs(n_hunyuan - 8.3e9) / 8.3e9 < 0.01  # "8.3B"
    assert len(hunyuan.transformer_blocks) == 54 and hunyuan.config.in_channels == 2 * 32 + 1  # noise, cond, mask


def test_dry_run_of_the_two_expert_and_qwen_image_cases(tmp_path):
    pipes = {"wan22": tiny_wan22_pipeline(), "qwen-image": tiny_qwen_image_pipeline()}
    sparse = {"density": 0.3, "block_size": 8, "full_steps": 1}
    cases = [
        dataclasses.replace(e2e.CASES["wan22"], height=64, width=64, frames=5, steps=20, repeats=1, text_tokens=16,
                            sparse=sparse),
        dataclasses.replace(e2e.CASES["qwen-image"], height=64, width=64, steps=25, repeats=1, text_tokens=16,
                            sparse=sparse),
    ]  # fmt: skip
    results = e2e.run_benchmark(e2e.E2EOptions(), tmp_path, "dry run", device="cpu", pipelines=pipes, cases=cases,
                                log=lambda message: None)  # fmt: skip
    rows = {(r["case"], r["variant"]): r for r in results["rows"]}
    assert all(r["error"] is None for r in rows.values()), results["rows"]
    # wan22-3x's (5, 20, 8) against 50 stock steps, run at 20: × 0.4; CFG: two passes a step, counted on both experts
    assert rows[("wan22", "wan22-3x")]["steps"] == [2, 8, 3]
    assert rows[("wan22", "stock")]["transformer_calls"] == 40 == rows[("wan22", "stock+sparse")]["transformer_calls"]
    assert rows[("wan22", "wan22-3x+sparse")]["transformer_calls"] == 2 * (2 + 8 + 3)
    assert rows[("wan22", "stock+sparse")]["patterns_computed_timed"] == 0  # both experts' patterns from the warm-up
    # qwenimage-2x's (6, 20, 8) × 25/50; true CFG (a negative prompt's embeddings): two passes a step
    assert rows[("qwen-image", "qwenimage-2x")]["steps"] == [3, 10, 4]
    assert rows[("qwen-image", "stock")]["transformer_calls"] == 50
    # (tokens, channels) per call: the tiny VAE is ×4 with 4 channels, 2×2-packed: 64 px → 8² tokens, 32 px → 4²
    sizes = rows[("qwen-image", "qwenimage-2x")]["per_size"]
    assert {k: v["calls"] for k, v in sizes.items()} == {"64x16": 2 * (3 + 4), "16x16": 2 * 10}
    assert results["decode"]["qwen-image"]["decode_s"] > 0 and results["decode"]["wan22"]["decode_s"] > 0
    for pipe in pipes.values():
        for name in ("transformer", "transformer_2"):
            model = getattr(pipe, name, None)
            assert model is None or not any("Sparse" in type(p).__name__ for p in model.attn_processors.values())


def test_dry_run_of_the_flux2_and_hunyuan_video15_cases(tmp_path):
    pipes = {"flux2": tiny_flux2_pipeline(), "hunyuan-video15": tiny_hunyuan_video15_pipeline()}
    sparse = {"density": 0.3, "block_size": 8, "full_steps": 1}
    cases = [
        dataclasses.replace(e2e.CASES["flux2"], height=64, width=64, steps=10, repeats=1, text_tokens=16,
                            sparse=sparse),
        dataclasses.replace(e2e.CASES["hunyuan-video15"], height=64, width=64, frames=5, steps=5, repeats=1,
                            text_tokens=16, sparse=sparse),
    ]  # fmt: skip
    results = e2e.run_benchmark(e2e.E2EOptions(), tmp_path, "dry run", device="cpu", pipelines=pipes, cases=cases,
                                log=lambda message: None)  # fmt: skip
    rows = {(r["case"], r["variant"]): r for r in results["rows"]}
    assert all(r["error"] is None for r in rows.values()), results["rows"]
    # flux2-2x's (8, 20, 10) × 10/50: embedded guidance, one pass a step
    assert rows[("flux2", "flux2-2x")]["steps"] == [2, 4, 2] and rows[("flux2", "stock")]["transformer_calls"] == 10
    # hunyuanvideo15-3x's (5, 20, 8) × 5/50, at least 1 a stage; the guider's CFG: two passes a step
    assert rows[("hunyuan-video15", "hunyuanvideo15-3x")]["steps"] == [1, 2, 1]
    assert rows[("hunyuan-video15", "stock")]["transformer_calls"] == 10
    assert rows[("hunyuan-video15", "hunyuanvideo15-3x+sparse")]["transformer_calls"] == 2 * (1 + 2 + 1)
    # the real-size prompt shapes: 1000 Qwen2.5-VL and 256 ByT5 positions, the first `text_tokens` of them valid
    inputs = e2e_models.prompt_inputs(pipes["hunyuan-video15"], cases[1], torch.device("cpu"), 0)
    assert inputs["prompt_embeds"].shape[1] == 1000 and inputs["prompt_embeds_2"].shape[1] == 256
    assert inputs["prompt_embeds_mask"].sum() == 16 and inputs["negative_prompt_embeds_mask_2"].sum() == 32
    image = results["decode"]["flux2"]
    assert image["decode_s"] > 0 and results["decode"]["hunyuan-video15"]["decode_s"] > 0


def test_dry_run_of_the_sd3_case(tmp_path):
    pipe = tiny_sd3_pipeline()
    case = dataclasses.replace(e2e.CASES["sd3"], height=32, width=32, steps=14, repeats=1, text_tokens=16)
    results = e2e.run_benchmark(e2e.E2EOptions(), tmp_path, "dry run", device="cpu", pipelines={"sd3": pipe},
                                cases=[case], log=lambda message: None)  # fmt: skip
    stock, bottleneck = results["rows"]
    assert stock["error"] is None and bottleneck["error"] is None, results["rows"]
    assert bottleneck["steps"] == [2, 5, 2]  # sd3-2x's (3, 10, 5) × 14/28, rounded half to even
    # CFG in one batch-2 pass per step; the size is the latent (C, H, W) each call sees
    assert stock["transformer_calls"] == 14 and bottleneck["transformer_calls"] == 2 + 5 + 2
    assert {k: v["calls"] for k, v in bottleneck["per_size"].items()} == {"4x32x32": 4, "4x16x16": 5}
    assert results["decode"]["sd3"]["decode_s"] > 0 and bottleneck["speedup_total"] > 0


def test_a_failing_variant_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    pipe = tiny_flux_pipeline()
    case = dataclasses.replace(e2e.CASES["flux"], height=32, width=32, steps=4, repeats=1, text_tokens=16,
                               variants=("stock", "flux-2x", "flux-3x"))  # fmt: skip
    real = e2e.variant_stages

    def failing(variant, case):
        if variant == "flux-2x":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(variant, case)

    monkeypatch.setattr(e2e.run, "variant_stages", failing)  # what measure_variant calls
    results = e2e.run_benchmark(e2e.E2EOptions(decode=False), tmp_path, "dry", device="cpu", pipelines={"flux": pipe},
                                cases=[case], log=lambda message: None)  # fmt: skip
    rows = {r["variant"]: r for r in results["rows"]}
    assert rows["flux-2x"]["error"].startswith("OutOfMemoryError") and rows["flux-2x"]["denoise_s"] is None
    assert rows["flux-3x"]["error"] is None and rows["flux-3x"]["speedup_denoise"] > 0
    assert "OutOfMemoryError" in (tmp_path / f"{e2e.output_stem(results)}.md").read_text()


def test_dry_run_of_the_compile_case(tmp_path, monkeypatch):
    """wan-compile on the tiny Wan: every variant runs, the compiled ones equal their eager twins' latents (aot_eager
    on the CPU), each compiled variant is undone before the next, and the targets name their basis."""
    monkeypatch.setattr(e2e.run, "COMPILE_OPTIONS", {"fullgraph": True, "backend": "aot_eager"})
    pipe = tiny_wan_pipeline()
    case = dataclasses.replace(e2e.CASES["wan-compile"], height=64, width=64, frames=9, steps=10, repeats=1,
                               text_tokens=16, sparse={"density": 0.3, "block_size": 8, "full_steps": 1,
                                                       "refresh_every": 2})  # fmt: skip
    latents = {}
    real = e2e.run.measure_variant

    def keep(pipe, case, variant, options, device, log):
        row, last = real(pipe, case, variant, options, device, log)
        latents[variant] = last
        assert not any(getattr(m, "_compiled_call_impl", None) for m in pipe.transformer.modules())
        return row, last

    monkeypatch.setattr(e2e.run, "measure_variant", keep)
    results = e2e.run_benchmark(e2e.E2EOptions(decode=False), tmp_path, "dry run", device="cpu",
                                pipelines={"wan": pipe}, cases=[case], log=lambda message: None)  # fmt: skip
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == ["stock", "stock@compiled", "stock+sparse", "wan-3x+sparse", "wan-3x+sparse@compiled"]
    assert all(r["error"] is None for r in rows.values()), rows
    assert rows["stock@compiled"]["compiled"] == {"fullgraph": True, "backend": "aot_eager"}
    assert rows["stock"]["compiled"] is None and rows["stock+sparse"]["sparse"]["density"] == 0.3
    torch.testing.assert_close(latents["stock@compiled"], latents["stock"], rtol=0, atol=1e-5)
    torch.testing.assert_close(latents["wan-3x+sparse@compiled"], latents["wan-3x+sparse"], rtol=0, atol=1e-5)
    assert float((latents["stock+sparse"] - latents["stock"]).abs().max()) > 1e-4  # sparse attention did run
    targets = {(t["variant"], t["over"]): t for t in results["targets"]}
    assert set(targets) == {("wan-3x+sparse", "stock"), ("wan-3x+sparse@compiled", "stock"),
                            ("wan-3x+sparse@compiled", "stock@compiled")}  # fmt: skip
    over_compiled = targets[("wan-3x+sparse@compiled", "stock@compiled")]
    assert over_compiled["value"] == pytest.approx(rows["stock@compiled"]["denoise_s"]
                                                   / rows["wan-3x+sparse@compiled"]["denoise_s"])  # fmt: skip
