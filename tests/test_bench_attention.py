"""The attention benchmark on the CPU: its masks, FLOP accounting, JSON/markdown writer and command line.

Timings need a GPU and are never asserted here; the benchmark itself runs on the H200 (bench/README.md).
"""

import json
import math
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unbottle.attention_processors.block_mask import dense_block_mask, pattern_to_block_mask
from unbottle.bench import attention as bench
from unbottle.bench.results import git_commit, gpu_tag
from unbottle.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ---- masks --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, heads, density", [(4608, 3, 0.03), (4608, 2, 0.10), (1000, 2, 0.25), (300, 2, 0.05), (17776, 1, 0.05),
                          (640, 2, 1.0)],
)  # fmt: skip
def test_mask_has_the_requested_density_within_one_block_per_row(n, heads, density):
    indices, counts = bench.random_block_pattern(n, heads, density, 128, seed=0)
    nb = math.ceil(n / 128)
    assert indices.dtype == counts.dtype == torch.int32
    assert counts.shape == (1, heads, nb) and indices.shape[:3] == (1, heads, nb)
    assert bool((counts >= 1).all())
    assert bool(((counts.double() / nb - density).abs() <= 1 / nb + 1e-9).all())
    valid = torch.arange(indices.shape[-1]) < counts[..., None]
    kept = indices[valid]
    assert bool(((kept >= 0) & (kept < nb)).all())
    for row, count in zip(indices.reshape(-1, indices.shape[-1]), counts.reshape(-1), strict=True):
        assert len(set(row[:count].tolist())) == int(count)  # no block listed twice


def test_block_mask_keeps_exactly_the_listed_blocks():
    n = 300  # blocks of 128, 128, 44 tokens
    indices, counts = bench.random_block_pattern(n, 2, 0.5, 128, seed=3)
    tokens = dense_block_mask(pattern_to_block_mask(indices, counts, 128, n, n))  # (1, 2, N, N) bool
    kept_keys = tokens.sum(-1)[..., ::128]  # (1, 2, nQ) keys per query-block row
    lengths = bench.block_lengths(n, 128)
    for h in range(2):
        for qb in range(3):
            assert int(kept_keys[0, h, qb]) == int(lengths[indices[0, h, qb, : counts[0, h, qb]].long()].sum())


def test_mask_is_seeded_deterministic_and_nested_across_densities():
    a = bench.random_block_pattern(4608, 4, 0.1, seed=7)
    b = bench.random_block_pattern(4608, 4, 0.1, seed=7)
    c = bench.random_block_pattern(4608, 4, 0.1, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    wide_idx, wide_counts = bench.random_block_pattern(4608, 4, 0.25, seed=7)
    for narrow, wide, nc, wc in zip(a[0].flatten(0, 2), wide_idx.flatten(0, 2), a[1].flatten(), wide_counts.flatten(),
                                    strict=True):  # fmt: skip
        assert set(narrow[:nc].tolist()) <= set(wide[:wc].tolist())


def test_calibrated_mask_keeps_the_fewest_blocks_holding_one_coverage_at_the_uniform_mean():
    from unbottle.attention_processors.patterns import keep_count

    n, heads, density = 4096, 4, 0.1  # 32 key blocks: the uniform budget keeps 4 per row
    indices, counts, coverage = bench.calibrated_block_pattern(n, heads, density, 128, seed=0)
    nb = 32
    assert counts.shape == (1, heads, nb) and indices.dtype == counts.dtype == torch.int32 and 0 < coverage < 1
    assert float(counts.double().mean()) / nb == pytest.approx(keep_count(density, nb) / nb, abs=0.01)
    per_head = counts.double().mean(-1).flatten()  # (H,): head 0 diffuse keeps most, head H - 1 peaked keeps fewest
    assert per_head[0] > per_head[-1] and len(set(counts.flatten().tolist())) > 2  # counts vary per row
    # rebuild the masses as the definition states: each row's kept blocks are its top-mass blocks reaching coverage
    generator = torch.Generator().manual_seed(0)
    temperature = torch.logspace(math.log10(0.5), math.log10(4.0), heads).view(1, heads, 1, 1)
    mass = (torch.randn(1, heads, nb, nb, generator=generator) * temperature).softmax(-1).double()
    for h in range(heads):
        for q in range(nb):
            count = int(counts[0, h, q])
            ranked = mass[0, h, q].sort(descending=True).values
            kept = mass[0, h, q, indices[0, h, q, :count].long()]
            assert torch.equal(kept.sort(descending=True).values, ranked[:count])  # the top blocks by mass
            assert float(ranked[: count - 1].sum()) < coverage <= float(ranked[:count].sum()) + 1e-6  # the fewest


def test_calibrated_budget_is_an_option_and_labelled_in_the_table():
    parser = bench.build_parser()
    options = bench.options_from_args(parser.parse_args(["--budget", "calibrated", "--densities", "0.1"]))
    assert options.budget == "calibrated" and bench.options_from_args(parser.parse_args([])).budget == "uniform"
    with pytest.raises(SystemExit):
        parser.parse_args(["--budget", "topp"])


# ---- FLOPs --------------------------------------------------------------------------------------------------------


def test_flops_on_a_hand_checkable_mask():
    # N = 300: query/key blocks of 128, 128 and 44 tokens; D = 2; one head
    indices = torch.tensor([[[[0, 9], [1, 2], [2, 0]]]], dtype=torch.int32)  # the 9 is padding past count 1
    counts = torch.tensor([[[1, 2, 1]]], dtype=torch.int32)
    # row 0: 128 rows × 128 keys; row 1: 128 rows × (128 + 44) keys; row 2: 44 rows × 44 keys; 4·D per pair
    expected = 4 * 2 * (128 * 128 + 128 * 172 + 44 * 44)
    assert expected == 322_688
    assert bench.computed_flops(indices, counts, 300, 300, 128, 2) == expected
    assert bench.computed_flops(indices, counts, 300, 300, 128, 2, batch=3) == 3 * expected
    every = torch.tensor([[[[0, 1, 2]] * 3]], dtype=torch.int32)  # all blocks kept = dense
    assert bench.computed_flops(every, torch.full((1, 1, 3), 3), 300, 300, 128, 2) == 720_000
    assert bench.dense_flops(300, 300, 1, 2) == 4 * 300 * 300 * 2 == 720_000


def test_flops_of_a_random_mask_scale_with_density():
    n, h, d = 4608, 2, 64  # 36 full blocks: kept fraction = counts / 36 exactly
    indices, counts = bench.random_block_pattern(n, h, 0.25, seed=0)
    flops = bench.computed_flops(indices, counts, n, n, 128, d)
    assert flops == 4 * d * 128 * 128 * int(counts.sum())
    assert flops / bench.dense_flops(n, n, h, d) == pytest.approx(float(counts.float().mean()) / 36)


# ---- results: ratios, JSON, markdown ------------------------------------------------------------------------------


def _row(shape="4608x24x128", density=0.1, ms=None, error=None, ok=True, err=1e-3):
    n, h, d = map(int, shape.split("x"))
    row = {
        "shape": shape, "n": n, "heads": h, "head_dim": d, "batch": 1, "density": density, "block_size": 128,
        "n_blocks": 36, "kept_blocks_per_row": 4, "actual_density": 4 / 36, "computed_fraction": 4 / 36,
        "flops": 2_000_000_000, "dense_flops": 18_000_000_000,
        "ms": ms or {"sdpa_cudnn": 4.0, "sdpa_flash": 8.0, "flex": 1.0, "ours": 0.5}, "error": error or {},
        "check": {"reference": "flex", "max_abs_err": err, "rel_err": err, "ok": ok, "error": None},
    }  # fmt: skip
    return bench.finish_row(row)


def test_ratios_and_tflops():
    row = _row()
    assert row["tflops"]["ours"] == pytest.approx(2e9 / 0.5e-3 / 1e12)  # 4 TFLOP/s on the kept blocks
    assert row["tflops"]["sdpa_cudnn"] == pytest.approx(18e9 / 4e-3 / 1e12)  # dense FLOPs for dense SDPA
    assert row["speedup_vs_cudnn"] == pytest.approx({"sdpa_flash": 0.5, "flex": 4.0, "ours": 8.0})
    assert row["speedup_vs_flex"] == pytest.approx({"sdpa_cudnn": 0.25, "sdpa_flash": 0.125, "ours": 2.0})
    failed = _row(ms={"sdpa_cudnn": None, "sdpa_flash": 8.0, "flex": None, "ours": 0.5},
                  error={"sdpa_cudnn": "RuntimeError: no kernel", "flex": "OutOfMemoryError: oom"})  # fmt: skip
    assert failed["speedup_vs_cudnn"]["ours"] is None and failed["speedup_vs_flex"]["ours"] is None
    assert failed["tflops"]["flex"] is None and failed["tflops"]["ours"] == pytest.approx(4.0)


def test_json_and_markdown_writer(tmp_path, capsys):
    results = {
        "gpu": "NVIDIA H200", "gpu_tag": gpu_tag("NVIDIA H200"), "command": "python bench/attention.py -o x",
        "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0", "cudnn": 91000, "block_size": 128,
        "check_tolerance": bench.CHECK_TOLERANCE,
        "rows": [
            _row(density=1.0, ms={"sdpa_cudnn": 4.0, "sdpa_flash": 8.0, "flex": 5.0, "ours": 4.0}),
            _row(density=0.1),
            _row("75600x24x128", 0.03, ms={"sdpa_cudnn": 30.0, "sdpa_flash": None, "flex": 2.0, "ours": 1.0},
                 error={"sdpa_flash": "OutOfMemoryError: CUDA out of memory"}, ok=False, err=float("nan")),
        ],
        "first_call": {
            "heads": 12, "head_dim": 128, "density": 0.1, "lengths": [14040, 20280], "fresh_caches": True,
            "ours": [{"n": 14040, "first_call_ms": 900.0, "warm_call_ms": 0.3, "error": None},
                     {"n": 20280, "first_call_ms": 0.6, "warm_call_ms": 0.5, "error": None}],
            "flex": [{"n": 14040, "first_call_ms": 9000.0, "warm_call_ms": 0.4, "error": None},
                     {"n": 20280, "first_call_ms": 3000.0, "warm_call_ms": 0.6, "error": None}],
            "ours_kernel_variants": [8, 8], "flex_graphs": [1, 2], "ours_recompiled_on_second_length": False,
            "flex_recompiled_on_second_length": True,
        },
    }  # fmt: skip
    results["targets"] = bench.evaluate_targets(results["rows"], results["first_call"])
    paths = bench.write_outputs(results, tmp_path, plot=False)
    assert paths["json"].name == "attention-h200.json" and paths["md"].name == "attention-h200.md"

    data = json.loads(paths["json"].read_text())  # valid JSON although an error is NaN
    assert data["command"] == results["command"] and data["torch"] == "2.11.0" and data["triton"] == "3.6.0"
    row = data["rows"][1]
    for key in ("shape", "density", "flops", "dense_flops", "ms", "tflops", "speedup_vs_cudnn", "speedup_vs_flex",
                "check", "error"):  # fmt: skip
        assert key in row
    assert row["speedup_vs_cudnn"]["ours"] == pytest.approx(8.0) and row["speedup_vs_flex"]["ours"] == 2.0
    assert data["rows"][2]["check"]["max_abs_err"] == "nan"
    assert data["rows"][2]["error"]["sdpa_flash"].startswith("OutOfMemoryError")

    targets = {(t["shape"], t["density"], t["what"]): t for t in data["targets"]}
    assert targets[("4608x24x128", 0.1, "ours vs cuDNN")]["met"] is True  # 8.0× ≥ 8×
    assert targets[("4608x24x128", 0.1, "ours vs Flex")]["met"] is True  # 2.0× ≥ 1.25×
    assert targets[("4608x24x128", 1.0, "ours vs cuDNN")]["met"] is True  # 1.0× ≥ 0.9×
    assert targets[("75600x24x128", 0.03, "ours vs cuDNN")]["met"] is False  # 30× but the check failed
    assert targets[(None, None, "ours: no recompilation for a new sequence length")]["met"] is True

    md = paths["md"].read_text()
    assert "`python bench/attention.py -o x`" in md and "torch 2.11.0, triton 3.6.0" in md
    # ms: cuDNN, flash, Flex, ours; TFLOP/s: cuDNN (dense), Flex, ours (kept blocks); ratios; check error
    assert "| 4608x24x128 | 0.1 (4/36) | 4.00 | 8.00 | 1.00 | 0.50 | 4 | 2 | 4 | 8.00× | 2.00× | 4.00× | 1.0e-03" in md
    assert "| 75600x24x128 | 0.03 (4/36) | 30.00 | error | 2.00 | 1.00 ✗ |" in md
    assert "FAILED the correctness check on 1 config" in md
    assert "- 75600x24x128, flash (density 0.03): OutOfMemoryError: CUDA out of memory" in md
    assert "| ours | 20280 | 0.6 | 0.500 |  |" in md and "| Flex | 20280 | 3000.0 | 0.600 |  |" in md
    assert bench.failed_checks(results) == [results["rows"][2]]


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    results = {"gpu": "NVIDIA H200", "block_size": 128, "rows": [_row()]}
    assert bench.write_plot(results, tmp_path / "x.png") is None
    assert "matplotlib" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert set(bench.write_outputs(results, tmp_path, plot=True)) == {"json", "md"}


def test_check_tolerance_scales_with_the_output_magnitude():
    assert bench.within_tolerance(0.015, 0.005, 0.5)
    assert bench.within_tolerance(0.03, 0.005, 4.0)  # one bf16 ulp at |o| = 4 is 1/32
    assert not bench.within_tolerance(0.03, 0.005, 0.5)
    assert not bench.within_tolerance(0.001, 0.05, 1.0)
    assert not bench.within_tolerance(float("nan"), float("nan"), 1.0)


@pytest.mark.parametrize(
    "name, tag", [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"), ("Tesla T4", "tesla-t4")]
)
def test_gpu_tag(name, tag):
    assert gpu_tag(name) == tag


# ---- options and command line -------------------------------------------------------------------------------------


def test_options_default_quick_and_subsets():
    parser = build_parser()
    full = bench.options_from_args(parser.parse_args(["bench", "attention"]))
    assert full.shapes == [(4608, 24, 128), (17776, 48, 64), (32760, 12, 128), (75600, 24, 128)]
    assert full.densities == [1.0, 0.25, 0.10, 0.05, 0.03] and full.first_call and full.fresh_caches
    quick = bench.options_from_args(parser.parse_args(["bench", "attention", "--quick"]))
    assert quick.shapes == list(bench.QUICK_SHAPES) and quick.densities == list(bench.QUICK_DENSITIES)
    sub = bench.options_from_args(parser.parse_args(
        ["bench", "attention", "--quick", "--shapes", "32760x12x128,4608×24×128", "--densities", "1,0.1",
         "--no-first-call", "--warm-caches"]))  # fmt: skip
    assert sub.shapes == [(32760, 12, 128), (4608, 24, 128)] and sub.densities == [1.0, 0.1]
    assert not sub.first_call and not sub.fresh_caches


@pytest.mark.parametrize("argv", [["--shapes", "4608x24"], ["--shapes", "axbxc"], ["--densities", "0"],
                                  ["--densities", "1.5"], ["--densities", "nan"]])  # fmt: skip
def test_bad_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "attention", *argv])
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_refuses_without_cuda(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "attention", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["unbottle bench: error: the attention benchmark needs a CUDA GPU; torch sees none here"]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_script_refuses_without_cuda(tmp_path, capsys):
    script = runpy.run_path(str(ROOT / "bench" / "attention.py"), run_name="bench_attention")
    assert script["main"](["-o", str(tmp_path / "results")]) == 2
    assert "needs a CUDA GPU" in _error(capsys)
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="no git executable")
def test_git_commit_says_when_the_tree_is_not_the_commit(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert git_commit(tmp_path) is None  # not a repository
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == sha
    (tmp_path / "a.py").write_text("x = 2\n")  # the code that runs is no longer the commit
    assert git_commit(tmp_path) == sha + "+dirty"
    (tmp_path / "b.py").write_text("")  # untracked files do not make it dirty
    (tmp_path / "a.py").write_text("x = 1\n")
    assert git_commit(tmp_path) == sha


def test_hopper_columns_checks_and_the_engines_choice(tmp_path, monkeypatch):
    from unbottle.attention_processors import backend_choice
    from unbottle.attention_processors.backend_choice import Backend, BackendChooser
    from unbottle.attention_processors.block_mask import pattern_to_block_mask
    from unbottle.attention_processors.reference import block_sparse_attention_reference
    from unbottle.bench.attention import run as bench_run

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    indices = torch.stack([torch.randperm(4) for _ in range(8)]).view(1, 2, 4, 4).to(torch.int32)
    mask = pattern_to_block_mask(indices, torch.full((1, 2, 4), 2, dtype=torch.int32), 16, 64, 64)
    speeds = {"flex": 2.0, "triton": 1.5, "cudnn_bsa": 1.0}
    last = []

    def fake(name):
        def run(q, k, v, block_mask, scale):
            last.append(name)
            return block_sparse_attention_reference(q, k, v, block_mask, scale=scale)

        return Backend(name, run, lambda *a: None, lambda: True)

    def timer(fn):
        fn()
        return speeds[last[-1]]

    fakes = BackendChooser([fake(n) for n in speeds], None, timer=timer, device_name=lambda d: "test")
    monkeypatch.setattr(backend_choice, "chooser", lambda: fakes)
    row = _row(ms={"sdpa_cudnn": 4.0, "sdpa_flash": 8.0, "flex": 1.0, "ours": 0.5, "cudnn_bsa": 0.4})
    row["error"] = {}
    calls = bench_run.hopper_calls(q, k, v, mask, row)
    assert list(calls) == ["cudnn_bsa"]  # fa4 is absent from the fakes' registry: skipped below
    ref = block_sparse_attention_reference(q, k, v, mask)[0]
    outs = {"flex": ref, "cudnn_bsa": calls["cudnn_bsa"]()}
    bench_run._check_hopper(row, outs)
    assert row["checks"]["cudnn_bsa"]["ok"] is True and row["checks"]["cudnn_bsa"]["max_abs_err"] == 0.0
    outs["cudnn_bsa"] = ref * 1.5
    bench_run._check_hopper(row, outs)
    assert row["checks"]["cudnn_bsa"]["ok"] is False
    monkeypatch.setattr("unbottle.attention_processors.backend_choice.BackendChooser",
                        lambda backends, path: BackendChooser(backends, path, timer=timer,
                                                              device_name=lambda d: "test"))  # fmt: skip
    bench_run._engine_choice(row, q, k, v, mask, log=lambda s: None)
    assert row["choice_backend"] == "cudnn_bsa" and row["ms"]["choice"] == 0.4
    assert row["choice_measured_ms"] == {"flex": 2.0, "ours": 1.5, "cudnn_bsa": 1.0}
    bench.finish_row(row)
    assert row["speedup_vs_cudnn"]["choice"] == pytest.approx(10.0)
    md = bench.markdown_report({"rows": [row], "targets": bench.evaluate_targets([row], None)})
    assert "| cuDNN BSA ms |" in md and "| engine's choice ms |" in md and "| 0.40 ✗ | 0.40 (cuDNN BSA) |" in md
    targets = {t["what"]: t for t in bench.evaluate_targets([row], None)}
    assert targets["engine's choice vs cuDNN"]["met"] is True  # 10× ≥ 8×
