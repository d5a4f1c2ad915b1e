"""The quality benchmark on the shapes T2I model: exact at density 1.0, scored per setting, clear option errors."""

from __future__ import annotations

import json
import math

import pytest

from unbottle.bench.quality import QualityOptions, held_out_captions, markdown_report, psnr, run_quality, write_outputs


def test_density_one_reproduces_stock_and_outputs_are_written(tmp_path):
    results = run_quality(QualityOptions(captions=2, steps=2, batch=2, sparse=(1.0, 0.25)), log=lambda _: None)
    stock, full, sparse = results["rows"]
    assert stock["setting"] == "stock" and math.isinf(stock["psnr_vs_stock"])
    assert math.isinf(full["psnr_vs_stock"])  # density 1.0 = the stock images, bit for bit
    assert full["accuracy"] == stock["accuracy"] and full["fact_accuracy"] == stock["fact_accuracy"]
    assert math.isfinite(sparse["psnr_vs_stock"])  # 4 of 16 key blocks per row: a different image
    json_path, md_path = write_outputs(results, tmp_path / "out")
    assert json.loads(json_path.read_text())["rows"][2]["setting"].startswith("sparse 0.25")
    table = md_path.read_text()
    assert table.count("\n| ") == 4 and "| stock |" in table  # header + 3 settings


def test_captions_are_the_model_cards_held_out_set():
    assert held_out_captions(3) == held_out_captions(5)[:3]
    assert held_out_captions(3) != held_out_captions(3, seed=1)
    from unbottle.shapes.evaluate import category

    two = held_out_captions(40, kinds=("pair", "relation"))
    assert {category(c) for c in two} == {"color_binding", "spatial"}


def test_noise_seeds_generate_each_caption_with_new_noise():
    one = run_quality(QualityOptions(captions=2, steps=2, batch=2), log=lambda _: None)["rows"][0]
    two = run_quality(QualityOptions(captions=2, steps=2, batch=2, noise_seeds=2), log=lambda _: None)["rows"][0]
    assert sum(two["category_counts"].values()) == 2 * sum(one["category_counts"].values())
    from unbottle.bench.quality import generate
    from unbottle.shapes import load_pipeline

    pipe = load_pipeline("t2i")
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, held_out_captions(2), 2, 2, noise_seeds=2)
    assert images.shape == (4, 128, 128, 3)
    import numpy as np

    np.testing.assert_array_equal(images[:2], generate(pipe, held_out_captions(2), 2, 2))  # round 0 = the default
    assert not np.array_equal(images[:2], images[2:])


def test_psnr_and_markdown_on_synthetic_rows():
    import numpy as np

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255  # one pixel of 96 off by 255: MSE = 255² / 96
    assert psnr(a, a) == math.inf and psnr(a, b) == pytest.approx(10 * math.log10(96))
    row = {"setting": "x", "accuracy": 0.5, "fact_accuracy": 0.75, "per_category": {"count": 1.0},
           "per_fact": {"count": 0.25, "object": 1.0}, "psnr_vs_stock": 30.0, "seconds": 1.0}  # fmt: skip
    md = markdown_report({"rows": [row], "options": {"captions": 2, "seed": 0, "steps": 1}, "device": "cpu"})
    assert "| setting | accuracy | facts | count | fact: object | fact: count | PSNR vs stock (dB) | seconds |" in md
    assert "| x | 0.500 | 0.750 | 1.000 | 1.000 | 0.250 | 30.0 | 1.0 |" in md


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"captions": 0}, "captions"), ({"steps": 0}, "steps"), ({"sparse": (1.5,)}, "density"),
     ({"bottleneck": ("wan-9x",)}, "preset 'wan-9x' is unknown; available: flux-2x"),
     ({"kinds": ("pairs",)}, "kinds: 'pairs' is not a scene kind; allowed: single, attribute, pair"),
     ({"noise_seeds": 0}, "noise_seeds must be ≥ 1")],
)  # fmt: skip
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QualityOptions(**kwargs)


def test_cli_bad_density_exits_2(capsys):
    from unbottle.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "quality", "--sparse", "2"])
    assert e.value.code == 2
    assert "--sparse must be a number (each of the list) in (0, 1], got 2.0" in capsys.readouterr().err


def test_bottleneck_preset_row_uses_its_own_schedule():
    results = run_quality(QualityOptions(captions=2, steps=2, batch=2, bottleneck=("wan-2x",)), log=lambda _: None)
    stock, preset = results["rows"]
    assert preset["setting"] == "bottleneck wan-2x (8/24/12 steps)"
    assert math.isfinite(preset["psnr_vs_stock"])  # another schedule: other images, scored against the same captions
    assert preset["category_counts"] == stock["category_counts"]


def test_structured_guidance_row():
    results = run_quality(QualityOptions(captions=6, steps=2, batch=6, structured=True), log=lambda _: None)
    stock, structured = results["rows"]
    assert structured["setting"] == "structured guidance"
    assert structured["category_counts"] == stock["category_counts"]
    assert math.isfinite(structured["psnr_vs_stock"])  # caption 4 has two noun phrases: its image changes


def test_noise_search_rows_start_from_the_stock_noise_and_count_passes():
    from unbottle.bench.quality import parse_noise_search

    assert parse_noise_search("1x0, 4x2") == [(1, 0), (4, 2)]
    for bad in ("4", "x2", "2x-1", "ax1"):
        with pytest.raises(ValueError, match="--noise item"):
            parse_noise_search(bad)
    with pytest.raises(ValueError, match="noise search 0x1"):
        QualityOptions(noise_search=((0, 1),))
    # one caption in batches of one: the stock image is seed 0's, as is the noise search's plain (1 × 0) row
    options = QualityOptions(captions=1, steps=2, batch=1, noise_search=((1, 0), (2, 2)))
    results = run_quality(options, log=lambda _: None)
    stock, plain, search = results["rows"]
    assert plain["setting"] == "noise search 1 seed × 0 it" and plain["psnr_vs_stock"] == math.inf
    assert (plain["forward_passes"], plain["backward_passes"]) == (1, 0)
    assert search["setting"] == "noise search 2 seeds × 2 it"
    assert (search["forward_passes"], search["backward_passes"]) == (4, 2)
    table = markdown_report(results)
    assert "generator passes / image (fwd + bwd)" in table and "| 4 + 2 |" in table and "| 1 + 0 |" in table


def test_custom_stage_list_row_equals_the_preset_with_the_same_stages():
    from unbottle.cli.bottleneck import parse_stages
    from unbottle.pipelines.bottleneck import Stage
    from unbottle.pipelines.bottleneck_presets import PRESETS

    stages = tuple(Stage(*row) for row in PRESETS["sd3-2x"][1])
    text = "1:3:1:9,0.5:10:0.7:6,1:5:0.9:9"
    assert tuple(parse_stages(text)) == stages  # the --stages spelling of sd3-2x
    options = QualityOptions(captions=2, steps=2, batch=2, bottleneck=("sd3-2x",), stages=(stages,))
    stock, preset, custom = run_quality(options, log=lambda _: None)["rows"]
    assert custom["setting"] == f"bottleneck {text} (3/10/5 steps)"
    assert custom["psnr_vs_stock"] == preset["psnr_vs_stock"] and custom["per_fact"] == preset["per_fact"]


def test_cli_bad_stage_list_names_the_stage(capsys):
    from unbottle.cli import main

    assert main(["bench", "quality", "--stages", "1:4:1:9,0.5:0:0.8:6"]) == 2
    err = capsys.readouterr().err
    assert "unbottle bench: error: --stages: stage 1 '0.5:0:0.8:6': Stage.steps must be ≥ 1, got 0" in err
