"""`unbottle image|video --bottleneck PRESET | --bottleneck-stages`: run by BottleneckSampler, checked early."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unbottle.cli import main

PROMPT = "a red circle to the left of a blue square"


def _pixels(path):
    return np.asarray(Image.open(path))


def test_one_stage_equals_the_stock_pipeline_and_presets_change_the_image(tmp_path):
    stock, one, preset, again = (tmp_path / f"{n}.png" for n in ("stock", "one", "preset", "again"))
    assert main(["image", PROMPT, "-o", str(stock), "-q", "--steps", "4"]) == 0
    assert main(["image", PROMPT, "-o", str(one), "-q", "--bottleneck-stages", "1:4:1:none"]) == 0
    np.testing.assert_array_equal(_pixels(stock), _pixels(one))  # shift none, strength 1: the stock schedule
    stages = "1:2:1:none,0.5:3:0.8:6,1:2:0.6:none"
    assert main(["image", PROMPT, "-o", str(preset), "-q", "--bottleneck-stages", stages]) == 0
    assert main(["image", PROMPT, "-o", str(again), "-q", "--bottleneck-stages", stages]) == 0
    assert _pixels(preset).shape == _pixels(stock).shape == (128, 128, 3)
    np.testing.assert_array_equal(_pixels(preset), _pixels(again))
    assert not np.array_equal(_pixels(preset), _pixels(stock))


def test_video_preset_runs_at_the_requested_size(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "v.mp4"
    assert main(["video", PROMPT, "-o", str(out), "-q", "--frames", "5", "--bottleneck-stages",
                 "1:2:1:none,0.5:2:0.8:6,1:2:0.6:9"]) == 0  # fmt: skip
    frames = np.stack(list(iio.imiter(out)))
    assert frames.shape == (5, 128, 128, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bottleneck", "wan-2x", "--steps", "4"], "--steps: with --bottleneck"),
        (["--bottleneck", "nope"], "--bottleneck: unknown preset 'nope'; available: flux-2x"),
        (["--bottleneck", "wan-2x", "--bottleneck-stages", "1:4:1:none"], "give one of them"),
        (["--bottleneck-stages", "1:4"], "stage 0 '1:4' must be SCALE:STEPS:STRENGTH:SHIFT"),
        (["--bottleneck-stages", "1:4:1.5:none"], "strength must be in (0, 1], got 1.5"),
        (["--bottleneck-stages", "1:x:1:none"], "stage 0 '1:x:1:none'"),
        (["--bottleneck-stages", "0.5:4:1:none"], "--bottleneck-stages"),  # the last stage must be at scale 1
        (["--bottleneck-stages", "0.01:1:1:9,1:1:0.6:9"],  # planned for the request's size before generating
         "--bottleneck-stages: stages[0].scale=0.01 makes a 0×0 px stage of a 128×128 request"),
    ],
)
def test_bad_bottleneck_options_exit_2_and_write_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["image", PROMPT, "-o", str(out), "-q", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
