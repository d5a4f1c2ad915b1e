"""The `unbottle` command line: happy paths on the embedded default and on a local folder, and every error path."""

import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from unbottle.cli import main  # noqa: E402
from unbottle.cli.generate import spatial_multiple, temporal_multiple  # noqa: E402
from unbottle.defaults import EMBEDDED, load_default  # noqa: E402
from unbottle.testing import image as image_fixtures  # noqa: E402
from unbottle.testing import video as video_fixtures  # noqa: E402

PROMPT = "a red circle to the left of a blue square"


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ---- happy paths --------------------------------------------------------------------------------------------------


def test_image_on_embedded_default_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(["image", PROMPT, "-o", str(a), "-q"]) == 0
    assert main(["image", PROMPT, "-o", str(b), "-q"]) == 0
    assert main(["image", PROMPT, "-o", str(c), "-q", "--seed", "1"]) == 0
    default = EMBEDDED["image"]
    assert Image.open(a).size == (default.width, default.height)
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


def test_image_size_flags_and_missing_output_folder_is_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "x.png"
    assert main(["image", PROMPT, "-o", str(out), "-q", "--height", "32", "--width", "48", "--steps", "2"]) == 0
    assert Image.open(out).size == (48, 32)


def test_image_from_local_folder_matches_the_pipeline(tmp_path):
    pipe = image_fixtures.tiny_flux_pipeline()
    folder = tmp_path / "tiny-flux"
    pipe.save_pretrained(folder)
    out = tmp_path / "flux.png"
    args = ["image", PROMPT, "--model", str(folder), "-o", str(out), "-q", "--steps", "2", "--height", "32",
            "--width", "32", "--seed", "3"]  # fmt: skip
    assert main(args) == 0
    expected = pipe(PROMPT, num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(_pixels(out), np.asarray(expected.images[0]))


def test_sparse_flag_changes_the_image_and_density_one_does_not(tmp_path, capsys):
    dense, full, sparse, window = (tmp_path / f"{n}.png" for n in ("dense", "full", "sparse", "window"))
    assert main(["image", PROMPT, "-o", str(dense), "-q"]) == 0
    assert main(["image", PROMPT, "-o", str(full), "-q", "--sparse", "1.0"]) == 0
    assert main(["image", PROMPT, "-o", str(sparse), "-q", "--sparse", "0.25", "--sparse-block-size", "4"]) == 0
    args = ["--sparse", "0.25", "--sparse-pattern", "window", "--no-reshape", "--sparse-block-size", "4"]
    assert main(["image", PROMPT, "-o", str(window), "-q", *args]) == 0
    assert "window pattern, block 4, reshape off" in capsys.readouterr().err
    np.testing.assert_array_equal(_pixels(dense), _pixels(full))
    assert not np.array_equal(_pixels(dense), _pixels(sparse))
    assert not np.array_equal(_pixels(sparse), _pixels(window))


def test_video_on_embedded_default_writes_a_playable_mp4(tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["video", PROMPT, "-o", str(out), "-q", "--frames", "5"]) == 0
    frames = iio.imread(out, plugin="pyav") if _has_pyav() else np.stack(list(iio.imiter(out)))
    default = EMBEDDED["video"]
    assert frames.shape == (5, default.height, default.width, 3)


def _has_pyav():
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_text_on_embedded_default_prints_text(tmp_path, capsys):
    out = tmp_path / "t.txt"
    assert main(["text", "a red circle", "--gen-length", "8", "-q", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed and out.read_text().strip() == printed
    assert main(["text", "a red circle", "--gen-length", "8", "-q"]) == 0
    assert capsys.readouterr().out.strip() == printed  # same seed, same text


def test_module_entry_point_runs_in_a_fresh_process(tmp_path):
    out = tmp_path / "p.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "unbottle", "image", "a blue star", "-o", str(out), "--steps", "2", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (EMBEDDED["image"].width, EMBEDDED["image"].height)


# ---- errors -------------------------------------------------------------------------------------------------------


def test_uncached_hub_id_says_how_to_fetch_it(tmp_path, capsys):
    assert main(["image", PROMPT, "--model", "black-forest-labs/FLUX.1-dev", "-o", str(tmp_path / "x.png")]) == 1
    err = _error(capsys)
    assert "not in the local Hugging Face cache" in err and "hf download black-forest-labs/FLUX.1-dev" in err
    assert not (tmp_path / "x.png").exists()


def test_missing_local_folder(tmp_path, capsys):
    assert main(["image", PROMPT, "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such folder" in _error(capsys)


def test_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["image", PROMPT, "--model", str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")]) == 2
    assert "model_index.json" in _error(capsys)


def test_unwritable_output_path(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["image", PROMPT, "-o", str(blocker / "x.png")]) == 1
    assert "cannot create the folder" in _error(capsys)


def test_output_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "d.png").mkdir()
    assert main(["image", PROMPT, "-o", str(tmp_path / "d.png")]) == 2
    assert "is a folder" in _error(capsys)


def test_wrong_output_suffix(tmp_path, capsys):
    assert main(["video", PROMPT, "-o", str(tmp_path / "x.png")]) == 2
    assert ".mp4" in _error(capsys)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["image", PROMPT, "--steps", "0"], "--steps"),
        (["image", PROMPT, "--steps", "-3"], "--steps"),
        (["image", PROMPT, "--height", "abc"], "--height"),
        (["video", PROMPT, "--frames", "0"], "--frames"),
        (["image", PROMPT, "--sparse", "1.5"], "--sparse"),
        (["image", PROMPT, "--sparse", "nan"], "--sparse"),
        (["image", PROMPT, "--sparse", "0.1", "--sparse-pattern", "diagonal"], "--sparse-pattern"),
        (["image", PROMPT, "--sparse", "0.1", "--sparse-block-size", "0"], "--sparse-block-size"),
        (["text", PROMPT, "--gen-length", "0"], "--gen-length"),
        (["paint", PROMPT], "paint"),
    ],
)
def test_bad_numbers_are_usage_errors_naming_the_argument(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err


def test_height_not_divisible_by_the_model_requirement(tmp_path, capsys):
    pipe = load_default("image")  # the embedded default is what runs without --model
    multiple = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    assert main(["image", PROMPT, "--height", str(multiple + 2), "-o", str(tmp_path / "x.png")]) == 2
    err = _error(capsys)
    assert "--height" in err and f"multiple of {multiple}" in err
    assert not (tmp_path / "x.png").exists()


def test_frames_that_do_not_fit_the_temporal_compression(tmp_path, capsys):
    pipe = load_default("video")
    k = pipe.vae_scale_factor_temporal
    assert main(["video", PROMPT, "--frames", str(k + 2), "-o", str(tmp_path / "x.mp4")]) == 2
    assert "--frames" in _error(capsys)


LTX = video_fixtures.tiny_ltx_pipeline


@pytest.mark.parametrize(
    "fixture, expected",
    [
        (image_fixtures.tiny_flux_pipeline, lambda p: p.vae_scale_factor * 2),  # 2×2 latent packing
        (image_fixtures.tiny_sd3_pipeline, lambda p: p.vae_scale_factor * p.transformer.config.patch_size),
        (image_fixtures.tiny_pixart_pipeline, lambda p: p.vae_scale_factor * p.transformer.config.patch_size),
        (image_fixtures.tiny_stable_diffusion_pipeline, lambda p: p.vae_scale_factor),
        (video_fixtures.tiny_wan_pipeline, lambda p: p.vae_scale_factor_spatial * p.transformer.config.patch_size[1]),
        (LTX, lambda p: p.vae_spatial_compression_ratio * p.transformer_spatial_patch_size),
    ],
)
def test_spatial_multiple_per_family(fixture, expected):
    pipe = fixture()
    assert spatial_multiple(pipe) == expected(pipe)


def test_temporal_multiple():
    wan, ltx = video_fixtures.tiny_wan_pipeline(), video_fixtures.tiny_ltx_pipeline()
    # from the VAE configs: each temporally downsampling stage halves the frame count
    assert temporal_multiple(wan) == 2 ** sum(wan.vae.config.temperal_downsample)
    assert temporal_multiple(ltx) == 2 ** sum(ltx.vae.config.spatio_temporal_scaling)
    assert temporal_multiple(image_fixtures.tiny_flux_pipeline()) == 1
    # and k·n + 1 frames come back unchanged
    k = temporal_multiple(wan)
    frames = wan("a red circle", num_frames=k + 1, height=16, width=16, num_inference_steps=1, output_type="np").frames
    assert frames.shape[1] == k + 1


def test_video_verb_refuses_an_image_model(tmp_path, capsys):
    folder = tmp_path / "tiny-sd3"
    image_fixtures.tiny_sd3_pipeline().save_pretrained(folder)
    assert main(["video", PROMPT, "--model", str(folder), "-o", str(tmp_path / "x.mp4")]) == 2
    assert "unbottle image" in _error(capsys)


def test_empty_prompt(tmp_path, capsys):
    assert main(["image", "  ", "-o", str(tmp_path / "x.png")]) == 2
    assert "PROMPT" in _error(capsys)


def test_unusable_device(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["image", PROMPT, "--device", "cuda", "-o", str(tmp_path / "x.png")]) == 2
    assert "--device" in _error(capsys)


def test_text_sparse_runs_sparsed_on_the_embedded_model(capsys):
    """`text --sparse`: SparseD on the embedded retrieval DLM, which still answers a 512-token prompt."""
    import random

    from unbottle.shapes import retrieval

    prompt, answer = retrieval.make_example(random.Random(0), 512)
    assert main(["text", prompt, "--gen-length", str(len(answer.split())), "-q", "--sparse", "0.3"]) == 0
    captured = capsys.readouterr()
    assert "sparse attention: density 0.3, cached pattern, block 32, reshape off" in captured.err
    assert "(SparseD, " in captured.err
    assert captured.out.split() == answer.split()


def test_bench_attention_needs_cuda(tmp_path, capsys, monkeypatch):
    """`bench attention` without CUDA refuses in one line, exit 2, writing nothing."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "attention", "-o", str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert "needs a CUDA GPU" in err
    assert not any(tmp_path.iterdir())


def test_structured_flag_guides_the_embedded_model(tmp_path, capsys):
    plain, structured = tmp_path / "plain.png", tmp_path / "structured.png"
    assert main(["image", PROMPT, "-o", str(plain), "-q"]) == 0
    assert main(["image", PROMPT, "-o", str(structured), "-q", "--structured"]) == 0
    assert "structured cross-attention guidance: on" in capsys.readouterr().err
    assert not np.array_equal(_pixels(plain), _pixels(structured))


def test_structured_flag_on_unsupported_pipeline_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import unbottle.cli.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: image_fixtures.tiny_sd3_pipeline())
    assert main(["image", PROMPT, "-o", str(tmp_path / "x.png"), "-q", "--structured"]) == 2
    assert "--structured: structured guidance supports" in _error(capsys)
