"""The quality benchmark on clips (`bench quality --video`): option errors by name, the sparse rows as the exact
product of the options, PSNR over clips, the realized density, and a tiny run on the shipped model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unbottle.bench.quality import (
    SparseSetting,
    VideoQualityOptions,
    generate_clips,
    held_out_captions,
    held_out_video_captions,
    psnr,
    run_video_quality,
    write_outputs,
)
from unbottle.bench.quality.run import image_options, video_options
from unbottle.cli import build_parser, main
from unbottle.shapes import parse_caption

# -- options ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sparse": (1.5,)}, "sparse density must be in (0, 1], got 1.5"),
     ({"sparse": (0.1, 0.1)}, "sparse densities must differ"),
     ({"patterns": ("diagonal",)}, "patterns: 'diagonal' is not allowed; allowed: cached, dynamic, window"),
     ({"patterns": ()}, "patterns must be a non-empty tuple"),
     ({"reshape": ("on",)}, "reshape: 'on' is not allowed; allowed: True (on) or False (off)"),
     ({"block_sizes": (0,)}, "block_sizes: 0 is not allowed; allowed: whole numbers in [1, 4096]"),
     ({"block_sizes": (64, 64)}, "block_sizes: each value once"),
     ({"frames": 6}, "frames must be 4k + 1 ≥ 5 (the VAE packs 4 frames into a latent frame; e.g. 5, 9, 17, 33), "
                     "got 6"),
     ({"frames": 1}, "frames must be 4k + 1 ≥ 5 (the VAE packs 4 frames into a latent frame; e.g. 5, 9, 17, 33), "
                     "got 1"),
     ({"captions": 0}, "captions must be an integer ≥ 1, got 0"),
     ({"coverage": (0.0,)}, "coverage must be in (0, 1], got 0.0"),
     ({"coverage": (0.9, 0.9)}, "coverage values must differ"),
     ({"steps": 0}, "steps must be an integer ≥ 1, got 0")],
)  # fmt: skip
def test_bad_options_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as e:
        VideoQualityOptions(**kwargs)
    assert message in str(e.value)


def test_defaults_are_the_models_clip_and_the_held_out_motion_set():
    from unbottle.shapes import call_defaults

    options = VideoQualityOptions()
    assert options.frames == call_defaults("t2v")["num_frames"] == 33
    assert (options.seed, options.block_sizes, options.patterns, options.reshape) == (10_001, (64,), ("cached",),
                                                                                       (True,))  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--sparse", "2"], "--sparse must be a number (each of the list) in (0, 1], got 2.0"),
     (["--sparse-patterns", "cached,diagonal"],
      "--sparse-patterns takes names from cached, window, dynamic, got 'cached,diagonal'"),
     (["--reshape", "on,maybe"], "--reshape takes on, off or on,off, got 'on,maybe'"),
     (["--sparse-block-sizes", "32,0"], "--sparse-block-sizes takes whole numbers in [1, 4096], got '0'"),
     (["--sparse-block-sizes", "64,x"], "--sparse-block-sizes takes whole numbers in [1, 4096], got 'x'")],
)  # fmt: skip
def test_cli_bad_values_exit_2_naming_the_option(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["bench", "quality", "--video", "-o", str(tmp_path / "out"), *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--video", "--frames", "6"], "bench quality --video: frames must be 4k + 1 ≥ 5"),
     (["--video", "--sparse", "0.1,0.1"], "bench quality --video: sparse densities must differ"),
     (["--video", "--presets", "wan-2x", "--structured"],
      "bench quality --video compares sparse attention only; --presets, --structured: images only"),
     (["--reshape", "off"], "bench quality: --reshape: clips only; add --video"),
     (["--coverage", "0.9"], "bench quality: --coverage: clips only; add --video"),
     (["--frames", "17", "--sparse-block-sizes", "32"],
      "bench quality: --frames, --sparse-block-sizes: clips only; add --video"),
     (["--sparse-patterns", "cached,window"],
      "--sparse-patterns takes one pattern on images (several with --video), got cached,window")],
)  # fmt: skip
def test_cli_mode_and_value_errors_exit_2(args, message, capsys, tmp_path):
    assert main(["bench", "quality", "-o", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any folder or generation


def parse(*args: str):
    return build_parser().parse_args(["bench", "quality", *args])


def test_coverage_rows_are_cached_per_block_size_and_reshape():
    options = video_options(parse("--video", "--coverage", "0.9,0.5", "--reshape", "on,off",
                                  "--sparse-block-sizes", "32", "--sparse-patterns", "window"))  # fmt: skip
    assert options.grid() == []  # no --sparse: no uniform grid rows
    assert options.coverage_grid() == [SparseSetting(None, "cached", r, 32, coverage=c)
                                       for r in (True, False) for c in (0.9, 0.5)]  # fmt: skip
    calibrated = options.coverage_grid()[0]
    assert calibrated.name == "coverage 0.9 (cached, block 32, reshape on)"
    assert calibrated.config_kwargs() == {"coverage": 0.9, "pattern": "cached", "reshape": True, "block_size": 32}
    uniform = SparseSetting(0.4123, "cached", True, 32, matched=0.9)
    assert uniform.name == "sparse 0.412 (cached, block 32, reshape on, uniform at coverage 0.9's density)"
    assert uniform.config_kwargs() == {"density": 0.4123, "pattern": "cached", "reshape": True, "block_size": 32}
    with pytest.raises(SystemExit):
        parse("--video", "--coverage", "1.5")


def test_single_sparse_pattern_still_drives_the_image_rows():
    options = image_options(parse("--sparse", "0.25", "--sparse-pattern", "window"))
    assert (options.sparse, options.sparse_pattern, options.seed) == ((0.25,), "window", 10_000)
    assert image_options(parse()).sparse_pattern == "cached"


# -- the grid -----------------------------------------------------------------------------------------------------


def test_rows_are_the_exact_product_in_a_stable_order():
    options = VideoQualityOptions(sparse=(0.1, 0.2, 0.3), patterns=("window", "cached"), reshape=(True, False),
                                  block_sizes=(32, 64))  # fmt: skip
    expected = []
    for pattern in ("window", "cached"):
        for block in (32, 64):
            for reshape in (True, False):
                for density in (0.1, 0.2, 0.3):
                    expected.append(SparseSetting(density, pattern, reshape, block))
    assert options.grid() == expected
    assert len({s.name for s in options.grid()}) == 24
    assert expected[0].name == "sparse 0.1 (window, block 32, reshape on)"
    assert expected[5].name == "sparse 0.3 (window, block 32, reshape off)"
    assert VideoQualityOptions().grid() == []  # no --sparse: the stock row only


def test_cli_lists_become_the_grid_in_the_order_given():
    args = parse("--video", "--sparse", "0.2,0.1", "--sparse-patterns", "dynamic,window,dynamic", "--reshape",
                 "off,on", "--sparse-block-sizes", "64,32,64", "--frames", "9", "--caption-seed", "30000")  # fmt: skip
    options = video_options(args)
    assert (options.patterns, options.block_sizes, options.reshape) == (("dynamic", "window"), (64, 32),
                                                                        (False, True))  # fmt: skip
    assert (options.frames, options.seed) == (9, 30_000)
    grid = options.grid()
    assert len(grid) == 2 * 2 * 2 * 2
    assert [s.name for s in grid[:3]] == ["sparse 0.2 (dynamic, block 64, reshape off)",
                                          "sparse 0.1 (dynamic, block 64, reshape off)",
                                          "sparse 0.2 (dynamic, block 64, reshape on)"]  # fmt: skip
    plain = video_options(parse("--video"))
    assert (plain.seed, plain.reshape, plain.block_sizes, plain.frames) == (10_001, (True,), (64,), 33)


# -- captions and PSNR --------------------------------------------------------------------------------------------


def test_held_out_video_captions_are_motion_captions_and_seeded():
    five = held_out_video_captions(5)
    assert all(parse_caption(c).category == "motion" for c in five)
    # the first scenes are the same for any count (the verb, moving or moves, may differ): the same facts
    assert [parse_caption(c) for c in held_out_video_captions(3)] == [parse_caption(c) for c in five[:3]]
    assert held_out_video_captions(3, seed=30_000) != held_out_video_captions(3)
    assert set(five).isdisjoint(held_out_captions(50))  # not the image set


def test_psnr_over_clips():
    a = np.zeros((2, 3, 4, 4, 3), np.uint8)  # 2 clips × 3 frames of 4 × 4: 288 values
    assert psnr(a, a.copy()) == math.inf
    b = a.copy()
    b[1, 2, 3, 3, 0], b[0, 1, 0, 0, 2] = 255, 51  # MSE = (255² + 51²) / 288 = 67,626 / 288
    assert psnr(a, b) == pytest.approx(10 * math.log10(65_025 * 288 / 67_626), abs=1e-12)
    assert psnr(a, b) == pytest.approx(psnr(b, a), abs=1e-12)


# -- a tiny run on the shipped model ------------------------------------------------------------------------------

TINY = dict(captions=1, steps=2, batch=1, frames=5, sparse=(1.0, 0.3), patterns=("cached",))


@pytest.fixture(scope="module")
def tiny_run():
    return run_video_quality(VideoQualityOptions(**TINY), log=lambda _: None)


def test_density_one_reproduces_stock_from_the_same_noise(tiny_run):
    stock, full, sparse = tiny_run["rows"]
    assert [r["setting"] for r in tiny_run["rows"]] == ["stock", "sparse 1 (cached, block 64, reshape on)",
                                                       "sparse 0.3 (cached, block 64, reshape on)"]  # fmt: skip
    assert math.isinf(stock["psnr_vs_stock"]) and math.isinf(full["psnr_vs_stock"])  # same noise, every tile kept
    assert full["per_fact"] == stock["per_fact"]
    assert full["realized_density"] is None  # density 1 runs the stock attention: no step ran sparse
    assert math.isfinite(sparse["psnr_vs_stock"])
    assert stock["realized_density"] is None
    assert set(stock["per_fact"]) >= {"object", "color", "motion"}  # motion is scored on clips
    assert sum(sparse["fact_counts"].values()) == sum(stock["fact_counts"].values())


def test_realized_density_equals_the_kept_tiles_of_the_pattern_store(tiny_run):
    import unbottle
    from unbottle.shapes import load_pipeline

    pipe = load_pipeline("t2v")
    pipe.set_progress_bar_config(disable=True)
    handle = unbottle.enable_sparse_attention(pipe, unbottle.SparseAttentionConfig(density=0.3, block_size=64))
    try:
        clips = generate_clips(pipe, held_out_video_captions(1), steps=2, batch=1, frames=5)
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert clips.shape == (1, 5, 128, 128, 3) and clips.dtype == np.uint8
    per_layer = {}
    for key, (_, counts) in handle.store.patterns.items():  # key: (layer, tokens, block size, ...)
        n_k = math.ceil(key[1] / key[2])
        per_layer.setdefault(key[0], []).append(counts.sum().item() / (counts.numel() * n_k))
    assert len(per_layer) == 8  # the DiT's 8 self-attention layers
    counted = sum(sum(v) / len(v) for v in per_layer.values()) / len(per_layer)
    # 5 frames → 2 latent frames of 16 × 16 tokens = 512 = 8 blocks of 64; density 0.3 keeps 3 (the diagonal's too)
    assert {key[1] for key in handle.store.patterns} == {512}
    assert counted == pytest.approx(3 / 8, abs=1e-12)
    assert tiny_run["rows"][2]["realized_density"] == pytest.approx(counted, abs=1e-12)


def test_outputs_have_the_video_columns(tiny_run, tmp_path):
    json_path, md_path = write_outputs(tiny_run, tmp_path / "out")
    assert (json_path.name, md_path.name) == ("quality-shapes-video.json", "quality-shapes-video.md")
    data = json.loads(json_path.read_text())
    row = data["rows"][2]
    assert {"setting", "accuracy", "fact_accuracy", "per_fact", "psnr_vs_stock", "realized_density", "seconds",
            "density", "pattern", "reshape", "block_size"} <= set(row)  # fmt: skip
    assert (row["density"], row["pattern"], row["reshape"], row["block_size"]) == (0.3, "cached", True, 64)
    assert data["rows"][0]["psnr_vs_stock"] == math.inf and data["options"]["frames"] == 5
    table = md_path.read_text()
    facts = " | ".join(f"fact: {f}" for f in data["rows"][0]["per_fact"])
    assert (f"| setting | accuracy | facts | {facts} | PSNR vs stock (dB) | realized density | seconds |"
            in table)  # fmt: skip
    assert table.count("\n| ") == 4  # header + 3 rows
    assert "| stock | " in table and " | inf | – | " in table and " | 0.375 | " in table
    assert "1 held-out motion captions (seed 10001), 5 frames, 2 steps" in table
    assert "realized density: kept tiles / all tiles the sparse steps computed" in table



def test_coverage_row_is_followed_by_uniform_density_at_its_realized_density():
    options = VideoQualityOptions(captions=1, steps=2, batch=1, frames=5, coverage=(0.6,))
    rows = run_video_quality(options, log=lambda _: None)["rows"]
    assert [r["setting"] for r in rows[:2]] == ["stock", "coverage 0.6 (cached, block 64, reshape on)"]
    calibrated, uniform = rows[1], rows[2]
    assert (calibrated["coverage"], calibrated["density"], calibrated["matched"]) == (0.6, None, None)
    realized = calibrated["realized_density"]
    assert 0 < realized < 1
    assert (uniform["density"], uniform["coverage"], uniform["matched"]) == (round(realized, 4), None, 0.6)
    assert uniform["setting"] == f"sparse {round(realized, 4):.3g} (cached, block 64, reshape on, uniform at " \
        "coverage 0.6's density)"
    # 512 tokens = 8 key blocks of 64: a uniform budget matches the calibrated mean to within one block a row
    assert abs(uniform["realized_density"] - realized) <= 1 / 8
    assert math.isfinite(calibrated["psnr_vs_stock"]) and math.isfinite(uniform["psnr_vs_stock"])


def test_cli_video_run_writes_the_video_files(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--captions", "1", "--steps", "1", "--frames", "5"]
    assert main(["bench", "quality", "--video", "-o", str(out), *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["quality-shapes-video.json", "quality-shapes-video.md"]
    printed = capsys.readouterr().out
    table = (out / "quality-shapes-video.md").read_text()
    assert table.startswith("Shapes T2V quality of sparse attention: 1 held-out motion captions (seed 10001), 5 "
                            "frames, 1 steps")  # fmt: skip
    assert printed.startswith("stock: accuracy ") and printed.endswith("\n" + table + "\n")  # progress, then the table
