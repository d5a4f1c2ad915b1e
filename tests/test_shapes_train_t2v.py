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
        "--bank-videos", "2", "--bank-workers", "1", "--low-images", "8", "--frames", "9"]  # fmt: skip


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

    # a decoder tune of the trained VAE: the encoder (the DiT's latent space) stays, the decoder moves
    tuned = tmp_path / "tuned"
    tune = ["--init-from", str(out / "pipeline"), "--vae-tune-minutes", "0.01", "--vae-check-videos", "1",
            "--dit-minutes", "0"]  # fmt: skip
    third = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tuned), *TINY, *tune], capture_output=True,
                           text=True)  # fmt: skip
    assert third.returncode == 0, third.stderr[-2000:]
    log = (tuned / "train.log").read_text()
    assert "vae decoder: " in log and "vae reconstruction of 1 held-out 9-frame clips: psnr " in log
    before = pipe.vae.state_dict()
    after = WanPipeline.from_pretrained(tuned / "pipeline", dtype=torch.float32).vae.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # a tuned pipeline tunes again when a new run asks (only --resume skips a tune its run has done)
    again = tmp_path / "again"
    fourth = subprocess.run([sys.executable, str(SCRIPT), "--out", str(again), *TINY, "--init-from",
                             str(tuned / "pipeline"), "--vae-tune-minutes", "0.01", "--dit-minutes", "0"],
                            capture_output=True, text=True)  # fmt: skip
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert "vae decoder: " in (again / "train.log").read_text()
    refused = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x"), "--vae-tune-minutes", "1"],
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "--vae-tune-minutes tunes a trained VAE's decoder" in refused.stderr


# -- the training data helpers (examples/shapes/t2v_data.py, ema.py) -----------------------------------------------
sys.path.insert(0, str(SCRIPT.parent))


@pytest.fixture(scope="module")
def fresh_pipe():
    from train_t2v import build_pipeline

    torch.manual_seed(0)
    return build_pipeline()


def test_encode_text_equals_the_pipelines_prompt_embeddings(fresh_pipe):
    """Short-padded encoding + zeros to 512 == WanPipeline's own embeddings at its __call__ default (512 positions)."""
    from t2v_data import TEXT_LENGTH, encode_text, encode_text_states, tokenize

    captions = ["a red circle", "a dotted yellow square below a solid pink circle", "", "two green stars"]
    ids, mask = tokenize(fresh_pipe.tokenizer, captions)
    assert ids.shape[1] < 20 and mask.sum(1).tolist() == [4, 10, 1, 4]  # words + </s>; "" is </s> alone
    with torch.no_grad():
        ours = encode_text(fresh_pipe.text_encoder, ids, mask)
        stock = fresh_pipe._get_t5_prompt_embeds(captions, max_sequence_length=TEXT_LENGTH)
    assert ours.shape == stock.shape == (4, 512, fresh_pipe.text_encoder.config.d_model)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        embeds, states = encode_text_states(fresh_pipe.text_encoder, ids, mask, 24)
    assert states.shape == (4, ids.shape[1], ours.shape[2])
    torch.testing.assert_close(embeds, ours[:, :24], rtol=1e-6, atol=1e-6)
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


def test_render_jobs_longer_clips_follow_the_same_scenes():
    from t2v_data import render_chunk, render_jobs

    short, captions = render_chunk(render_jobs(5, 2, True, 2)[0])
    long, long_captions = render_chunk(render_jobs(5, 2, True, 2, frames=33)[0])
    assert long.shape == (2, 33, 128, 128, 3) and long_captions == captions  # the same seeded scenes, longer clips
    assert not np.array_equal(long[:, 16], short[:, 16])  # the same travel over more frames: mid-clip frames differ
    np.testing.assert_array_equal(long[:, 0], short[:, 0])  # both start where the scene starts
    np.testing.assert_array_equal(long[:, -1], short[:, -1])  # and end where it ends
    for bad in (0, 16, 18, 32):
        with pytest.raises(ValueError, match=f"frames={bad}: clips need 4k \\+ 1 frames"):
            render_jobs(5, 2, True, 2, frames=bad)
    assert render_jobs(5, 2, False, 2, frames=16)[0][4] == 16  # images ignore the clip length


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


def test_compact_text_attention_equals_the_pipelines_512_positions(fresh_pipe):
    """Captions padded to T positions, pad keys counted as 512 − L, give the 512-position output (unbiased: not)."""
    from compact_text import CompactTextAttnProcessor, set_compact_text
    from t2v_data import compact_length, encode_text, tokenize

    captions = ["a red circle", "a dotted yellow square below a solid pink circle", "", "two green stars"]
    ids, mask = tokenize(fresh_pipe.tokenizer, captions)
    length = compact_length(ids)
    assert length % 8 == 0 and length > ids.shape[1]
    transformer = fresh_pipe.transformer
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 8, 1, 8, 8, generator=gen), torch.tensor([50.0, 300.0, 700.0, 990.0])
    with torch.no_grad():
        full, short = encode_text(fresh_pipe.text_encoder, ids, mask), encode_text(fresh_pipe.text_encoder, ids, mask,
                                                                                     length)  # fmt: skip
        stock = transformer(x, t, full, return_dict=False)[0]
        stock_short = transformer(x, t, short, return_dict=False)[0]
        original = set_compact_text(transformer)
        try:
            compact = transformer(x, t, short, return_dict=False)[0]
            compact_full = transformer(x, t, full, return_dict=False)[0]
            assert sum(isinstance(p, CompactTextAttnProcessor) for p in transformer.attn_processors.values()) == 8
        finally:
            transformer.set_attn_processor(original)
    scale = stock.abs().mean()
    assert (compact - stock).abs().max() <= 1e-5 * scale.clamp_min(1) * 10
    assert (compact_full - stock).abs().max() <= 1e-6 * scale.clamp_min(1) * 10  # no bias at 512 positions
    assert (stock_short - stock).abs().max() > 1e-3 * scale  # the pad count matters: the bias is what makes it exact
    with pytest.raises(ValueError, match="at most length=512"):
        CompactTextAttnProcessor(512)(transformer.blocks[0].attn2, x.new_zeros(1, 4, 256), x.new_zeros(1, 600, 256))


def test_kind_weights_steer_the_image_banks():
    from t2v_data import parse_kind_weights, render_chunk, render_jobs

    from unbottle.shapes import parse_caption

    assert parse_kind_weights("") is None and parse_kind_weights("relation:4,count:0") == (1.0, 1.0, 1.0, 4.0, 0.0)
    for bad in ("spatial:2", "relation", "relation:-1", "single:0,attribute:0,pair:0,relation:0,count:0"):
        with pytest.raises(ValueError, match="kind-weights"):
            parse_kind_weights(bad)
    only_relations = parse_kind_weights("single:0,attribute:0,pair:0,relation:1,count:0")
    job = render_jobs(3, 6, False, 6, only_relations)[0]
    frames, captions = render_chunk(job)
    assert [parse_caption(c).category for c in captions] == ["spatial"] * 6
    again, captions_again = render_chunk(job)
    np.testing.assert_array_equal(frames, again)
    assert captions == captions_again and render_chunk(render_jobs(3, 6, False, 6)[0])[1] != captions


def test_low_resolution_bank_is_encoded_from_resized_renders(fresh_pipe):
    from t2v_data import encode_bank, render_chunk, render_jobs

    chunks = [render_chunk(job) for job in render_jobs(4, 3, False, 3)]
    latents, captions = encode_bank(fresh_pipe.vae, iter(chunks), torch.device("cpu"), 2, lambda _: None, "t", 64)
    assert latents.shape == (3, 8, 1, 16, 16) and latents.dtype == torch.float16 and captions == chunks[0][1]
    full, _ = encode_bank(fresh_pipe.vae, iter(chunks), torch.device("cpu"), 2, lambda _: None, "t")
    assert full.shape == (3, 8, 1, 32, 32)


def test_caption_labels_mark_each_phrase_with_its_object():
    """Every word of an object's phrase is labelled with that object's named facts; other words are ignored."""
    from caption_labels import FIELDS, IGNORE, caption_labels

    text = "a small striped red circle to the left of a blue square"  # words 0-4, 5-8 relation, 9-11
    labels = caption_labels(text, 14)  # (fields, 14): 12 words, the end token, one pad
    row = {name: labels[i] for i, name in enumerate(FIELDS)}

    def expect(first: object, second: object) -> list:
        return [first] * 5 + [IGNORE] * 4 + [second] * 3 + [IGNORE] * 2

    idx = {name: {v: i for i, v in enumerate(classes)} for name, classes in FIELDS.items()}
    assert row["color"].tolist() == expect(idx["color"]["red"], idx["color"]["blue"])
    assert row["shape"].tolist() == expect(idx["shape"]["circle"], idx["shape"]["square"])
    assert row["size"].tolist() == expect(idx["size"]["small"], IGNORE)  # the blue square's size is not named
    assert row["texture"].tolist() == expect(idx["texture"]["striped"], IGNORE)
    assert row["role"].tolist() == expect(idx["role"]["left of"], idx["role"]["right of"])  # B is right of A
    assert row["motion"].tolist() == expect(idx["motion"]["none"], idx["motion"]["none"])
    assert (row["count"] == IGNORE).all()
    count = caption_labels("three green stars", 4)
    names = list(FIELDS)
    assert count[names.index("count")].tolist() == [idx["count"][3]] * 3 + [IGNORE]
    assert count[names.index("role")].tolist() == [idx["role"]["none"]] * 3 + [IGNORE]
    moving = caption_labels("a red circle moves up and a blue star moving left", 11)
    assert moving[names.index("motion")].tolist() == [idx["motion"]["up"]] * 5 + [IGNORE] + [idx["motion"]["left"]] * 5
    assert caption_labels(text, 3).shape == (len(FIELDS), 3)  # truncated like the token ids


def test_bank_labels_align_with_the_pipeline_tokens(fresh_pipe):
    """Word i of a caption is token i of the pipeline's tokenizer, so bank labels line up with the bank's ids."""
    import random

    from caption_labels import IGNORE, bank_labels, caption_labels
    from t2v_data import make_bank

    from unbottle.shapes import caption, sample_scene

    rng = random.Random(5)
    captions = [caption(sample_scene(rng, video=i % 3 == 0), rng) for i in range(60)]
    raw = torch.randn(60, 8, 1, 4, 4, dtype=torch.float16)
    bank = make_bank(raw, captions, fresh_pipe.tokenizer, [0.0] * 8, [1.0] * 8, bank_labels)
    assert bank.labels.shape == (60, 7, bank.ids.shape[1]) and bank.labels.dtype == torch.int8
    for i, text in enumerate(captions):
        words = text.split(" ")
        assert fresh_pipe.tokenizer.convert_ids_to_tokens(bank.ids[i, : len(words)].tolist()) == words
        assert int(bank.mask[i].sum()) == len(words) + 1  # + the end token, which no label marks
        np.testing.assert_array_equal(bank.labels[i].numpy(), caption_labels(text, bank.ids.shape[1]))
        assert (bank.labels[i, :, len(words) :] == IGNORE).all()
    x, ids, mask, labels = bank.sample_with_labels(7, torch.Generator().manual_seed(3))
    y, ids2, _ = bank.sample(7, torch.Generator().manual_seed(3))
    assert torch.equal(x, y) and torch.equal(ids, ids2) and labels.shape == (7, 7, bank.ids.shape[1])


def test_caption_label_head_loss_is_the_mean_field_cross_entropy():
    import torch.nn.functional as F
    from caption_labels import FIELDS, IGNORE, CaptionLabelHead

    torch.manual_seed(0)
    head = CaptionLabelHead(16)
    hidden = torch.randn(2, 5, 16, requires_grad=True)
    labels = torch.full((2, len(FIELDS), 5), IGNORE, dtype=torch.int8)
    labels[0, 0, :3] = torch.tensor([1, 2, 3])  # colour on three tokens of row 0
    labels[1, 1, 4] = 5  # shape on one token of row 1
    loss = head.loss(hidden, labels)
    logits = head.proj(hidden)  # (2, 5, sum of classes)
    n_color, n_shape = len(FIELDS["color"]), len(FIELDS["shape"])
    ce_color = F.cross_entropy(logits[0, :3, :n_color], torch.tensor([1, 2, 3]))
    ce_shape = F.cross_entropy(logits[1, 4:5, n_color : n_color + n_shape], torch.tensor([5]))
    torch.testing.assert_close(loss, (ce_color + ce_shape) / len(FIELDS))  # unused fields add 0, not NaN
    loss.backward()
    assert hidden.grad[0, :3].abs().sum() > 0 and hidden.grad[0, 3:].abs().sum() == 0  # only labelled tokens


def test_train_shift_maps_sigmas_as_the_pipelines_scheduler_shifts_them():
    """`--train-shift s` puts training σ where the sampler at shift s puts its steps (SD3's time shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from train_t2v import shift_sigmas

    from unbottle.shapes.pretrained import T2V_DIR

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(T2V_DIR, subfolder="scheduler")
    shift = scheduler.config.shift
    plain = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, shift=1.0)
    assert shift == 3.0  # what the shipped model was trained for (train_t2v.py's default)
    torch.testing.assert_close(shift_sigmas(plain.sigmas, shift), scheduler.sigmas)  # the scheduler's own σ table
    sigma = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shift_sigmas(sigma, 1.0), sigma)
    shifted = shift_sigmas(sigma, 3.0)
    assert bool((shifted >= sigma).all())
    assert float((shifted > 0.8).float().mean()) > 2 * float((sigma > 0.8).float().mean())
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", "unused", "--train-shift", "0"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "--train-shift 0.0: allowed 0.1 ≤ shift ≤ 20" in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", "unused", "--frames", "32"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "--frames 32: clips need 4k + 1 frames" in done.stderr
