"""One Wan2.1-1.3B-shaped denoising step (81 frames 480×832 = 32,760 tokens, random weights), stock vs sparse.

    python bench/sparse_step.py -o bench/results            # on a CUDA GPU; ~3 minutes on an H200

Same run, same inputs: the stock transformer forward; sparse attention enabled at density 1.0 (pure overhead); a
refresh step (dense attention + Re-ttention statistics capture); sparse steps at density 0.05 on the engine's path
(our Triton kernel on Hopper from 16,384 keys, else FlexAttention) for the cached (SparseD), window and dynamic
patterns; plus the attention call alone. Before timing, the GPU paths are checked against the PyTorch reference on
fresh random inputs. Writes sparse-step-<gpu>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unbottle  # noqa: E402
from unbottle.attention_processors import block_sparse  # noqa: E402
from unbottle.attention_processors.block_mask import pattern_to_block_mask  # noqa: E402
from unbottle.attention_processors.reference import (  # noqa: E402
    block_sparse_attention_reference,
    dense_attention_reference,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_gpu_paths(results: dict) -> None:
    """Flex block-sparse and dense-with-LSE vs the reference, bf16, fresh inputs, N not a multiple of 128."""
    torch.manual_seed(1)
    for n, density in ((1000, 0.25), (4608, 0.05), (4608, 1.0)):
        q, k, v = (torch.randn(2, 4, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        nb = (n + 127) // 128
        keep = max(1, round(density * nb))
        idx = torch.rand(1, 4, nb, nb, device="cuda").argsort(-1)[..., :keep].int()
        counts = torch.full((1, 4, nb), keep, device="cuda", dtype=torch.int32)
        mask = pattern_to_block_mask(idx, counts, 128, n, n)
        out, lse = unbottle.block_sparse_attention(q, k, v, mask)
        ref, ref_lse = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
        dense, dense_lse = block_sparse.dense_attention_with_lse(q, k, v)
        dref, dref_lse = dense_attention_reference(q.float(), k.float(), v.float())
        row = {
            "n": n, "density": density, "sparse_out_rel_err": rel_err(out, ref),
            "sparse_lse_max_abs_err": float((lse - ref_lse).abs().max()), "dense_out_rel_err": rel_err(dense, dref),
            "dense_lse_max_abs_err": float((dense_lse - dref_lse).abs().max()),
        }  # fmt: skip
        results.setdefault("checks", []).append(row)
        print("check", row, flush=True)
        row["ok"] = row["sparse_out_rel_err"] < 1e-2 and row["dense_out_rel_err"] < 1e-2 and max(
            row["sparse_lse_max_abs_err"], row["dense_lse_max_abs_err"]) < 5e-2  # fmt: skip
    results["dense_lse_backends"] = {str(k): b for k, b in block_sparse._dense_lse_backends.items()}


def wan_1_3b() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.device("cuda"):  # random init on the GPU: seconds instead of a minute of CPU init
        model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )  # fmt: skip
    return model.to(torch.bfloat16).eval()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="bench/results")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    results: dict = {"gpu": gpu, "torch": torch.__version__, "command": " ".join(sys.argv)}
    check_gpu_paths(results)

    torch.manual_seed(0)
    model = wan_1_3b()
    latents = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)  # 81 frames, 480×832
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)

    @torch.inference_mode()
    def step(t: int) -> torch.Tensor:
        timestep = torch.tensor([float(t)], device="cuda")
        return model(latents, timestep, text, return_dict=False)[0]

    r = args.repeats
    stock_out = step(999)
    stock = timed(lambda: step(999), r)
    results["stock_ms"] = statistics.median(stock)
    print(f"stock step {results['stock_ms']:.1f} ms", flush=True)

    handle = unbottle.enable_sparse_attention(model, unbottle.SparseAttentionConfig(density=1.0))
    step(999)
    results["density_1_ms"] = statistics.median(timed(lambda: (handle.reset(), step(999)), r))
    results["density_1_max_abs_diff"] = float((step(999) - stock_out).abs().max())
    unbottle.disable_sparse_attention(model)
    print(f"density 1.0 {results['density_1_ms']:.1f} ms", flush=True)

    results["sparse"] = {}
    for pattern in ("cached", "window", "dynamic"):
        cfg = unbottle.SparseAttentionConfig(density=0.05, pattern=pattern, full_steps=0, refresh_every=0)
        handle = unbottle.enable_sparse_attention(model, cfg)
        first = timed(lambda: step(999), 1)[0]  # refresh + pattern + compilation
        sparse_first = timed(lambda: step(998), 1)[0]
        later = iter(range(997, 0, -1))  # falling timesteps: the same generation's next steps
        sparse = timed(lambda it=later: step(next(it)), r)
        refresh = timed(lambda h=handle: (h.reset(), step(999)), r)  # a new generation: step 0 is a refresh
        handle.reset()
        step(999)
        sparse_out = step(998)
        sparse_ms = statistics.median(sparse)
        row = {
            "first_call_ms": first, "first_sparse_ms": sparse_first, "sparse_ms": sparse_ms,
            "refresh_ms": statistics.median(refresh), "speedup_vs_stock": results["stock_ms"] / sparse_ms,
            "refresh_vs_stock": statistics.median(refresh) / results["stock_ms"],
            "sparse_vs_stock_rel_diff": rel_err(sparse_out.float(), stock_out.float()),
            "pattern_computations": sum(handle.pattern_computations.values()),
        }  # fmt: skip
        results["sparse"][pattern] = row
        print(pattern, row, flush=True)
        unbottle.disable_sparse_attention(model)

    # the attention call alone, same shape
    from triton.testing import do_bench

    q, k, v = (torch.randn(1, 12, 32760, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attn = {}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        with sdpa_kernel(backend):
            attn[name] = do_bench(lambda: F.scaled_dot_product_attention(q, k, v), return_mode="median")
    nb = (32760 + 127) // 128
    for density in (1.0, 0.25, 0.1, 0.05):
        keep = max(1, round(density * nb))
        idx = torch.rand(1, 12, nb, nb, device="cuda").argsort(-1)[..., :keep].int()
        counts = torch.full((1, 12, nb), keep, device="cuda", dtype=torch.int32)
        mask = pattern_to_block_mask(idx, counts, 128, 32760, 32760)
        attn[f"flex_{density}"] = do_bench(
            lambda m=mask: unbottle.block_sparse_attention(q, k, v, m), return_mode="median"
        )
    attn["dense_with_lse"] = do_bench(lambda: block_sparse.dense_attention_with_lse(q, k, v), return_mode="median")
    results["attention_ms"] = attn
    print("attention", attn, flush=True)

    tag = gpu.lower().replace("nvidia ", "").replace(" ", "-")
    (out_dir / f"sparse-step-{tag}.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# One Wan2.1-1.3B-shaped step, 32,760 tokens ({gpu}, torch {torch.__version__})", "",
        f"`{results['command']}`", "", f"stock step: {results['stock_ms']:.1f} ms; enabled at density 1.0: "
        f"{results['density_1_ms']:.1f} ms ({results['density_1_ms'] / results['stock_ms']:.3f}×)", "",
        "| pattern (density 0.05) | sparse step ms | speed-up vs stock | refresh step ms | refresh / stock | "
        "first call ms | rel. diff vs stock |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for pattern, row in results["sparse"].items():
        lines.append(
            f"| {pattern} | {row['sparse_ms']:.1f} | {row['speedup_vs_stock']:.2f}× | {row['refresh_ms']:.1f} | "
            f"{row['refresh_vs_stock']:.2f}× | {row['first_call_ms']:.0f} | {row['sparse_vs_stock_rel_diff']:.3f} |"
        )
    lines += ["", "| attention (1×12×32760×128) | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in attn.items()]
    (out_dir / f"sparse-step-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
