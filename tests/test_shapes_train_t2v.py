"""examples/shapes/train_t2v.py: a few CPU steps write a loadable stock WanPipeline; --resume continues the count;
its data helpers embed prompts as the pipeline does, render seeded chunks, normalize banks; its EMA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "train_t2v.py"
TINY = ["--vae-minutes", "0.01", "--dit-minutes", "0.01", "--batch", "2", "--vae-batch", "2", "--workers", "0",
        "--eval", "0", "--eval-videos", "0", "--vae-check", "0", "--eval-every", "0", "--bank-images", "8",
        "--bank-videos", "2", "--bank-workers", "1"]  # fmt: skip


@pytest.mark.timeout(600)
def test_two_short_runs_save_a_wan_pipeline_and_resume(tmp_path):
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


# -- the training data helpers (examples/shapes/t2v_data.py, ema.py) -----------------------------------------------
sys.path.insert(0, str(SCRIPT.parent))


@pytest.fixture(scope="module")
def fresh_pipe():
    from train_t2v import build_pipeline

    torch.manual_seed(0)
    return build_pipeline()


def test_encode_text_equals_the_pipelines_prompt_embeddings(fresh_pipe):
    """Short-padded encoding + zeros to 512 == WanPipeline's own embeddings at its __call__ default (512 positions)."""
    from t2v_data import TEXT_LENGTH, encode_text, tokenize

    captions = ["a red circle", "a dotted yellow square below a solid pink circle", "", "two green stars"]
    ids, mask = tokenize(fresh_pipe.tokenizer, captions)
    assert ids.shape[1] < 20 and mask.sum(1).tolist() == [4, 10, 1, 4]  # words + </s>; "" is </s> alone
    with torch.no_grad():
        ours = encode_text(fresh_pipe.text_encoder, ids, mask)
        stock = fresh_pipe._get_t5_prompt_embeds(captions, max_sequence_length=TEXT_LENGTH)
    assert ours.shape == stock.shape == (4, 512, 128)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    assert ours[0, 4:].abs().max() == 0 and ours[0, :4].abs().min() > 0  # zeros exactly past each caption


def test_render_jobs_are_seeded_chunks():
    from t2v_data import render_chunk, render_jobs

    jobs = render_jobs(5, 7, False, 3)
    assert [j[2] for j in jobs] == [3, 3, 1] and [j[1] for j in jobs] == [0, 1, 2]
    frames, captions = render_chunk(jobs[1])
    again, captions_again = render_chunk(jobs[1])
    other, _ = render_chunk(jobs[0])
    assert frames.shape == (3, 1, 128, 128, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, again)
    assert captions == captions_again and not np.array_equal(frames, other)
    clips, clip_captions = render_chunk(render_jobs(5, 2, True, 2)[0])
    assert clips.shape == (2, 17, 128, 128, 3) and all(" mov" in c for c in clip_captions)


def test_latent_statistics_and_bank_normalization(fresh_pipe):
    from t2v_data import latent_statistics, make_bank

    gen = torch.Generator().manual_seed(0)
    raw = (torch.randn(50, 8, 1, 4, 4, generator=gen) * torch.arange(1, 9).view(1, 8, 1, 1, 1) + 3).half()
    mean, std = latent_statistics(raw)
    ref = raw.double().transpose(0, 1).flatten(1)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), ref.mean(1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), ref.std(1, correction=0), rtol=1e-9, atol=1e-9)
    bank = make_bank(raw.clone(), ["a red circle"] * 50, fresh_pipe.tokenizer, mean, std)
    back = bank.latents.float() * torch.tensor(std).view(1, 8, 1, 1, 1) + torch.tensor(mean).view(1, 8, 1, 1, 1)
    torch.testing.assert_close(back, raw.float(), rtol=2e-3, atol=2e-2)
    assert bank.ids.shape == (50, 4) and bank.mask.all()
    x, ids, mask = bank.sample(6, torch.Generator().manual_seed(1))
    y, _, _ = bank.sample(6, torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and x.shape == (6, 8, 1, 4, 4) and torch.equal(x, y) and ids.shape == (6, 4)


def test_ema_recurrence_warm_up_and_swap():
    from ema import EMA

    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    expected = torch.zeros(3)
    for k, value in enumerate([1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * value
    torch.testing.assert_close(ema.shadow[0], expected)
    with ema.applied():
        torch.testing.assert_close(p.detach(), expected)
    assert (p == 8.0).all()  # its own weights back
    state = ema.state_dict()
    other = EMA([torch.nn.Parameter(torch.zeros(3))], decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 12 and other.decay == 0.9 and torch.equal(other.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="ema decay = 1.0"):
        EMA([p], decay=1.0)
