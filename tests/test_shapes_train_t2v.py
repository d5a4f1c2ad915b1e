"""examples/shapes/train_t2v.py: a few CPU steps write a loadable stock WanPipeline; --resume continues the count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "train_t2v.py"
TINY = ["--vae-minutes", "0.01", "--dit-minutes", "0.01", "--batch", "2", "--vae-batch", "2", "--workers", "0",
        "--eval", "0", "--eval-videos", "0", "--vae-check", "0"]  # fmt: skip


@pytest.mark.timeout(600)
def test_two_short_runs_save_a_wan_pipeline_and_resume(tmp_path):
    import torch
    from diffusers import WanPipeline

    out = tmp_path / "run"
    first = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *TINY], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    record = json.loads((out / "pipeline" / "training.json").read_text())
    assert record["vae_done"] and record["step"] >= 1
    second = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--resume", *TINY],
                            capture_output=True, text=True)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = json.loads((out / "pipeline" / "training.json").read_text())
    assert resumed["step"] > record["step"]  # the DiT went on from the checkpoint; the VAE was not retrained
    assert "resumed at dit step" in (out / "train.log").read_text()

    pipe = WanPipeline.from_pretrained(out / "pipeline", dtype=torch.float32)
    assert pipe.transformer.config.num_layers == 8 and pipe.vae.config.z_dim == 8
    assert pipe.vae.config.latents_std != [1.0] * 8  # latent statistics were measured after the VAE phase
    frames = pipe("a red circle", height=128, width=128, num_frames=1, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert frames.shape == (1, 1, 128, 128, 3)
