"""`unbottle image|video --model ORG/NAME` on hub ids found in the local Hugging Face cache (offline): Wan 2.2 (two
experts), Qwen-Image, FLUX.2, HunyuanVideo-1.5 and LTX-2, saved with `save_pretrained` into a cache laid out as
huggingface_hub writes it. The stock run is the pipeline's own call; `--sparse 1.0` and a one-stage
`--bottleneck-stages` are the stock run, a low density changes it; a `--bottleneck` preset is the sampler's own call;
`--sparse` reports both Wan 2.2 experts' layers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unbottle.cli import generate as generate_module
from unbottle.cli import main
from unbottle.testing.flux2 import tiny_flux2_pipeline
from unbottle.testing.hunyuan_video15 import tiny_hunyuan_video15_pipeline
from unbottle.testing.ltx2 import tiny_ltx2_pipeline
from unbottle.testing.qwen_image import tiny_qwen_image_pipeline
from unbottle.testing.wan22 import tiny_wan22_pipeline

PROMPT = "a red circle to the left of a blue square"
STEPS, SEED = 2, 3
SPARSE_STEPS = {"tiny/wan22": 4}  # 2 steps per expert

# repo id → (fixture, verb, size arguments); the CLI passes no max_sequence_length: each pipeline's own default runs
MODELS = {
    "tiny/wan22": (tiny_wan22_pipeline, "video", dict(height=32, width=32, frames=5)),
    "tiny/qwen-image": (tiny_qwen_image_pipeline, "image", dict(height=32, width=32)),
    "tiny/flux2": (tiny_flux2_pipeline, "image", dict(height=32, width=32)),
    "tiny/hunyuan-video15": (tiny_hunyuan_video15_pipeline, "video", dict(height=64, width=64, frames=5)),
    "tiny/ltx2": (tiny_ltx2_pipeline, "video", dict(height=64, width=64, frames=9)),
}
BOTTLENECK = list(MODELS)


def _snapshot(hub: Path, repo: str) -> Path:
    """The snapshot folder of `repo` in a cache laid out as huggingface_hub writes it (refs/main → the commit)."""
    commit = hashlib.sha1(repo.encode()).hexdigest()  # 40 hex digits, like a git commit
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Every tiny pipeline saved in a fresh hub cache, which huggingface_hub reads offline; {repo: pipeline}."""
    from huggingface_hub import constants

    hub = tmp_path_factory.mktemp("hf") / "hub"
    pipes = {}
    for repo, (fixture, _, _) in MODELS.items():
        pipes[repo] = fixture()
        pipes[repo].save_pretrained(_snapshot(hub, repo))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(hub))
        mp.setenv("HF_HUB_OFFLINE", "1")
        # huggingface_hub reads both at import; its functions then read these module attributes at call time
        mp.setattr(constants, "HF_HUB_CACHE", str(hub))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        yield pipes


@pytest.fixture
def written(monkeypatch):
    """The frames each `unbottle video` run hands to the MP4 writer, (F, H, W, 3) in [0, 1], in call order."""
    frames = []
    save_video = generate_module.save_video

    def record(video, output, fps):
        frames.append(np.array(video))
        return save_video(video, output, fps=fps)

    monkeypatch.setattr(generate_module, "save_video", record)
    return frames


def _cli(repo: str, tmp_path: Path, name: str, *extra: str) -> Path:
    """Run the CLI on `repo` at its test size; the output path."""
    _, verb, size = MODELS[repo]
    out = tmp_path / f"{name}.{'mp4' if verb == 'video' else 'png'}"
    sizes = [f"--{key}={value}" for key, value in size.items()]
    assert main([verb, PROMPT, "--model", repo, "-o", str(out), "-q", "--seed", str(SEED), *sizes, *extra]) == 0
    assert out.stat().st_size > 0
    return out


def _output(repo: str, out: Path, written: list) -> np.ndarray:
    """What a run produced: the PNG's pixels, or the float frames handed to the MP4 writer."""
    if MODELS[repo][1] == "video":
        return written[-1]
    return np.asarray(Image.open(out).convert("RGB"))


def _call(pipe, repo: str, steps: int | None = STEPS) -> np.ndarray:
    """`pipe`'s call (a pipeline or a sampler) with the CLI's seed, steps and size: PIL pixels or (F, H, W, 3)
    frames."""
    _, verb, size = MODELS[repo]
    generator = torch.Generator().manual_seed(SEED)
    kwargs = dict(prompt=PROMPT, height=size["height"], width=size["width"], generator=generator)
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if verb == "video":
        return pipe(num_frames=size["frames"], output_type="np", **kwargs).frames[0]
    return np.asarray(pipe(output_type="pil", **kwargs).images[0])


def _reloaded(repo: str) -> object:
    """The pipeline as diffusers loads the cached hub id itself."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(repo, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("repo", list(MODELS))
def test_stock_and_sparse_runs_of_a_cached_hub_id(repo, cache, written, tmp_path, capsys):
    stock = _output(repo, _cli(repo, tmp_path, "stock", "--steps", str(STEPS)), written)
    assert f"loading {repo} on cpu" in capsys.readouterr().err
    np.testing.assert_array_equal(stock, _call(_reloaded(repo), repo))
    # the weights saved and read back from disk: the built pipeline up to float rounding (the loaded weights sit at
    # other memory alignments, so CPU kernels may round differently). HunyuanVideo-1.5's shortened token budgets are
    # pipeline attributes that save_pretrained does not keep: the reloaded one pads to the stock lengths, masked.
    built = _call(cache[repo], repo)
    if MODELS[repo][1] == "video":
        np.testing.assert_allclose(stock, built, rtol=0, atol=1e-5)
    else:
        assert np.abs(stock.astype(int) - built.astype(int)).max() <= 1

    full = _output(repo, _cli(repo, tmp_path, "full", "--steps", str(STEPS), "--sparse", "1.0"), written)
    np.testing.assert_array_equal(full, stock)
    # a step that runs sparse: Wan 2.2's low-noise expert refreshes (exact) at its first step, so give it two
    steps = SPARSE_STEPS.get(repo, STEPS)
    if steps != STEPS:
        stock = _output(repo, _cli(repo, tmp_path, "stock_more", "--steps", str(steps)), written)
    sparse_args = ["--steps", str(steps), "--sparse", "0.3", "--sparse-block-size", "4"]
    sparse = _output(repo, _cli(repo, tmp_path, "sparse", *sparse_args), written)
    assert sparse.shape == stock.shape
    if MODELS[repo][1] == "video":  # more than float rounding
        assert np.abs(sparse - stock).max() > 1e-4
    else:
        assert not np.array_equal(sparse, stock)


@pytest.mark.parametrize("repo", BOTTLENECK)
def test_one_stage_bottleneck_of_a_cached_hub_id_is_the_stock_call(repo, cache, written, tmp_path):
    out = _cli(repo, tmp_path, "one", "--bottleneck-stages", f"1:{STEPS}:1:none")
    np.testing.assert_array_equal(_output(repo, out, written), _call(_reloaded(repo), repo))


@pytest.mark.parametrize(
    ("repo", "preset"), [("tiny/wan22", "wan22-3x"), ("tiny/qwen-image", "qwenimage-2x"), ("tiny/flux2", "flux2-2x")]
)
def test_bottleneck_preset_of_a_cached_hub_id_is_the_samplers_call(repo, preset, cache, written, tmp_path, recwarn):
    from unbottle.pipelines.bottleneck import BottleneckSampler

    out = _output(repo, _cli(repo, tmp_path, preset, "--bottleneck", preset), written)
    assert not [w for w in recwarn if "bottleneck preset" in str(w.message)]  # the preset's own family
    expected = _call(BottleneckSampler.from_preset(_reloaded(repo), preset), repo, steps=None)
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, _call(_reloaded(repo), repo))


def test_sparse_on_both_wan22_experts_is_reported(cache, tmp_path, capsys):
    pipe = cache["tiny/wan22"]
    layers = pipe.transformer.config.num_layers + pipe.transformer_2.config.num_layers
    _cli("tiny/wan22", tmp_path, "sparse", "--steps", "1", "--sparse", "0.5", "--sparse-block-size", "4")
    assert f"block 4, reshape on, {layers} self-attention layers" in capsys.readouterr().err
    assert layers == 4


def test_an_id_missing_from_the_cache_is_not_fetched(cache, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["image", PROMPT, "--model", "tiny/absent", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "'tiny/absent' is not in the local Hugging Face cache" in err and "HF_HUB_OFFLINE is set" in err
    assert not out.exists()


def test_image_to_video_takes_its_first_frame_from_image(written, tmp_path, capsys):
    """`unbottle video --image FILE` on a Wan image-to-video folder is the pipeline's call with that image; without
    --image, or with it on a text-to-video pipeline, the run stops with a usage error naming --image."""
    from diffusers import DiffusionPipeline

    from unbottle.testing.wan_i2v import tiny_wan_i2v_pipeline

    folder = tmp_path / "wan-i2v"
    tiny_wan_i2v_pipeline().save_pretrained(folder)
    first = tmp_path / "first.png"
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)).save(first)
    size = ["--height", "32", "--width", "32", "--frames", "9", "--steps", str(STEPS), "--seed", str(SEED)]
    out = tmp_path / "v.mp4"
    assert main(["video", PROMPT, "--model", str(folder), "--image", str(first), "-o", str(out), "-q", *size]) == 0
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(image=Image.open(first).convert("RGB"), prompt=PROMPT, height=32, width=32, num_frames=9,
                    num_inference_steps=STEPS, generator=torch.Generator().manual_seed(SEED), output_type="np")
    np.testing.assert_array_equal(written[-1], expected.frames[0])
    capsys.readouterr()
    assert main(["video", PROMPT, "--model", str(folder), "-o", str(tmp_path / "x.mp4"), "-q", *size]) == 2
    assert "--image: WanImageToVideoPipeline is image-to-video" in capsys.readouterr().err
    assert main(["video", PROMPT, "--image", str(first), "-o", str(tmp_path / "y.mp4"), "-q", "--frames", "5"]) == 2
    assert "is not an image-to-video pipeline" in capsys.readouterr().err  # the embedded text-to-video default
    with pytest.raises(SystemExit) as info:
        main(["video", PROMPT, "--image", str(tmp_path / "none.png"), "-o", str(tmp_path / "z.mp4")])
    assert info.value.code == 2 and "argument --image: no such file" in capsys.readouterr().err
