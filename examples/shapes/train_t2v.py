"""Train the shapes text-to-image+video model: a stock WanPipeline (AutoencoderKLWan + UMT5 + WanTransformer3DModel).

    python examples/shapes/train_t2v.py --out runs/t2v4 --vae-from runs/t2v/pipeline --dit-minutes 13 --seed 2 \
        --bank-images 300000 --low-images 60000 --bank-workers 14      # the shipped v4 on v1's VAE (15.3 min)
    python examples/shapes/train_t2v.py --out runs/t2v           # one H200: VAE 4 min, banks 1.4, DiT 13 = 18.5 min
    python examples/shapes/train_t2v.py --out runs/t2v --resume --dit-minutes 6          # continue (with optimizer)
    python examples/shapes/train_t2v.py --out runs/t2v2 --init-from runs/t2v/pipeline --dit-minutes 11.5 --seed 1 \
        --bank-images 300000 --low-images 60000 --bank-workers 14                     # v2 = v1 + this (14.2 min)

Images are 1-frame videos: 128 px → VAE ×4 → 32×32 latents → 2×2 patches = 256 tokens per image; 17-frame videos
give 5 latent frames = 1,280 tokens. Phase 1 trains the VAE (L1 + MSE with object pixels weighted up, a light KL,
a linear learning-rate cool-down) on a seeded pixel stream, while a process pool renders the DiT's data. Phase 2
freezes the VAE, encodes that data once into latent banks on the GPU (normalized with the bank's own statistics),
and trains the text encoder and the DiT together with rectified-flow matching (logit-normal σ shifted as the
sampler's schedule is shifted, `--train-shift`; 10% empty captions for classifier-free guidance), prompts embedded
exactly as `WanPipeline.__call__` embeds them (512 text positions, computed exactly over the captions' own positions
by `compact_text.py`), scene kinds weighted by `--kind-weights`, and every `--low-every`-th step on a bank of 64 px
images (multi-resolution, for bottleneck sampling); the saved weights are an EMA of the trained ones. Checkpoints
every minute (resumable; banks are re-created from their seeds); the pipeline is saved in fp16 with
`save_pretrained`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from caption_labels import IGNORE, CaptionLabelHead, bank_labels  # noqa: E402
from compact_text import set_compact_text  # noqa: E402
from ema import EMA  # noqa: E402
from t2v_data import (  # noqa: E402
    FRAMES,
    SIZE,
    TEXT_LENGTH,
    batches,
    compact_length,
    encode_bank,
    encode_text_states,
    latent_statistics,
    make_bank,
    parse_kind_weights,
    render_chunk,
    render_jobs,
)

from unbottle.shapes import caption, render_image, sample_scene  # noqa: E402
from unbottle.shapes.training_log import open_log  # noqa: E402
from unbottle.shapes.world import BACKGROUND  # noqa: E402

BACKGROUND_PIXEL = torch.tensor(BACKGROUND).view(1, 3, 1, 1, 1) / 127.5 - 1.0  # the canvas colour in [-1, 1]


def build_pipeline(vocab_words: tuple[str, ...] | None = None, text_layers: int = 3, text_width: int = 256):
    """A fresh, untrained shapes WanPipeline (the architecture that ships; v1/v2 had a 2 × 128 text encoder)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from unbottle.tokenizers import WORDS, word_level_tokenizer

    tokenizer = word_level_tokenizer(226, words=vocab_words or WORDS)
    text_config = UMT5Config(vocab_size=len(tokenizer), d_model=text_width, d_kv=32, d_ff=2 * text_width,
                             num_layers=text_layers, num_heads=text_width // 32, dropout_rate=0.0, pad_token_id=0)
    text_encoder = UMT5EncoderModel(text_config)
    vae = AutoencoderKLWan(
        base_dim=24, z_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True],
        latents_mean=[0.0] * 8, latents_std=[1.0] * 8, scale_factor_spatial=4, scale_factor_temporal=4,
    )  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=32, in_channels=8, out_channels=8,
        text_dim=text_width, freq_dim=128, ffn_dim=1024, num_layers=8, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
    )  # fmt: skip
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip


def train_vae(pipe, args, device, log, minutes: float, lr: float, decoder_only: bool = False) -> None:
    """Train the VAE for `minutes` on the pixel stream (every `--vae-video-every`-th step a batch of clips); with
    `decoder_only`, the encoder (hence the latent space a trained DiT reads) stays as it is."""
    vae = pipe.vae.to(device).train()
    trained = [p for name, p in vae.named_parameters() if not decoder_only or not name.startswith(("encoder.",
                                                                                                   "quant_conv."))]
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    images = batches(args.seed, False, args.vae_batch, args.workers)
    videos = batches(args.seed + 1, True, args.vae_video_batch, args.workers, args.frames)
    start, step, budget = time.time(), 0, minutes * 60
    while (elapsed := time.time() - start) < budget:
        # constant, then a linear cool-down over the last 30% of the phase (v0's VAE without one ended noisy)
        for group in opt.param_groups:
            group["lr"] = lr * max(0.02, min(1.0, (1.0 - elapsed / budget) / 0.3))
        video = step % args.vae_video_every == args.vae_video_every - 1
        x = next(videos if video else images)[0].to(device)
        bg = BACKGROUND_PIXEL.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with torch.no_grad() if decoder_only else contextlib.nullcontext():
                posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        kl = posterior.kl().mean() / math.prod(x.shape[1:])
        # objects cover a few % of the canvas: weight their pixels up, or the VAE learns a grey world (seen: colours
        # collapsed to purple/grey at PSNR 22 with a plain per-pixel loss)
        weight = 1.0 + 9.0 * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.05).float()
        err = (recon - x).abs() + (recon - x) ** 2
        loss = (weight * err).mean() / weight.mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.4f} psnr {psnr(recon, x):.1f}")
    vae.eval()
    log(f"vae{' decoder' if decoder_only else ''}: {step} steps in {time.time() - start:.0f} s")
    if args.vae_check:
        vae_check(pipe, device, log, args.vae_check)
    if args.vae_check_videos:
        vae_check_videos(pipe, device, log, args.vae_check_videos, args.frames)


@torch.no_grad()
def vae_check(pipe, device, log, n: int = 128) -> float:
    """The evaluator's accuracy on VAE reconstructions of rendered held-out images (the ceiling for the DiT)."""
    from unbottle.shapes.evaluate import evaluate

    rng = random.Random(20_000)
    scenes = [sample_scene(rng) for _ in range(n)]
    pixels = torch.from_numpy(np.stack([render_image(s, SIZE) for s in scenes])).permute(0, 3, 1, 2)[:, :, None]
    x = pixels.float().to(device) / 127.5 - 1.0  # (n, 3, 1, H, W)
    recon = torch.cat([pipe.vae.decode(pipe.vae.encode(c).latent_dist.mode()).sample for c in x.split(32)])
    images = ((recon[:, :, 0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    report = evaluate([(img, caption(s, rng)) for img, s in zip(images, scenes, strict=True)])
    log(f"vae reconstruction psnr {psnr(recon, x):.1f}, evaluator accuracy {report.accuracy:.3f} on {n} images")
    return report.accuracy


@torch.no_grad()
def vae_check_videos(pipe, device, log, n: int, frames: int) -> float:
    """The evaluator's accuracy on VAE reconstructions of the held-out motion clips (seed 10,001, `frames` frames):
    the ceiling for the DiT's clips."""
    from unbottle.shapes import render_video
    from unbottle.shapes.evaluate import evaluate

    rng = random.Random(10_001)
    scenes = [sample_scene(rng, video=True) for _ in range(n)]
    captions = [caption(s, rng) for s in scenes]
    samples, errors = [], []
    for scene, text in zip(scenes, captions, strict=True):
        clip = torch.from_numpy(render_video(scene, SIZE, frames)).permute(3, 0, 1, 2)[None]  # (1, 3, F, H, W)
        x = clip.float().to(device) / 127.5 - 1.0
        recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)  # (1, 3, F, H, W)
        errors.append(F.mse_loss(recon.float(), x).item() / 4.0)
        frames_out = ((recon[0] + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()  # (F, H, W, 3)
        samples.append((frames_out, text))
    report = evaluate(samples)
    log(f"vae reconstruction of {n} held-out {frames}-frame clips: psnr "
        f"{10 * math.log10(1.0 / max(sum(errors) / n, 1e-10)):.1f}, evaluator accuracy {report.accuracy:.3f}")
    return report.accuracy


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item() / 4.0  # [-1, 1] → [0, 1] scale
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def build_banks(
    pipe, device, log, rendered: dict, measure_statistics: bool, low_size: int, labels: bool = False
) -> dict:  # fmt: skip
    """Encode the rendered chunks into normalized latent banks {"image", "video", "low"} (with the VAE's latent
    statistics, measured on the image bank first when `measure_statistics`); "low" holds images at `low_size` px;
    with `labels`, each bank carries its captions' token labels (caption_labels.py)."""
    vae = pipe.vae.to(device).eval()
    raw = {"image": encode_bank(vae, rendered["image"], device, 256, log, "image"),
           "video": encode_bank(vae, rendered["video"], device, 16, log, "video")}  # fmt: skip
    if "low" in rendered:
        raw["low"] = encode_bank(vae, rendered["low"], device, 256, log, f"{low_size} px image", size=low_size)
    if measure_statistics:
        mean, std = latent_statistics(raw["image"][0])  # the pipeline un-normalizes with these
        pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
    mean, std = pipe.vae.config.latents_mean, pipe.vae.config.latents_std
    label_fn = bank_labels if labels else None
    return {name: make_bank(latents, captions, pipe.tokenizer, mean, std, label_fn)
            for name, (latents, captions) in raw.items()}  # fmt: skip


def train_dit(pipe, args, device, log, state: dict, banks: dict, head: CaptionLabelHead | None = None) -> EMA:
    pipe.vae.to(device).eval().requires_grad_(False)
    text_encoder, transformer = pipe.text_encoder.to(device).train(), pipe.transformer.to(device).train()
    # text positions per bank: the pipeline's 512, or (exactly equivalent) a few more than the longest caption
    lengths = {name: compact_length(bank.ids) if args.compact_text else TEXT_LENGTH for name, bank in banks.items()}
    if args.compact_text:
        set_compact_text(transformer, TEXT_LENGTH)
        log(f"compact text attention: {lengths} positions stand for {TEXT_LENGTH}")
    low_batch = args.batch * (SIZE // args.low_size) ** 2  # as many tokens per step as a full-size batch
    params = list(text_encoder.parameters()) + list(transformer.parameters())
    # compiled: 1.45x the eager step at batch 256 on an H200 (bench/results/t2v-train-throughput-h200.json); only the
    # full-size image batch (most steps): compiling v2's three batch shapes took 4.3 of its 11.5 minutes
    compiled = torch.compile(transformer) if args.compile and device.type == "cuda" else transformer
    head_params = list(head.to(device).parameters()) if head is not None else []
    opt = torch.optim.AdamW(params + head_params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = EMA(params, args.ema)
    if state.get("opt") is not None:
        opt.load_state_dict(state["opt"])
    if state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    gen = torch.Generator(device=device).manual_seed(args.seed + state["step"])
    start, last_save, last_eval, first_step = time.time(), time.time(), time.time(), state["step"]
    budget, seen, t_log, loss_aux = args.dit_minutes * 60, 0, time.time(), None
    while (elapsed := time.time() - start) < budget:
        # warm-up over the first 300 steps of a run, then constant, then linear cool-down over the last 25% of it
        ramp = min(1.0, (state["step"] - first_step + 1) / 300, 4.0 * (1.0 - elapsed / budget))
        for group in opt.param_groups:
            group["lr"] = args.lr * max(ramp, 0.02)
        video = state["step"] % args.video_every == args.video_every - 1
        low = not video and "low" in banks and state["step"] % max(args.low_every, 1) == 1
        kind = "video" if video else "low" if low else "image"
        bank = banks[kind]
        x0, ids, mask, labels = bank.sample_with_labels(
            args.video_batch if video else low_batch if low else args.batch, gen
        )  # fmt: skip
        b = x0.shape[0]
        drop = torch.rand(b, device=device, generator=gen) < 0.1
        ids, mask = bank.drop_captions(ids, mask, drop)  # for CFG
        sigma = torch.sigmoid(torch.randn(b, device=device, generator=gen)).view(b, 1, 1, 1, 1)  # logit-normal
        sigma = shift_sigmas(sigma, args.train_shift)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        xt = (1 - sigma) * x0 + sigma * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            text, hidden = encode_text_states(text_encoder, ids, mask, lengths[kind])  # (B, T, D), (B, L, D)
            model = compiled if kind == "image" else transformer
            v = model(xt, sigma.flatten() * 1000, text, return_dict=False)[0]
        loss = F.mse_loss(v.float(), noise - x0)
        if head is not None and labels is not None and args.aux_weight > 0:
            aux = head.loss(hidden, torch.where(drop[:, None, None], IGNORE, labels))  # dropped captions: no labels
            loss_aux = aux.item() if state["step"] % 100 == 99 else None
            loss = loss + args.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        state["step"] += 1
        seen += b
        if state["step"] % 100 == 0:
            rate = seen / (time.time() - t_log)
            aux_text = f" aux {loss_aux:.3f}" if head is not None and loss_aux is not None else ""
            log(f"dit step {state['step']} loss {loss.item():.4f}{aux_text} lr {opt.param_groups[0]['lr']:.2e} "
                f"{rate:.0f}/s")
            seen, t_log = 0, time.time()
        if args.eval_every and time.time() - last_eval > args.eval_every * 60:
            with ema.applied():
                quick_eval(pipe, device, 32, log, videos=args.eval_every_videos, steps=12, quiet=True,
                           frames=args.frames)
            text_encoder.train(), transformer.train()
            last_eval = t_log = time.time()
        if time.time() - last_save > 60:
            save_checkpoint(pipe, opt, ema, state, args.out, head)
            last_save = time.time()
    text_encoder.eval(), transformer.eval()
    log(f"dit: {state['step'] - first_step} steps in {time.time() - start:.0f} s (at step {state['step']})")
    save_checkpoint(pipe, opt, ema, state, args.out, head)
    return ema


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift s·σ / (1 + (s − 1)·σ) of SD3 (Esser et al., 2024), as the scheduler samples."""
    return sigma if shift == 1.0 else shift * sigma / (1.0 + (shift - 1.0) * sigma)


def save_checkpoint(pipe, opt, ema: EMA | None, state: dict, out: Path, head: torch.nn.Module | None = None) -> None:
    state = dict(state, opt=opt.state_dict() if opt is not None else None,
                 ema=ema.state_dict() if ema is not None else None)  # fmt: skip
    models = {k: m.state_dict() for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    torch.save({"state": state, "models": models, "head": head.state_dict() if head is not None else None,
                "vae_config": dict(pipe.vae.config)}, out / "checkpoint.tmp")  # fmt: skip
    os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")  # a run killed mid-save keeps the last checkpoint


@torch.no_grad()
def quick_eval(
    pipe, device, n: int, log, out: Path | None = None, videos: int = 0, steps: int = 20, quiet: bool = False,
    frames: int = FRAMES,
) -> dict:  # fmt: skip
    """Generate `n` held-out image captions (seed 10_000) and `videos` motion captions as `frames`-frame clips (seed
    10_001), and score them."""
    from unbottle.shapes.evaluate import evaluate

    pipe.text_encoder.eval(), pipe.transformer.eval()
    results = {}
    for kind, count in (("image", n), ("video", videos)):
        if count <= 0:
            continue
        rng = random.Random(10_000 if kind == "image" else 10_001)
        scenes = [sample_scene(rng, video=kind == "video") for _ in range(count)]
        captions = [caption(s, rng) for s in scenes]
        count_frames, chunk = (1, 50) if kind == "image" else (frames, 16)
        samples = []
        for i in range(0, count, chunk):
            gen = torch.Generator().manual_seed(i)
            out_ = pipe(captions[i : i + chunk], height=SIZE, width=SIZE, num_frames=count_frames,
                        num_inference_steps=steps, guidance_scale=4.0, output_type="np", generator=gen).frames
            for video, text in zip(out_, captions[i : i + chunk], strict=True):
                video = (np.asarray(video) * 255).round().astype(np.uint8)  # (F, H, W, 3)
                samples.append((video[0] if kind == "image" else video, text))
        report = evaluate(samples)
        results[kind] = report.to_dict()
        if quiet:
            per = " ".join(f"{k} {v:.2f}" for k, v in sorted(report.per_category.items()))
            log(f"eval ({count} {kind}s, {steps} steps): overall {report.accuracy:.3f} | {per}")
        else:
            log(f"eval on {count} held-out {kind} captions:\n{report.table()}")
        if out is not None and len(samples) >= 8:  # a contact sheet of the first 32 (videos: first frames)
            from PIL import Image

            sheet = np.concatenate([np.concatenate([s[0] if kind == "image" else s[0][0] for s in samples[r:r + 8]], 1)
                                    for r in range(0, min(32, len(samples)) - 7, 8)], 0)  # fmt: skip
            Image.fromarray(sheet).save(out / f"samples_{kind}.png")
            (out / f"samples_{kind}.txt").write_text("\n".join(c for _, c in samples[:32]))
    return results


def start_rendering(args) -> tuple[multiprocessing.pool.Pool, dict]:
    """A fork pool rendering the DiT's banks in the background (started before CUDA is touched)."""
    pool = multiprocessing.get_context("fork").Pool(max(1, args.bank_workers))
    weights = parse_kind_weights(args.kind_weights)
    banks = [("image", args.bank_images, 2048, 0), ("video", args.bank_videos, 128, 1)]
    if args.low_images and args.low_every:
        banks.append(("low", args.low_images, 2048, 2))
    rendered = {kind: pool.imap(render_chunk, render_jobs(args.seed + 300 + offset, count, kind == "video", chunk,
                                                          weights, args.frames))
                for kind, count, chunk, offset in banks}  # fmt: skip
    return pool, rendered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (with optimizer)")
    parser.add_argument("--init-from", type=Path, help="continue from a saved pipeline folder (fresh optimizer)")
    parser.add_argument("--vae-from", type=Path,
                        help="take the VAE (and its latent statistics) of a saved pipeline folder and skip the VAE "
                        "phase; the text encoder and DiT start fresh")  # fmt: skip
    parser.add_argument("--text-layers", type=int, default=3, help="text encoder layers (v1/v2: 2)")
    parser.add_argument("--text-width", type=int, default=256, help="text encoder width, multiple of 32 (v1/v2: 128)")
    parser.add_argument("--aux-weight", type=float, default=0.1,
                        help="weight of the text encoder's caption-label loss (caption_labels.py; 0: none, v1/v2)")
    parser.add_argument("--vae-minutes", type=float, default=4.0)
    parser.add_argument("--dit-minutes", type=float, default=13.0)
    parser.add_argument("--batch", type=int, default=256, help="images per DiT step (clips: batch / 8)")
    parser.add_argument("--video-every", type=int, default=4, help="every k-th DiT step trains on clips")
    parser.add_argument("--video-batch", type=int, default=None, help="clips per clip step (default batch / 8)")
    parser.add_argument("--frames", type=int, default=FRAMES,
                        help=f"frames per training clip, 4k + 1 (default {FRAMES}: 5 latent frames; 33: 9)")
    parser.add_argument("--bank-images", type=int, default=300_000, help="rendered images in the DiT's bank")
    parser.add_argument("--bank-videos", type=int, default=10_000, help="rendered clips in the DiT's bank")
    parser.add_argument("--kind-weights", default="single:1,attribute:2,pair:3,relation:4,count:3",
                        help="image scene kinds of the banks, KIND:WEIGHT,... over single, attribute, pair, relation, "
                        "count ('' = uniform, v1's mix)")  # fmt: skip
    parser.add_argument("--low-images", type=int, default=100_000,
                        help="images in the low-resolution bank (rendered at 128 px, resized to --low-size; 0: none)")
    parser.add_argument("--low-size", type=int, default=64, help="pixel size of the low-resolution bank")
    parser.add_argument("--low-every", type=int, default=8,
                        help="every k-th DiT step (that is not a clip step) trains on the low-resolution bank")
    parser.add_argument("--compact-text", action=argparse.BooleanOptionalAction, default=True,
                        help="exact cross-attention over the captions' positions instead of 512 (compact_text.py)")
    parser.add_argument("--bank-workers", type=int, default=max(1, min(10, (os.cpu_count() or 2) - 6)))
    parser.add_argument("--vae-batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--train-shift", type=float, default=3.0,
                        help="shift the logit-normal training σ as the pipeline's scheduler shifts its sampling "
                        "schedule (3, as it samples; 1: none, v1–v3)")  # fmt: skip
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved DiT/text-encoder weights")
    parser.add_argument("--vae-lr", type=float, default=5e-4)
    parser.add_argument("--vae-video-every", type=int, default=5, help="every k-th VAE step trains on clips")
    parser.add_argument("--vae-video-batch", type=int, default=None, help="clips per VAE clip step (default "
                        "vae batch / 16)")  # fmt: skip
    parser.add_argument("--vae-tune-minutes", type=float, default=0.0,
                        help="after taking a trained VAE (--init-from, --vae-from, --resume), train its decoder this "
                        "long on images and --frames clips (the encoder, hence the DiT's latent space, unchanged)")
    parser.add_argument("--vae-tune-lr", type=float, default=2e-4)
    parser.add_argument("--vae-check-videos", type=int, default=0,
                        help="held-out motion clips whose VAE reconstructions the evaluator scores after a VAE "
                        "phase (the ceiling for clips; default 0)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=5, help="data-loader processes of the VAE phase")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the DiT on CUDA (default on)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=200, help="held-out captions to score at the end (0: none)")
    parser.add_argument("--eval-every", type=float, default=3.0, help="minutes between quick scores (0: none)")
    parser.add_argument("--vae-check", type=int, default=128, help="held-out images to score VAE reconstructions on")
    parser.add_argument("--eval-videos", type=int, default=64, help="held-out motion captions to score at the end")
    parser.add_argument("--eval-every-videos", type=int, default=0,
                        help="held-out motion captions in each quick score during training (default 0)")
    args = parser.parse_args()
    if args.low_size % 8 or SIZE % args.low_size or not 8 <= args.low_size < SIZE:
        parser.error(f"--low-size {args.low_size}: must divide {SIZE}, be a multiple of 8 and less than {SIZE}")
    if args.frames < 5 or (args.frames - 1) % 4:
        parser.error(f"--frames {args.frames}: clips need 4k + 1 frames, at least 5 (5, 9, ..., 17, 33)")
    args.video_batch = args.video_batch if args.video_batch is not None else max(1, args.batch // 8)
    if args.video_batch < 1:
        parser.error(f"--video-batch {args.video_batch}: must be ≥ 1")
    args.vae_video_batch = args.vae_video_batch if args.vae_video_batch is not None else max(1, args.vae_batch // 16)
    for name in ("vae_video_every", "vae_video_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be ≥ 1")
    if args.vae_tune_minutes < 0 or args.vae_check_videos < 0:
        parser.error(f"--vae-tune-minutes {args.vae_tune_minutes} / --vae-check-videos {args.vae_check_videos}: "
                     "must be ≥ 0")  # fmt: skip
    if args.vae_tune_minutes > 0 and not (args.init_from or args.vae_from or args.resume):
        parser.error("--vae-tune-minutes tunes a trained VAE's decoder: give --init-from, --vae-from or --resume")
    if args.low_every < 0 or args.low_every == 1:
        parser.error(f"--low-every {args.low_every}: must be 0 (no low-resolution steps) or ≥ 2")
    parse_kind_weights(args.kind_weights)  # a bad mix fails here, not after the VAE phase
    if args.text_layers < 1 or args.text_width < 32 or args.text_width % 32:
        parser.error(f"--text-layers {args.text_layers} / --text-width {args.text_width}: need ≥ 1 layer and a width "
                     "that is a positive multiple of 32")  # fmt: skip
    if not 0.1 <= args.train_shift <= 20:
        parser.error(f"--train-shift {args.train_shift}: allowed 0.1 ≤ shift ≤ 20 (1: no shift)")
    if args.aux_weight < 0:
        parser.error(f"--aux-weight {args.aux_weight}: must be ≥ 0")
    if args.vae_from is not None and (args.resume or args.init_from is not None):
        parser.error("--vae-from starts a fresh DiT: it cannot be combined with --resume or --init-from")
    args.out.mkdir(parents=True, exist_ok=True)
    log = open_log(args.out / "train.log")
    log(f"args: {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    pool, rendered = start_rendering(args) if args.dit_minutes > 0 else (None, {})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)

    pipe = build_pipeline(text_layers=args.text_layers, text_width=args.text_width)
    pipe.set_progress_bar_config(disable=True)
    head = CaptionLabelHead(args.text_width) if args.aux_weight > 0 else None
    state = {"step": 0, "vae_done": False, "seed": args.seed}
    if args.resume and (args.out / "checkpoint.pt").exists():
        ckpt = torch.load(args.out / "checkpoint.pt", map_location="cpu", weights_only=True)
        for name, sd in ckpt["models"].items():
            getattr(pipe, name).load_state_dict(sd)
        if head is not None and ckpt.get("head") is not None:
            head.load_state_dict(ckpt["head"])
        pipe.vae.register_to_config(latents_mean=ckpt["vae_config"]["latents_mean"],
                                    latents_std=ckpt["vae_config"]["latents_std"])  # fmt: skip
        state = ckpt["state"]
        log(f"resumed at dit step {state['step']} (vae done: {state['vae_done']})")
    elif args.init_from is not None:
        from diffusers import WanPipeline

        saved = WanPipeline.from_pretrained(args.init_from)
        for name in ("vae", "text_encoder", "transformer"):
            getattr(pipe, name).load_state_dict({k: v.float() for k, v in getattr(saved, name).state_dict().items()})
        pipe.vae.register_to_config(latents_mean=saved.vae.config.latents_mean,
                                    latents_std=saved.vae.config.latents_std)  # fmt: skip
        state = {**json.loads((args.init_from / "training.json").read_text()), "opt": None, "ema": None}
        state.pop("eval", None)
        state.pop("vae_tuned", None)  # a new run tunes the decoder when asked, even one tuned before
        log(f"initialized from {args.init_from} at dit step {state['step']}")
    elif args.vae_from is not None:
        from diffusers import AutoencoderKLWan

        saved = AutoencoderKLWan.from_pretrained(args.vae_from, subfolder="vae")
        pipe.vae.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})
        pipe.vae.register_to_config(latents_mean=saved.config.latents_mean, latents_std=saved.config.latents_std)
        state["vae_done"], state["vae_from"] = True, str(args.vae_from)
        log(f"vae from {args.vae_from}; text encoder {args.text_layers} x {args.text_width} and DiT from scratch")
    if not state["vae_done"] and args.vae_minutes > 0:
        train_vae(pipe, args, device, log, args.vae_minutes, args.vae_lr)
        state["vae_done"] = True
        save_checkpoint(pipe, None, None, state, args.out)
        log("vae done")
    if args.vae_tune_minutes > 0 and not state.get("vae_tuned"):  # a resumed run does not tune it twice
        train_vae(pipe, args, device, log, args.vae_tune_minutes, args.vae_tune_lr, decoder_only=True)
        state["vae_tuned"] = True
        save_checkpoint(pipe, None, None, state, args.out)
    if args.dit_minutes > 0:
        # a DiT that has trained keeps the latent statistics it was trained on
        banks = build_banks(pipe, device, log, rendered, state["step"] == 0 and args.vae_from is None, args.low_size,
                            labels=head is not None)  # fmt: skip
        pool.close()
        log(f"latent mean {pipe.vae.config.latents_mean}, std {pipe.vae.config.latents_std}")
        ema = train_dit(pipe, args, device, log, state, banks, head)
        ema.copy_to_params()  # ship the EMA weights
        del banks
    pipe.to(dtype=torch.float16).save_pretrained(args.out / "pipeline")
    record = args.out / "pipeline" / "training.json"
    record.write_text(json.dumps({k: v for k, v in state.items() if k not in ("opt", "ema")}))
    log(f"saved {args.out / 'pipeline'}")
    if args.eval:
        pipe.to(device, torch.float32)
        try:
            state["eval"] = quick_eval(pipe, device, args.eval, log, args.out, args.eval_videos,
                                       frames=args.frames)
        except Exception as e:  # noqa: BLE001 — the weights are saved; a failing evaluator must not lose them
            log(f"evaluation failed: {type(e).__name__}: {e}")
        record.write_text(json.dumps({k: v for k, v in state.items() if k not in ("opt", "ema")}))


if __name__ == "__main__":
    main()
