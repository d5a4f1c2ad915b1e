"""`unbottle video --parallel ulysses` as torchrun runs it: two gloo processes on the CPU, each with torchrun's
environment, calling the command line on the embedded shapes video model (8 heads); rank 0 writes what one process
writes (dense and sparse), rank 1 writes nothing. Without torchrun, or with heads the world does not divide, it
refuses.

diffusers places rank r on `rank % torch.accelerator.device_count()`, zero without an accelerator; the workers (never
the package) report one device so the CPU mesh builds."""

from __future__ import annotations

import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unbottle.cli import generate as generate_module
from unbottle.cli import main
from unbottle.cli import parallel as parallel_module
from unbottle.cli.parallel import World, enable_ulysses
from unbottle.errors import RunError, UsageError

WORLD = 2
RUN = ["video", "a red circle moving right", "--steps", "3", "--height", "32", "--width", "32", "--frames", "5",
       "--seed", "7", "-q"]  # fmt: skip
SPARSE = ["--sparse", "0.3", "--sparse-block-size", "8"]  # 32 tokens: 4 blocks
TOLERANCE = 1e-5  # fp32 frames in [0, 1], Ulysses-2 vs one process


def _record(frames: list) -> None:
    """Make the MP4 writer of `unbottle video` append the frames (F, H, W, 3) it is handed to `frames`."""
    save_video = generate_module.save_video

    def record(video, output, fps):
        frames.append(np.array(video))
        return save_video(video, output, fps=fps)

    generate_module.save_video = record


def _worker(rank: int, port: int, folder: str, argv: list[str]) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # the shim: one "device" per process, the CPU
    frames: list = []
    _record(frames)
    degrees = []
    enable = parallel_module.enable_ulysses

    def record_degree(pipe, world):  # the Ulysses degree the transformer runs under
        enable(pipe, world)
        degrees.append(pipe.transformer._parallel_config.context_parallel_config.ulysses_degree)

    parallel_module.enable_ulysses = record_degree
    code = main([*argv, "--parallel", "ulysses", "-o", os.path.join(folder, "out.mp4")])
    result = {"code": code, "frames": frames, "degrees": degrees, "group left": dist.is_initialized()}
    torch.save(result, os.path.join(folder, f"result{rank}.pt"))


def _torchrun(argv: list[str]) -> tuple[list[dict], bool]:
    """`argv --parallel ulysses` on 2 ranks: each rank's result, and whether the output file exists afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(port, folder, argv), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(folder, f"result{r}.pt"), weights_only=False) for r in range(WORLD)]
        return results, os.path.isfile(os.path.join(folder, "out.mp4"))


@pytest.fixture
def written(monkeypatch):
    """The frames each single-process `unbottle video` run hands to the MP4 writer, in call order."""
    frames: list = []
    monkeypatch.setattr(generate_module, "save_video", generate_module.save_video)  # restored after the test
    _record(frames)
    return frames


@pytest.mark.parametrize("extra", [[], SPARSE], ids=["dense", "sparse"])
def test_rank_zero_writes_what_one_process_writes(extra, written, tmp_path):
    assert main([*RUN, *extra, "-o", str(tmp_path / "one.mp4")]) == 0
    one = written[-1]
    assert one.shape == (5, 32, 32, 3)
    results, wrote = _torchrun([*RUN, *extra])
    assert [r["code"] for r in results] == [0, 0] and wrote
    assert [r["degrees"] for r in results] == [[2], [2]]
    assert [len(r["frames"]) for r in results] == [1, 0]  # rank 1 hands nothing to the writer
    assert not any(r["group left"] for r in results)  # the process group is destroyed at the end
    np.testing.assert_allclose(results[0]["frames"][0], one, rtol=0, atol=TOLERANCE)
    if extra:  # sparse attention changed the output: the equality above is not the dense path's
        assert main([*RUN, "-o", str(tmp_path / "dense.mp4")]) == 0
        assert np.abs(written[-1] - one).max() > 1e-4


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}], ids=["none", "one"])
def test_refused_outside_torchrun(env, monkeypatch, tmp_path, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "sub" / "out.mp4"
    assert main([*RUN, "--parallel", "ulysses", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unbottle video: error: --parallel: " in err and "run it under torchrun --nproc-per-node N" in err
    assert ("WORLD_SIZE is not set" if not env else "WORLD_SIZE=1, allowed ≥ 2 processes") in err
    assert not out.parent.exists()  # refused before the output folder is made
    assert not dist.is_initialized()


def test_heads_the_world_does_not_divide_and_models_without_a_plan_are_refused():
    from unbottle.defaults import load_default

    pipe = load_default("video")
    with pytest.raises(UsageError) as e:
        enable_ulysses(pipe, World(3, 0, 0))
    assert str(e.value) == (
        "--parallel: WanTransformer3DModel has 8 heads, which 3 processes do not divide (Ulysses gives each rank an "
        "equal share); allowed --nproc-per-node: a divisor of 8 (2, 4, 8)"
    )
    assert pipe.transformer._parallel_config is None  # refused before any work

    class Pipe:
        transformer = torch.nn.Linear(1, 1)

    with pytest.raises(RunError, match=r"^--parallel: Linear has no diffusers transformer .*families: .*Wan"):
        enable_ulysses(Pipe(), World(2, 0, 0))
