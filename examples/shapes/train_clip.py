"""Train shapes-clip: a small open_clip model on (rendered image, caption) pairs, the offline reward model.

    python examples/shapes/train_clip.py --out runs/clip --minutes 4.5                  # one H200
    python examples/shapes/train_clip.py --out runs/clip --resume --minutes 2            # continue
    python examples/shapes/train_clip.py --out /tmp/clip --minutes 0.2 --batch 8 --workers 0     # CPU smoke test

The model is `open_clip.create_model("shapes-clip")` (`unbottle/shapes/clip.py`: ViT 6 × 192 on 8 px patches of
128 px images, text 4 × 128 over the word-level shapes tokenizer, 3.6 M parameters). Pairs are generated on the fly
from a seeded stream and go through the same differentiable preprocessing a reward will use. The loss is open_clip's
`ClipLoss` (learnable logit scale, clamped at 100) with two changes: captions repeated in a batch ("a red circle"
twice) are not counted as negatives of each other, and each two-object image also scores its colour-swapped caption
("a blue circle and a red star" for "a red circle and a blue star") as an extra negative, which teaches binding.
Every ~30 s it logs the loss, held-out image→text top-1 over 256 captions (seed 10_000) and binding accuracy (true
caption above its colour-swap); every minute it checkpoints (model, optimizer, step: `--resume`). At the end it
writes `OUT/shapes_clip.safetensors` (fp16) and `OUT/clip_training.json`, scored on the saved fp16 weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from unbottle.shapes import caption, render_image, sample_scene  # noqa: E402
from unbottle.shapes.clip import (  # noqa: E402
    IMAGE_SIZE,
    ShapesTokenizer,
    build_shapes_clip,
    load_shapes_clip,
    preprocess,
    save_shapes_clip,
)
from unbottle.shapes.training_log import open_log  # noqa: E402

HELD_OUT_SEED = 10_000
MAX_LOGIT_SCALE = math.log(100.0)


def swapped_caption(scene, what: str = "color") -> str | None:
    """The caption of the scene with the two objects' colours (or shapes) exchanged; None if that changes nothing."""
    if len(scene.objects) != 2 or scene.kind == "count":
        return None
    a, b = scene.objects
    if getattr(a, what) == getattr(b, what):
        return None
    objects = (dataclasses.replace(a, **{what: getattr(b, what)}), dataclasses.replace(b, **{what: getattr(a, what)}))
    return caption(dataclasses.replace(scene, objects=objects), random.Random(0))


def hard_negative(scene) -> str:
    """A caption that is wrong only in its binding: colours swapped, else shapes swapped; "" for one-object scenes."""
    return swapped_caption(scene, "color") or swapped_caption(scene, "shape") or ""


class PairStream(torch.utils.data.IterableDataset):
    """Endless (image (3, H, W) uint8, caption, hard-negative caption or "") from the seeded generator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            scene = sample_scene(rng)
            image = torch.from_numpy(render_image(scene, IMAGE_SIZE)).permute(2, 0, 1)
            yield image, caption(scene, rng), hard_negative(scene)


class Collate:
    """Stack images and tokenize captions inside the worker (picklable, unlike a closure)."""

    def __init__(self) -> None:
        self.tokenize = ShapesTokenizer()

    def __call__(self, items):
        images, captions, negatives = zip(*items, strict=True)
        return {
            "images": torch.stack(images),
            "text": self.tokenize(captions),
            "negatives": self.tokenize([n or "" for n in negatives]),
            "has_negative": torch.tensor([bool(n) for n in negatives]),
        }


def batches(seed: int, batch: int, workers: int):
    stream = PairStream(seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=Collate(),
                                         pin_memory=torch.cuda.is_available(),
                                         persistent_workers=workers > 0)  # fmt: skip
    return iter(loader)


class BindingClipLoss(ClipLoss):
    """open_clip's ClipLoss, not counting identical captions as negatives, plus one hard-negative column per image."""

    def forward(self, image_features, text_features, logit_scale, text_ids=None, negative_features=None,
                has_negative=None):  # fmt: skip
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        if text_ids is not None:  # the same caption twice is a positive for both images, not a negative
            same = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1)
            same.fill_diagonal_(False)
            logits_per_image = logits_per_image.masked_fill(same, float("-inf"))
            logits_per_text = logits_per_text.masked_fill(same, float("-inf"))
        if negative_features is not None:
            negative = logit_scale * (image_features * negative_features).sum(-1, keepdim=True)
            negative = negative.masked_fill(~has_negative[:, None], float("-inf"))
            logits_per_image = torch.cat([logits_per_image, negative], dim=1)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def held_out(n: int) -> dict:
    """`n` held-out pairs (seed 10_000), with colour-swapped captions for two-object scenes whose colours differ."""
    rng = random.Random(HELD_OUT_SEED)
    scenes = [sample_scene(rng) for _ in range(n)]
    captions = [caption(s, rng) for s in scenes]
    images = torch.stack([torch.from_numpy(render_image(s, IMAGE_SIZE)).permute(2, 0, 1) for s in scenes])
    swaps = [swapped_caption(s, "color") for s in scenes]
    return {"images": images, "captions": captions, "swaps": swaps}


@torch.no_grad()
def evaluate(model, data: dict, device, chunk: int = 128) -> dict:
    """Image→text top-1 among the held-out captions (a hit: the best caption is the image's own text) and binding
    accuracy (the true caption scores above its colour-swapped version)."""
    tokenize = ShapesTokenizer()
    was_training = model.training
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        image_f = torch.cat([model.encode_image(preprocess(data["images"][i : i + chunk].to(device).float() / 255))
                             for i in range(0, len(data["images"]), chunk)]).float()  # fmt: skip
        texts = sorted(set(data["captions"]))
        text_f = model.encode_text(tokenize(texts).to(device)).float()
        pairs = [(i, c, s) for i, (c, s) in enumerate(zip(data["captions"], data["swaps"], strict=True)) if s]
        swap_f = model.encode_text(tokenize([s for _, _, s in pairs]).to(device)).float() if pairs else None
    model.train(was_training)
    image_f, text_f = F.normalize(image_f, dim=-1), F.normalize(text_f, dim=-1)
    best = (image_f @ text_f.T).argmax(dim=1).tolist()
    top1 = sum(texts[b] == c for b, c in zip(best, data["captions"], strict=True)) / len(best)
    binding = None
    if pairs:
        idx = torch.tensor([i for i, _, _ in pairs], device=device)
        true_f = text_f[torch.tensor([texts.index(c) for _, c, _ in pairs], device=device)]
        swap_f = F.normalize(swap_f, dim=-1)
        binding = ((image_f[idx] * true_f).sum(-1) > (image_f[idx] * swap_f).sum(-1)).float().mean().item()
    return {"heldout_top1": top1, "binding_accuracy": binding, "heldout_n": len(best), "binding_n": len(pairs)}


def param_groups(model, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, embeddings' 1-d params and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def save_checkpoint(model, opt, state: dict, out: Path) -> None:
    tmp = out / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
    tmp.replace(out / "checkpoint.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=4.5, help="training time of this run (wall clock)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=300, help="linear warm-up steps (from step 0 of the training)")
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (with optimizer)")
    parser.add_argument("--hard-negatives", type=float, default=1.0,
                        help="fraction of two-object images that also score their swapped caption (0: plain CLIP)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in total (0: time only)")
    parser.add_argument("--eval-size", type=int, default=256, help="held-out pairs (seed 10_000) for the metrics")
    parser.add_argument("--log-every", type=float, default=30.0, help="seconds between log lines with evaluation")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    log = open_log(args.out / "train.log")

    model = build_shapes_clip().to(device).train()
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    state = {"step": 0, "seed": args.seed}
    if args.resume and (args.out / "checkpoint.pt").exists():
        ckpt = torch.load(args.out / "checkpoint.pt", map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state = ckpt["state"]
        log(f"resumed at step {state['step']}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"shapes-clip: {n_params / 1e6:.2f} M parameters ({n_params * 2 / 2**20:.2f} MiB fp16) on {device}, "
        f"batch {args.batch}, lr {args.lr}, {args.minutes} min")  # fmt: skip

    loss_fn = BindingClipLoss()
    eval_data = held_out(args.eval_size)
    data = batches(args.seed + 100 + state["step"], args.batch, args.workers)
    neg_gen = torch.Generator().manual_seed(args.seed + state["step"])
    start = last_log = last_save = time.time()
    losses, seen, run_steps = [], 0, 0
    while time.time() - start < args.minutes * 60 and not (args.max_steps and state["step"] >= args.max_steps):
        batch = next(data)
        # warm-up over the first steps of the training, then cosine to 10% over this run's time budget
        progress = min(1.0, (time.time() - start) / max(args.minutes * 60, 1e-6))
        warmup = min(1.0, (state["step"] + 1) / max(args.warmup, 1))
        lr = args.lr * warmup * (0.55 + 0.45 * math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        images = preprocess(batch["images"].to(device, non_blocking=True).float() / 255)
        text = batch["text"].to(device, non_blocking=True)
        has_negative = batch["has_negative"] & (torch.rand(len(text), generator=neg_gen) < args.hard_negatives)
        n_neg = int(has_negative.sum())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            image_f = model.encode_image(images, normalize=True)
            tokens = torch.cat([text, batch["negatives"].to(device)[has_negative.to(device)]]) if n_neg else text
            all_text_f = model.encode_text(tokens, normalize=True)
        image_f, all_text_f = image_f.float(), all_text_f.float()
        text_f = all_text_f[: len(text)]
        negative_f = None
        if n_neg:  # scatter the hard negatives back to their images' rows (rows without one are masked)
            negative_f = torch.zeros_like(text_f)
            negative_f[has_negative.to(device)] = all_text_f[len(text) :]
        loss = loss_fn(image_f, text_f, model.logit_scale.exp(), text_ids=text, negative_features=negative_f,
                       has_negative=has_negative.to(device))  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        state["step"] += 1
        run_steps += 1
        seen += len(text)
        losses.append(loss.detach())
        now = time.time()
        if now - last_log > args.log_every:
            mean_loss = torch.stack(losses).mean().item()
            metrics = evaluate(model, eval_data, device)
            log(f"step {state['step']} loss {mean_loss:.4f} scale {model.logit_scale.exp().item():.1f} lr {lr:.2e} "
                f"{seen / (now - last_log):.0f} img/s | held-out top-1 {metrics['heldout_top1']:.3f} binding "
                f"{metrics['binding_accuracy'] or 0:.3f} (n={metrics['binding_n']})")  # fmt: skip
            state["loss"] = mean_loss
            losses, seen, last_log = [], 0, time.time()
        if now - last_save > 60:
            save_checkpoint(model, opt, state, args.out)
            last_save = time.time()
    train_minutes = (time.time() - start) / 60
    if losses:
        state["loss"] = torch.stack(losses).mean().item()
    save_checkpoint(model, opt, state, args.out)
    path = save_shapes_clip(model, args.out / "shapes_clip.safetensors")
    shipped, _, _ = load_shapes_clip(path, device=device)  # score what ships: the fp16 weights, read back
    metrics = evaluate(shipped, eval_data, device)
    record = {"step": state["step"], "loss": state.get("loss"), **metrics, "run_steps": run_steps,
              "train_minutes": round(train_minutes, 2), "batch": args.batch, "lr": args.lr,
              "hard_negatives": args.hard_negatives, "seed": args.seed, "parameters": n_params,
              "fp16_bytes": path.stat().st_size, "device": str(device)}  # fmt: skip
    (args.out / "clip_training.json").write_text(json.dumps(record, indent=2))
    log(f"saved {path} ({path.stat().st_size / 2**20:.2f} MiB): {json.dumps(record)}")


if __name__ == "__main__":
    main()
