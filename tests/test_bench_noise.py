"""The noise-search benchmark (CARINOX / ReNO) on the CPU: real-size configs built on the meta device, the
writers, the command line, and dry runs of the measurement on tiny models (the code path the H200 runs). Timings are
never asserted here.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
from pathlib import Path

import pytest
import torch

from unbottle.bench import noise
from unbottle.cli import build_parser, main
from unbottle.errors import UsageError
from unbottle.pipelines import noise_search

ROOT = Path(__file__).resolve().parents[1]
TINY = noise.Models(
    unet=dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=16, use_linear_projection=True, norm_num_groups=4,
    ),
    vae=dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), latent_channels=4, norm_num_groups=2,
        scaling_factor=0.18215,
    ),
    text_encoder=dict(
        vocab_size=1000, hidden_size=16, intermediate_size=37, projection_dim=16, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ),
    reward_model="unbottle-bench-noise-tiny-clip",
    reward_config={
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
)  # fmt: skip
TINY_OPTIONS = dict(size=32, iterations=2, warmup=1, plain_repeats=1)
ROW_KEYS = {
    "variant", "gradient_checkpointing", "batched_vjp", "compile", "size", "warmup_iterations", "iterations",
    "timed_iterations", "warmup_s", "times_s", "s_per_it", "it_per_s", "vs_plain", "peak_gib", "peak_gb",
    "reserved_gib", "weights_gib", "search_s", "loss_finite", "meets_time", "meets_memory", "stopped", "error",
}  # fmt: skip


def _quiet(message: str) -> None:
    pass


def _run(tmp_path: Path, **options) -> dict:
    opts = noise.NoiseOptions(**{**TINY_OPTIONS, **options})
    return noise.run_benchmark(opts, tmp_path, "dry run", device="cpu", dtype=torch.float32, models=TINY, log=_quiet)


# ---- real-size configs --------------------------------------------------------------------------------------------


def test_real_size_models_have_the_published_shapes():
    """SD-Turbo = SD 2.1 shapes (UNet 865.9M, VAE 83.7M, OpenCLIP-H text 340.4M); ViT-H-14 rewards (986.1M)."""
    models = noise.Models()
    pipe = noise.build_pipeline(models, "meta", torch.float16)  # shapes only, nothing allocated
    counts = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "vae", "text_encoder")}
    for name, expected in (("unet", 865.91e6), ("vae", 83.65e6), ("text_encoder", 340.39e6)):
        assert abs(counts[name] - expected) / expected < 0.001, (name, counts[name])
    assert pipe.unet.dtype == torch.float16 and pipe.vae.config.scaling_factor == 0.18215
    assert pipe.unet.config.attention_head_dim == (5, 10, 20, 20) and pipe.unet.config.use_linear_projection
    assert pipe.unet.config.cross_attention_dim == 1024 and pipe.text_encoder.config.num_hidden_layers == 23
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.tokenizer.model_max_length == 77
    rewards = noise.build_rewards(models, "meta", torch.float16)
    assert [type(r).__name__ for r in rewards.values()] == ["HPSReward", "CLIPScoreReward"]
    for reward in rewards.values():
        n = sum(p.numel() for p in reward.parameters())
        assert abs(n - 986.11e6) / 986.11e6 < 0.001 and reward.dtype == torch.float16
        assert reward.transform.size == 224 and reward.tokenizer(["a red cube"]).shape == (1, 77)


# ---- dry runs on tiny models --------------------------------------------------------------------------------------


def test_dry_run_on_tiny_models_fills_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(noise_search, "COMPILE_OPTIONS", {"backend": "aot_eager"})  # inductor's CPU build: minutes
    results = _run(tmp_path)
    rows = results["rows"]
    assert [r["variant"] for r in rows] == list(noise.DEFAULT_VARIANTS)
    assert noise.DEFAULT_VARIANTS == ("autograd", "checkpointing", "batched-vjp", "compiled")
    assert [(r["gradient_checkpointing"], r["batched_vjp"], r["compile"]) for r in rows] == [
        (False, False, False), (True, False, False), (False, True, False), (False, False, True)]  # fmt: skip
    plain = results["plain"]
    assert plain["error"] is None and plain["s"] > 0 and len(plain["times_s"]) == 1
    for r in rows:
        assert set(r) == ROW_KEYS and r["error"] is None and r["stopped"] is None, r
        assert r["timed_iterations"] == 2 and len(r["warmup_s"]) == 1 and r["warmup_iterations"] == 1
        assert all(math.isfinite(t) and t > 0 for t in r["times_s"] + r["warmup_s"])
        assert r["s_per_it"] == pytest.approx(sum(r["times_s"]) / 2) and r["it_per_s"] > 0 and r["vs_plain"] > 0
        assert r["search_s"] > sum(r["times_s"]) and r["loss_finite"] is True
        assert r["peak_gb"] is None and r["meets_memory"] is None  # no CUDA memory statistics on the CPU
        assert isinstance(r["meets_time"], bool)
    assert set(results["parameters"]) == {"unet", "vae", "text_encoder", "hps", "clip"}
    assert results["models"].startswith("custom") and results["setup_error"] is None
    stem = noise.output_stem(results)
    assert stem.startswith("noise-cpu") and stem.endswith("-32")  # the size is not the default 512
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data["command"] == "dry run" and len(data["rows"]) == 4 and data["wall_s"] is not None
    assert data["reward_weights"] == {"hps": 5.0, "clip": 1.0} and data["targets"] == {"s_per_it": 0.25, "peak_gb": 12}
    md = (tmp_path / f"{stem}.md").read_text()
    assert "`dry run`" in md and "plain generation (no grad):" in md
    for r in rows:
        assert f"| {r['variant']} | {'on' if r['gradient_checkpointing'] else 'off'} |" in md
        assert f"| {'on' if r['compile'] else 'off'} | {r['s_per_it']:.3f} |" in md
        assert f"| {r['s_per_it']:.3f} |" in md
    assert "ReNO" in md and "0.4 s/it" in md and "≤ 0.25 s/it" in md
    assert "custom configs (not real-size)" in md and "- real-size:" not in md  # tiny configs are not called real


def test_a_row_past_its_budget_stops_with_what_it_timed(tmp_path):
    results = _run(tmp_path, variants=["autograd"], warmup=2, iterations=3, row_budget_s=1e-9)
    (row,) = results["rows"]
    assert row["error"] is None and row["stopped"].startswith("row budget")
    assert row["warmup_iterations"] == 1 and row["timed_iterations"] == 1  # the warm-up was cut short too
    assert row["s_per_it"] == row["times_s"][0] > 0 and row["search_s"] is None
    assert "row budget" in (tmp_path / f"{noise.output_stem(results)}.md").read_text()


def test_a_failing_row_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = noise.make_search

    def failing(pipe, rewards, variant, options):
        if variant == "checkpointing":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, rewards, variant, options)

    monkeypatch.setattr(noise.run, "make_search", failing)  # what measure_variant calls
    results = _run(tmp_path, variants=["checkpointing", "autograd"])
    rows = {r["variant"]: r for r in results["rows"]}
    assert rows["checkpointing"]["error"].startswith("OutOfMemoryError") and rows["checkpointing"]["s_per_it"] is None
    assert rows["autograd"]["error"] is None and rows["autograd"]["s_per_it"] > 0
    assert noise.output_stem(results).endswith("-checkpointing_autograd-32")
    assert "OutOfMemoryError" in (tmp_path / f"{noise.output_stem(results)}.md").read_text()


# ---- writers, options, command line -------------------------------------------------------------------------------


def test_markdown_of_a_gpu_like_result(tmp_path):
    results = noise.run._environment(torch.device("cpu"), torch.float16, "python bench/noise_search.py -o x",
                                 noise.NoiseOptions(), noise.Models())  # fmt: skip
    results.update(gpu="NVIDIA H200", gpu_tag="h200", plain={"s": 0.05, "peak_gb": 7.0, "error": None})
    fast = dict(noise.run._new_row("autograd", noise.NoiseOptions()), times_s=[0.2] * 5, timed_iterations=5,
                s_per_it=0.2, it_per_s=5.0, vs_plain=4.0, peak_gb=11.5, peak_gib=10.71, meets_time=True,
                meets_memory=True)  # fmt: skip
    slow = dict(noise.run._new_row("checkpointing", noise.NoiseOptions()), s_per_it=0.3, meets_time=False,
                peak_gb=13.0, meets_memory=False)  # fmt: skip
    results["rows"] = [fast, slow]
    paths = noise.write_outputs(results, tmp_path)
    assert paths["json"].name == "noise-h200.json" and paths["md"].name == "noise-h200.md"
    md = paths["md"].read_text()
    assert "| autograd | off | off | off | 0.200 | 5.00 | 4.0× | 11.50 | 10.71 |" in md and "| 5/5 |" in md
    assert md.count("| ✓ | ✓ |") == 1 and md.count("| ✗ | ✗ |") == 1
    assert "SD-Turbo-shaped, real-size" in md and "python bench/noise_search.py -o x" in md
    assert "- real-size: everything that runs per iteration" in md and "- not real-size: the prompt tokenizer" in md
    results["options"].update(quick=True, size=768)
    assert noise.output_stem(results) == "noise-h200-768-quick"


def test_options_from_the_command_line():
    parser = noise.build_parser("bench/noise_search.py")
    quick = noise.options_from_args(parser.parse_args(["--quick"]))
    assert (quick.iterations, quick.warmup, quick.plain_repeats, quick.size) == (2, 1, 1, 512)
    default = noise.options_from_args(parser.parse_args([]))
    assert (default.iterations, default.warmup, default.variants) == (5, 2, list(noise.DEFAULT_VARIANTS))
    custom = noise.options_from_args(parser.parse_args(
        ["--iterations", "7", "--warmup-iterations", "0", "--size", "256", "--variants", "checkpointing,autograd",
         "--row-budget", "30", "--seed", "3"]
    ))  # fmt: skip
    assert (custom.iterations, custom.warmup, custom.size, custom.seed) == (7, 0, 256, 3)
    assert custom.variants == ["checkpointing", "autograd"] and custom.row_budget_s == 30.0
    for bad in (["--size", "500"], ["--iterations", "0"], ["--warmup-iterations", "-1"], ["--row-budget", "0"]):
        with pytest.raises(UsageError):
            noise.options_from_args(parser.parse_args(bad))
    with pytest.raises(argparse.ArgumentTypeError, match="--variants"):
        noise.parse_variants("fp8")
    args = build_parser().parse_args(["bench", "noise", "--quick", "--size", "256", "--iterations", "3"])
    assert args.suite == "noise" and noise.options_from_args(args).iterations == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_refuses_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "noise", "-o", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err == [f"unbottle bench: error: {noise.NO_CUDA_MESSAGE}"]
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_script_refuses_without_cuda(tmp_path, capsys):
    script = runpy.run_path(str(ROOT / "bench" / "noise_search.py"), run_name="bench_noise_search")
    assert script["main"](["--quick", "-o", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err == [f"bench/noise_search.py: error: {noise.NO_CUDA_MESSAGE}"]
    assert not (tmp_path / "out").exists()
