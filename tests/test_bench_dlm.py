"""The diffusion-LM benchmark (SparseD on LLaDA-8B shapes) on the CPU: options, the LLaDA-8B config, the
Triton routing, the step driver on a tiny bidirectional Gemma (each step the kind it claims, no attention mask on the
sparse path), the arithmetic, the writers, and dry runs of the measurement. Timings are never asserted here.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import unbottle
from unbottle.attention_processors import block_sparse, engine, reference
from unbottle.attention_processors.block_mask import pattern_to_block_mask
from unbottle.bench import dlm
from unbottle.cli import build_parser, main
from unbottle.errors import UsageError
from unbottle.pipelines.diffusion_lm import DiffusionLMPipeline

# a tiny width for the CPU; depth from DLMOptions.layers / llada_config(layers)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
            vocab_size=512, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1)  # fmt: skip
MASK = 500
BS = 16  # 160 tokens = prompt 128 (8 blocks) + 32 generated (2 blocks)
TINY_OPTIONS = dict(contexts=(160,), gen_length=32, gen_steps=5, layers=2, block_size=BS, mask_token_id=MASK,
                    densities=(0.5,), repeats=2)  # fmt: skip


def _quiet(message: str) -> None:
    pass


def _run(tmp_path, **options) -> dict:
    opts = dlm.DLMOptions(**{**TINY_OPTIONS, **options})
    return dlm.run_benchmark(opts, tmp_path, "dry run", device="cpu", dtype=torch.float32, model_overrides=TINY,
                             log=_quiet)  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer tiny-width bidirectional GemmaForCausalLM from the benchmark's own builder, and its pipeline."""
    model = dlm.build_model(dlm.llada_config(2, **TINY), "cpu", torch.float32)
    return model, DiffusionLMPipeline(model, None, mask_token_id=MASK)


# ---- options ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment", "got"),
    [
        ("contexts", (256,), "(256, 131072]", "256"),
        ("contexts", (), "at least one", "()"),
        ("gen_contexts", (999,), "among contexts", "(999,)"),
        ("gen_steps", 2, "[3, 256]", "2"),
        ("gen_steps", 300, "[3, 256]", "300"),
        ("layers", 0, "[1, 256]", "0"),
        ("modes", ("dense-sdpa",), "names from dense-cudnn", "('dense-sdpa',)"),
        ("densities", (1.0,), "(0, 1)", "1.0"),
        ("densities", (0.0,), "(0, 1)", "0.0"),
        ("repeats", 0, "≥ 1", "0"),
        ("budget_s", 0, "> 0", "0"),
        ("sections", ("prefill",), "names from steps, generation", "('prefill',)"),
        ("full_steps", 1.0, "[0, 1)", "1.0"),
    ],
)
def test_bad_options_name_the_field_the_value_and_the_range(field, value, fragment, got):
    with pytest.raises(dlm.OptionError) as info:
        dlm.DLMOptions(**{field: value})
    message = str(info.value)
    assert info.value.field == field and message.startswith(f"DLMOptions.{field} ")
    assert fragment in message and message.endswith(f"got {got}"), message


def test_options_from_the_command_line():
    parser = dlm.build_parser("bench/diffusion_lm.py")
    default = dlm.options_from_args(parser.parse_args([]))
    assert default == dlm.DLMOptions()
    assert default.contexts == (8192, 16384, 32768, 65536) and default.generation_contexts == default.contexts
    assert (default.gen_length, default.gen_steps, default.repeats, default.densities) == (256, 16, 3, (0.3, 0.1))
    assert default.gen_modes == ("dense-cudnn", "sparsed-flex", "sparsed-triton") and default.budget_s == 420
    quick = dlm.options_from_args(parser.parse_args(["--layers", "2", "--quick"]))
    assert (quick.contexts, quick.repeats, quick.gen_steps, quick.layers) == ((8192, 16384), 2, 8, 2)
    custom = dlm.options_from_args(parser.parse_args(
        ["--contexts", "8k,65536", "--gen-contexts", "none", "--modes", "dense-flash,sparsed-triton", "--densities",
         "0.2", "--sections", "steps", "--budget-s", "60", "--repeats", "5", "--gen-modes", "none"]
    ))  # fmt: skip
    assert custom.contexts == (8192, 65536) and custom.gen_contexts == () and custom.generation_contexts == ()
    assert custom.modes == ("dense-flash", "sparsed-triton") and custom.densities == (0.2,) and custom.repeats == 5
    assert custom.sections == ("steps",) and custom.budget_s == 60.0 and custom.gen_modes == ()
    bad_steps = "--gen-steps: DLMOptions.gen_steps must be an integer in \\[3, 256\\], got 2"
    with pytest.raises(UsageError, match=bad_steps):
        dlm.options_from_args(parser.parse_args(["--gen-steps", "2"]))
    with pytest.raises(UsageError, match="--contexts"):
        dlm.options_from_args(parser.parse_args(["--contexts", "200"]))
    with pytest.raises(argparse.ArgumentTypeError, match="--modes"):
        dlm.parse_modes("dense-sdpa")
    with pytest.raises(argparse.ArgumentTypeError, match="--contexts"):
        dlm.parse_contexts("8q")
    args = build_parser().parse_args(["bench", "dlm", "--layers", "2", "--quick", "--densities", "0.1"])
    assert args.suite == "dlm" and dlm.options_from_args(args).densities == (0.1,)


# ---- the model ----------------------------------------------------------------------------------------------------


def test_llada_8b_config_and_parameter_count():
    """LLaDA-8B (Nie et al., 2025): 4096 wide, 32 layers, 32 × 128 heads, SwiGLU 12288, vocab 126464 → 8.02B."""
    config = dlm.llada_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (4096, 32, 32)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (32, 128, 12288)
    assert (config.vocab_size, config.hidden_act, config.tie_word_embeddings) == (126464, "silu", False)
    assert config.use_bidirectional_attention is True and config.is_causal is False
    assert config.max_position_embeddings >= 65536 + 256 and config._attn_implementation == "sdpa"
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 12288 + 2 * 4096
    assert dlm.parameter_count(config) == 2 * 126464 * 4096 + 32 * per_layer + 4096 == 8_015_581_184
    # the formula against real modules: 2 full-width layers on the meta device (no memory), and a tiny CPU variant
    two = dlm.build_model(dlm.llada_config(2), "meta", torch.bfloat16)
    assert sum(p.numel() for p in two.parameters()) == dlm.parameter_count(two.config)
    assert two.dtype == torch.bfloat16 and type(two.model.layers[0].mlp.act_fn).__name__ == "SiLUActivation"
    assert all(not layer.self_attn.is_causal for layer in two.model.layers)
    small = dlm.build_model(dlm.llada_config(2, **TINY), "cpu", torch.float32)
    assert sum(p.numel() for p in small.parameters()) == dlm.parameter_count(small.config)
    assert not small.training and not any(p.requires_grad for p in small.parameters())


# ---- routing and counting the engine's sparse calls ---------------------------------------------------------------


def _engine_call(mask=None):
    """One block-sparse call of the engine (B=1, H=2, N=32, D=8, blocks of 16, all kept), with an optional mask."""
    q, k, v = (torch.randn(1, 2, 32, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    indices = torch.tensor([[0, 1], [0, 1]], dtype=torch.int32).expand(1, 2, 2, 2)  # (B, H, nQ, K)
    block_mask = pattern_to_block_mask(indices, torch.full((1, 2, 2), 2, dtype=torch.int32), 16, 32, 32)
    return engine.run_block_sparse(engine.AttentionCall(q, k, v, None, mask), block_mask)


def test_triton_route_swaps_the_engines_kernel_and_restores_it():
    from unbottle.attention_processors.kernels import block_sparse_attention_triton

    def spy(*args, **kwargs):  # the engine's own kernel, recording that it was the one called
        seen.append("spy")
        return block_sparse.block_sparse_attention(*args, **kwargs)

    seen, padding = [], torch.ones(1, 1, 32, 32, dtype=torch.bool)
    expected = _engine_call()
    with dlm.route_sparse_attention(spy) as calls:
        assert calls.kernel is spy
        torch.testing.assert_close(_engine_call(), expected)  # the engine's mask-free call ran on `spy`
        _engine_call(padding)  # a call with a mask: the reference, counted
        assert seen == ["spy"] and (calls.fast, calls.masked_reference) == (1, 1)
    _engine_call(), _engine_call(padding)
    assert seen == ["spy"] and (calls.fast, calls.masked_reference) == (1, 1)  # routed back to the engine's own
    with pytest.raises(RuntimeError, match="inside"), dlm.route_sparse_attention(spy):
        raise RuntimeError("inside")
    _engine_call()
    assert seen == ["spy"]  # restored on an error too
    assert engine.block_sparse_attention is block_sparse.block_sparse_attention  # no module global is swapped
    assert engine.block_sparse_attention_reference is reference.block_sparse_attention_reference
    with dlm.triton_sparse_attention() as calls:
        assert calls.kernel is block_sparse_attention_triton
    with dlm.route_sparse_attention() as calls:
        assert calls.kernel is block_sparse.block_sparse_attention  # default: the engine's own function
    # the two sparse modes: FlexAttention alone (the engine's call takes our kernel on Hopper at long contexts)
    with dlm.kernel_route("sparsed-flex") as calls:
        assert calls.kernel is block_sparse.block_sparse_attention_flex
    with dlm.kernel_route("sparsed-triton") as calls:
        assert calls.kernel is block_sparse_attention_triton


def test_step_driver_runs_each_kind_and_the_sparse_path_gets_no_mask(tiny):
    """Dense → pattern (one pattern per layer) → cached sparse (none), every sparse call mask-free (SparseD)."""
    model, pipe = tiny
    layers = model.config.num_hidden_layers
    prompt = dlm.prompt_ids(160, dlm.DLMOptions(**TINY_OPTIONS), model.config.vocab_size, torch.device("cpu"))
    assert prompt.shape == (1, 128) and int(prompt.max()) < MASK
    driver = dlm.StepDriver(pipe, prompt, 32, total_steps=5, full_steps=0.2)
    assert driver.first_sparse == 1 and driver.x.shape == (1, 160) and bool((driver.x[0, 128:] == MASK).all())
    assert driver.dense().shape == (1, 32, model.config.vocab_size) and driver.last_kind is None  # no engine yet
    config = dlm.sparse_config(dlm.DLMOptions(**TINY_OPTIONS), 0.5)
    assert (config.pattern, config.reshape, config.full_steps, config.block_size) == ("cached", False, 0.2, BS)
    handle = unbottle.enable_sparse_attention(model, config)
    try:
        with dlm.route_sparse_attention() as calls:
            counts = lambda: (sum(handle.pattern_computations.values()), calls.fast, calls.masked_reference)  # noqa: E731
            logits = driver.dense()
            assert driver.last_kind == "dense" and counts() == (0, 0, 0)
            logits = driver.pattern()
            assert driver.last_kind == "sparse" and counts() == (layers, layers, 0)
            assert set(handle.pattern_computations) == {f"model.layers.{i}.self_attn" for i in range(layers)}
            for i in range(2):
                logits = driver.sparse()
                assert driver.last_kind == "sparse" and counts() == (layers, (2 + i) * layers, 0)
            assert logits.shape == (1, 32, model.config.vocab_size) and logits.dtype == torch.float64
            assert dlm.step_kind_from_counts(layers, layers, 0, layers) == "pattern"
            assert dlm.step_kind_from_counts(0, layers, 0, layers) == "sparse"
            assert dlm.step_kind_from_counts(0, 0, 0, layers) == "dense"
            # the counter does see the masked branch: a padded input carries a mask and falls back to the reference
            padded = torch.ones_like(driver.x)
            padded[0, 0] = 0
            with torch.no_grad():
                model(input_ids=driver.x, attention_mask=padded, use_cache=False)
            assert calls.masked_reference == layers and calls.fast == 3 * layers
    finally:
        unbottle.disable_sparse_attention(model)
    assert engine.block_sparse_attention is block_sparse.block_sparse_attention


# ---- arithmetic and writers ---------------------------------------------------------------------------------------


def test_schedule_and_composed_time():
    assert dlm.schedule_counts(16, 0.2) == (4, 1, 11)  # SparseD skip 0.2: steps 0–3 dense, 4 pattern, 5–15 cached
    assert dlm.schedule_counts(128, 0.2) == (26, 1, 101) and dlm.schedule_counts(1024, 0.2) == (205, 1, 818)
    assert dlm.schedule_counts(5, 0.0) == (0, 1, 4)
    assert dlm.composed_seconds(2.0, 10.0, 1.0, 16, 0.2) == pytest.approx(4 * 2.0 + 10.0 + 11 * 1.0)
    assert dlm.expected_kinds("sparsed-flex", 5, 0.2) == ["dense", "pattern", "sparse", "sparse", "sparse"]
    assert dlm.expected_kinds("dense-flash", 3, 0.2) == ["dense"] * 3


def _gpu_like_results() -> dict:
    options = dlm.DLMOptions(contexts=(65536,))
    results = dlm.run._environment(torch.device("cpu"), torch.bfloat16, "python bench/diffusion_lm.py -o x", options,
                               dlm.llada_config(), real_size=True)  # fmt: skip
    results.update(gpu="NVIDIA H200", gpu_tag="h200")

    def step(mode, kind, s, density=None):
        return dict(dlm.run._step_row(65536, options, mode, density, kind), s=s, times_s=[s] * 3)

    results["steps_rows"] = [
        step("dense-cudnn", "dense", 5.7), step("dense-flash", "dense", 6.3),
        step("sparsed-triton", "pattern", 45.0, 0.1), step("sparsed-triton", "sparse", 2.3, 0.1),
    ]  # fmt: skip
    results["generation_rows"] = [
        dict(dlm.run._gen_row(65536, options, "dense-cudnn", None), s=92.0),
        dict(dlm.run._gen_row(65536, options, "sparsed-triton", 0.1), s=96.5, kinds_ok=True),
    ]
    return dlm.finish(results)


def test_markdown_shows_the_ratios_of_the_row_numbers(tmp_path):
    results = _gpu_like_results()
    paths = dlm.write_outputs(results, tmp_path)
    assert paths["json"].name == "dlm-h200-64k.json" and paths["md"].name == "dlm-h200-64k.md"
    md = paths["md"].read_text()
    step_ratio, flash_ratio = 5.7 / 2.3, 6.3 / 2.3
    assert f"| 64k | sparsed-triton | 0.1 | sparse | 2.300 | 2.300, 2.300, 2.300 | {step_ratio:.2f}× | " in md
    assert f"{flash_ratio:.2f}× |" in md and "| 64k | dense-cudnn | — | dense | 5.700 |" in md
    composed = 4 * 5.7 + 45.0 + 11 * 2.3
    gen = [r for r in results["generation_rows"] if r["mode"] == "sparsed-triton"][0]
    assert gen["composed_s"] == pytest.approx(composed) and gen["vs_dense_cudnn"] == pytest.approx(92.0 / 96.5)
    assert gen["vs_dense_flash"] == pytest.approx(16 * 6.3 / 96.5) and gen["vs_dense_flash_basis"] == "T × step"
    assert f"| {92.0 / 96.5:.2f}× | {16 * 6.3 / 96.5:.2f}×* | {composed:.2f} | {composed / 96.5:.2f} |" in md
    t1024 = [e for e in results["composed"] if e["steps"] == 1024][0]
    expected = 1024 * 5.7 / (205 * 5.7 + 45.0 + 818 * 2.3)
    assert t1024["vs_dense_cudnn"] == pytest.approx(expected) and "| 1024 | " in md and f"{expected:.2f}×" in md
    target = results["target"]
    assert target["met"] is False and target["context"] == 65536 and target["speedup"] == 2.0
    assert "measured whole generation: **not met**" in md and "| cached sparse step vs dense-cudnn step |" in md
    assert "LLaDA-8B-shaped GemmaForCausalLM, 32 layers, real-size" in md and "8.02B parameters" in md
    assert json.loads(paths["json"].read_text())["model"]["parameters"] == 8_015_581_184
    results["options"].update(layers=2, quick=True, contexts=[8192, 16384], sections=["steps"])
    assert dlm.output_stem(results) == "dlm-h200-2l-steps-quick"


# ---- dry runs on the tiny model -----------------------------------------------------------------------------------


def test_dry_run_fills_every_row_and_records_failing_ones(tmp_path):
    results = _run(tmp_path, gen_modes=("dense-cudnn", "sparsed-flex", "sparsed-triton"))
    steps = {(r["mode"], r["kind"]): r for r in results["steps_rows"]}
    assert list(steps) == [("dense-cudnn", "dense"), ("dense-flash", "dense"), ("sparsed-flex", "pattern"),
                           ("sparsed-flex", "sparse"), ("sparsed-triton", "pattern"),
                           ("sparsed-triton", "sparse")]  # fmt: skip
    for key in (("dense-cudnn", "dense"), ("dense-flash", "dense"), ("sparsed-flex", "pattern"),
                ("sparsed-flex", "sparse")):  # fmt: skip
        r = steps[key]
        assert r["error"] is None and r["skipped"] is None and r["s"] > 0 and r["logits_finite"] is True, r
    assert len(steps["dense-cudnn", "dense"]["times_s"]) == 2 and len(steps["dense-cudnn", "dense"]["warmup_s"]) == 1
    pattern, sparse = steps["sparsed-flex", "pattern"], steps["sparsed-flex", "sparse"]
    assert pattern["patterns_added"] == [2] and pattern["fast_calls"] == [2] and pattern["check_ok"] is True
    assert sparse["patterns_added"] == [0, 0, 0] and sparse["fast_calls"] == [2, 2, 2] and sparse["check_ok"]
    assert pattern["masked_reference_calls"] == [0] and sparse["masked_reference_calls"] == [0, 0, 0]
    assert sparse["vs_dense_cudnn"] == pytest.approx(steps["dense-cudnn", "dense"]["s"] / sparse["s"])
    # the Triton kernel needs CUDA: its rows record the error and the run goes on
    assert "CUDA" in steps["sparsed-triton", "pattern"]["error"] and steps["sparsed-triton", "sparse"]["error"]
    gens = {r["mode"]: r for r in results["generation_rows"]}
    dense, flex = gens["dense-cudnn"], gens["sparsed-flex"]
    assert dense["kinds_ok"] and dense["step_kinds"] == ["dense"] * 5 and len(dense["step_times_s"]) == 5
    assert flex["error"] is None and flex["kinds_ok"] is True and flex["patterns_added"] == 2
    assert flex["step_kinds"] == ["dense", "pattern", "sparse", "sparse", "sparse"]
    composed = steps["dense-cudnn", "dense"]["s"] + pattern["s"] + 3 * sparse["s"]
    assert flex["composed_s"] == pytest.approx(composed) and math.isfinite(flex["composed_over_measured"])
    assert sum(flex["step_times_s"]) <= flex["s"] and flex["vs_dense_cudnn"] == pytest.approx(dense["s"] / flex["s"])
    assert gens["sparsed-triton"]["error"] and results["setup_error"] is None
    assert results["model"]["is_causal"] is False
    assert results["model"]["parameters"] == dlm.parameter_count(dlm.llada_config(2, **TINY))
    assert [e["steps"] for e in results["composed"]] == [5, 128, 1024]
    assert engine.block_sparse_attention is block_sparse.block_sparse_attention  # every route restored
    assert len(dlm.failed_rows(results)) == 3  # Triton's pattern and sparse step rows, and its generation row
    stem = dlm.output_stem(results)
    assert stem == "dlm-cpu-cpu-2l-160-d0.5"
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data["command"] == "dry run" and len(data["steps_rows"]) == 6 and data["wall_s"] is not None
    assert "## Errors" in (tmp_path / f"{stem}.md").read_text()


def test_rows_past_the_budget_are_skipped_and_marked(tmp_path):
    results = _run(tmp_path, budget_s=1e-6, modes=("dense-cudnn", "sparsed-flex"), gen_modes=("dense-cudnn",))
    rows = results["steps_rows"] + results["generation_rows"]
    assert len(rows) == 4 and all(r["skipped"].startswith("budget") and r["error"] is None for r in rows)
    assert not dlm.failed_rows(results)
    assert "4 row(s) skipped" in (tmp_path / f"{dlm.output_stem(results)}.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_and_script_refuse_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "dlm", "--layers", "2", "--quick", "-o", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err == [f"unbottle bench: error: {dlm.NO_CUDA_MESSAGE}"]
    assert dlm.main(["--layers", "2", "-o", str(tmp_path / "out")]) == 2
    assert dlm.NO_CUDA_MESSAGE in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
