"""Where the shapes T2V training step spends its time: data, VAE encoding, DiT step (eager / compiled, by batch).

python bench/t2v_train_throughput.py -o bench/results      # on a CUDA GPU; writes t2v-train-throughput.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "shapes"))

from t2v_data import ShapesStream  # noqa: E402
from train_t2v import build_pipeline  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    pipe = build_pipeline()
    vae, te, dit = pipe.vae.to(device).eval(), pipe.text_encoder.to(device), pipe.transformer.to(device)
    stream = iter(ShapesStream(0, 0.0))
    start = time.perf_counter()
    data = [next(stream) for _ in range(512)]
    result = {"render_images_per_s_one_process": 512 / (time.perf_counter() - start)}
    captions = [c for _, c in data]
    x = torch.stack([p for p, _ in data]).to(device)  # (512, 3, 1, H, W)

    @torch.no_grad()
    def encode(b: int):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return vae.encode(x[:b]).latent_dist.mode()

    result["vae_encode_ms_per_256"] = 1e3 * timed(lambda: encode(256), 5)
    z = encode(512).float()
    params = list(te.parameters()) + list(dit.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    for compiled in (False, True):
        model = torch.compile(dit) if compiled else dit
        for b in args.batches:
            reps = (b + 511) // 512
            x0 = z.repeat(reps, 1, 1, 1, 1)[:b]
            texts = (captions * reps)[:b]

            def step(model=model, x0=x0, texts=texts, b=b):
                sigma = torch.rand(b, device=device).view(b, 1, 1, 1, 1)
                noise = torch.randn_like(x0)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    text = pipe._get_t5_prompt_embeds(texts, device=device, dtype=torch.float32)
                    v = model((1 - sigma) * x0 + sigma * noise, sigma.flatten() * 1000, text, return_dict=False)[0]
                loss = F.mse_loss(v.float(), noise - x0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            try:
                seconds = timed(step, 5)
                key = f"dit_step_{'compiled' if compiled else 'eager'}_b{b}"
                result[key + "_ms"] = 1e3 * seconds
                result[key + "_images_per_s"] = b / seconds
            except Exception as e:  # noqa: BLE001 — report, keep measuring the rest
                result[f"error_{compiled}_{b}"] = f"{type(e).__name__}: {e}"[:300]
            print(json.dumps(result), flush=True)
    result["torch"] = torch.__version__
    result["device"] = torch.cuda.get_device_name()
    result["command"] = "python bench/t2v_train_throughput.py -o bench/results"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "t2v-train-throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    random.seed(0)
    main()
