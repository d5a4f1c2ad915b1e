"""Train the shapes text-to-image+video model: a stock WanPipeline (AutoencoderKLWan + UMT5 + WanTransformer3DModel).

    python examples/shapes/train_t2v.py --out runs/t2v                        # one H200: VAE 5 min, DiT 14 min
    python examples/shapes/train_t2v.py --out runs/t2v --resume --dit-minutes 9          # continue (with optimizer)
    python examples/shapes/train_t2v.py --out runs/t2v2 --init-from unbottle/assets/shapes/t2v --dit-minutes 14

Images are 1-frame videos: 128 px → VAE ×4 → 32×32 latents → 2×2 patches = 256 tokens per image; 17-frame videos
give 5 latent frames = 1,280 tokens. Phase 1 trains the VAE (L1 + MSE + a light KL); phase 2 freezes it, measures
the latent statistics, and trains the text encoder and the DiT together with rectified-flow matching (10% empty
captions for classifier-free guidance), exactly through the pipeline's own prompt encoding. Data are generated on
the fly from a seeded stream. Checkpoints every minute (resumable); the pipeline is saved in fp16 with
`save_pretrained`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from unbottle.shapes import caption, render_image, render_video, sample_scene  # noqa: E402
from unbottle.shapes.training_log import open_log  # noqa: E402
from unbottle.shapes.world import BACKGROUND  # noqa: E402

SIZE, FRAMES = 128, 17
BACKGROUND_PIXEL = torch.tensor(BACKGROUND).view(1, 3, 1, 1, 1) / 127.5 - 1.0  # the canvas colour in [-1, 1]


def build_pipeline(vocab_words: tuple[str, ...] | None = None):
    """A fresh, untrained shapes WanPipeline (the architecture that ships)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from unbottle.testing.tokenizers import WORDS, word_level_tokenizer

    tokenizer = word_level_tokenizer(226, words=vocab_words or WORDS)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=128, d_kv=32, d_ff=256, num_layers=2,
                                               num_heads=4, dropout_rate=0.0, pad_token_id=0))  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=24, z_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True],
        latents_mean=[0.0] * 8, latents_std=[1.0] * 8, scale_factor_spatial=4, scale_factor_temporal=4,
    )  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=32, in_channels=8, out_channels=8,
        text_dim=128, freq_dim=128, ffn_dim=1024, num_layers=8, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=256,
    )  # fmt: skip
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip


class ShapesStream(torch.utils.data.IterableDataset):
    """Endless (pixels (3, F, H, W) in [-1, 1], caption) pairs from the seeded generator; video with prob `video`."""

    def __init__(self, seed: int, video: float) -> None:
        self.seed, self.video = seed, video

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            is_video = rng.random() < self.video
            scene = sample_scene(rng, video=is_video)
            frames = render_video(scene, SIZE, FRAMES) if is_video else render_image(scene, SIZE)[None]
            pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, F, H, W)
            yield pixels, caption(scene, rng)


def batches(seed: int, video: bool, batch: int, workers: int):
    """Batches of one kind (all images or all videos), so frame counts match within a batch."""
    stream = ShapesStream(seed, 1.0 if video else 0.0)
    return iter(torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers,
                                            persistent_workers=workers > 0))  # fmt: skip


def train_vae(pipe, args, device, log) -> None:
    vae = pipe.vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    images = batches(args.seed, False, args.vae_batch, args.workers)
    videos = batches(args.seed + 1, True, max(1, args.vae_batch // 16), args.workers)
    start, step = time.time(), 0
    while time.time() - start < args.vae_minutes * 60:
        x = next(videos if step % 5 == 4 else images)[0].to(device)
        bg = BACKGROUND_PIXEL.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"vae step {step} loss {loss.item():.4f} psnr {psnr(recon, x):.1f}")
    vae.eval()
    if args.vae_check:
        vae_check(pipe, device, log, args.vae_check)


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


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item() / 4.0  # [-1, 1] → [0, 1] scale
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def set_latent_statistics(pipe, args, device) -> None:
    """Per-channel mean/std of the VAE's latents (the pipeline normalizes with them), from fresh samples."""
    data = batches(args.seed + 7, False, 64, 0)
    z = torch.cat([pipe.vae.encode(next(data)[0].to(device)).latent_dist.mode() for _ in range(4)])
    mean = z.mean(dim=(0, 2, 3, 4)).tolist()
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
    pipe.vae.register_to_config(latents_mean=mean, latents_std=std)


def normalize(pipe, z: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(pipe.vae.config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def train_dit(pipe, args, device, log, state: dict) -> None:
    pipe.vae.to(device).eval().requires_grad_(False)
    text_encoder, transformer = pipe.text_encoder.to(device).train(), pipe.transformer.to(device).train()
    params = list(text_encoder.parameters()) + list(transformer.parameters())
    # compiled: 1.45x the eager step at batch 256 on an H200 (bench/results/t2v-train-throughput-h200.json); one graph
    # per batch shape (images, videos)
    model = torch.compile(transformer) if args.compile and device.type == "cuda" else transformer
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    if state.get("opt") is not None:
        opt.load_state_dict(state["opt"])
    images = batches(args.seed + 100 + state["step"], False, args.batch, args.workers)
    videos = batches(args.seed + 200 + state["step"], True, max(1, args.batch // 8), args.workers)
    gen = torch.Generator(device=device).manual_seed(args.seed + state["step"])
    start, last_save, first_step = time.time(), time.time(), state["step"]
    while (elapsed := time.time() - start) < args.dit_minutes * 60:
        # warm-up over the first 200 steps of a run, then constant, then linear cool-down over the last 25% of it
        ramp = min(1.0, (state["step"] - first_step + 1) / 200, 4.0 * (1.0 - elapsed / (args.dit_minutes * 60)))
        for group in opt.param_groups:
            group["lr"] = args.lr * max(ramp, 0.02)
        pixels, captions = next(videos if state["step"] % 4 == 3 else images)
        captions = [c if random.random() > 0.1 else "" for c in captions]
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            # bf16 encoding: 36 ms per 256 images on an H200 (bench/results/t2v-train-throughput-h200.json)
            x0 = normalize(pipe, pipe.vae.encode(pixels.to(device, non_blocking=True)).latent_dist.mode().float())
        b = x0.shape[0]
        sigma = torch.sigmoid(torch.randn(b, device=device, generator=gen)).view(b, 1, 1, 1, 1)  # logit-normal
        noise = torch.randn(x0.shape, device=device, generator=gen)
        xt = (1 - sigma) * x0 + sigma * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            text = pipe._get_t5_prompt_embeds(captions, device=device, dtype=torch.float32)
            v = model(xt, sigma.flatten() * 1000, text, return_dict=False)[0]
        loss = F.mse_loss(v.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step"] += 1
        if state["step"] % 100 == 0:
            log(f"dit step {state['step']} loss {loss.item():.4f}")
        if time.time() - last_save > 60:
            save_checkpoint(pipe, opt, state, args.out)
            last_save = time.time()
    text_encoder.eval(), transformer.eval()
    save_checkpoint(pipe, opt, state, args.out)


def save_checkpoint(pipe, opt, state: dict, out: Path) -> None:
    state = dict(state, opt=opt.state_dict() if opt is not None else None)
    torch.save({"state": state, "models": {k: m.state_dict() for k, m in pipe.components.items()
                                           if isinstance(m, torch.nn.Module)},
                "vae_config": dict(pipe.vae.config)}, out / "checkpoint.pt")  # fmt: skip


@torch.no_grad()
def quick_eval(pipe, device, n: int, log, out: Path | None = None, videos: int = 0) -> dict:
    """Generate `n` held-out image captions (seed 10_000) and `videos` motion captions, and score them."""
    from unbottle.shapes.evaluate import evaluate

    results = {}
    for kind, count in (("image", n), ("video", videos)):
        if count <= 0:
            continue
        rng = random.Random(10_000 if kind == "image" else 10_001)
        scenes = [sample_scene(rng, video=kind == "video") for _ in range(count)]
        captions = [caption(s, rng) for s in scenes]
        frames, chunk = (1, 50) if kind == "image" else (FRAMES, 16)
        samples = []
        for i in range(0, count, chunk):
            gen = torch.Generator().manual_seed(i)
            out_ = pipe(captions[i : i + chunk], height=SIZE, width=SIZE, num_frames=frames, num_inference_steps=20,
                        guidance_scale=4.0, output_type="np", generator=gen).frames  # fmt: skip
            for video, text in zip(out_, captions[i : i + chunk], strict=True):
                video = (np.asarray(video) * 255).round().astype(np.uint8)  # (F, H, W, 3)
                samples.append((video[0] if kind == "image" else video, text))
        report = evaluate(samples)
        results[kind] = report.to_dict()
        log(f"eval on {count} held-out {kind} captions:\n{report.table()}")
        if out is not None and len(samples) >= 8:  # a contact sheet of the first 32 (videos: first frames)
            from PIL import Image

            sheet = np.concatenate([np.concatenate([s[0] if kind == "image" else s[0][0] for s in samples[r:r + 8]], 1)
                                    for r in range(0, min(32, len(samples)) - 7, 8)], 0)  # fmt: skip
            Image.fromarray(sheet).save(out / f"samples_{kind}.png")
            (out / f"samples_{kind}.txt").write_text("\n".join(c for _, c in samples[:32]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (with optimizer)")
    parser.add_argument("--init-from", type=Path, help="continue from a saved pipeline folder (fresh optimizer)")
    parser.add_argument("--vae-minutes", type=float, default=5.0)
    parser.add_argument("--dit-minutes", type=float, default=14.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--vae-batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--vae-lr", type=float, default=5e-4)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the DiT on CUDA (default on)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=200, help="held-out captions to score at the end (0: none)")
    parser.add_argument("--vae-check", type=int, default=128, help="held-out images to score VAE reconstructions on")
    parser.add_argument("--eval-videos", type=int, default=64, help="held-out motion captions to score at the end")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    log = open_log(args.out / "train.log")

    pipe = build_pipeline()
    state = {"step": 0, "vae_done": False, "seed": args.seed}
    if args.resume and (args.out / "checkpoint.pt").exists():
        ckpt = torch.load(args.out / "checkpoint.pt", map_location="cpu", weights_only=True)
        for name, sd in ckpt["models"].items():
            getattr(pipe, name).load_state_dict(sd)
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
        state = {**json.loads((args.init_from / "training.json").read_text()), "opt": None}
        state.pop("eval", None)
        log(f"initialized from {args.init_from} at dit step {state['step']}")
    if not state["vae_done"] and args.vae_minutes > 0:
        train_vae(pipe, args, device, log)
        set_latent_statistics(pipe, args, device)
        state["vae_done"] = True
        save_checkpoint(pipe, None, state, args.out)
        log(f"vae done; latent mean {pipe.vae.config.latents_mean}, std {pipe.vae.config.latents_std}")
    if args.dit_minutes > 0:
        train_dit(pipe, args, device, log, state)
    pipe.to(dtype=torch.float16).save_pretrained(args.out / "pipeline")
    record = args.out / "pipeline" / "training.json"
    record.write_text(json.dumps({k: v for k, v in state.items() if k != "opt"}))
    log(f"saved {args.out / 'pipeline'}")
    if args.eval:
        pipe.to(device, torch.float32)
        pipe.set_progress_bar_config(disable=True)
        try:
            state["eval"] = quick_eval(pipe, device, args.eval, log, args.out, args.eval_videos)
        except Exception as e:  # noqa: BLE001 — the weights are saved; a failing evaluator must not lose them
            log(f"evaluation failed: {type(e).__name__}: {e}")
        record.write_text(json.dumps({k: v for k, v in state.items() if k != "opt"}))


if __name__ == "__main__":
    main()
