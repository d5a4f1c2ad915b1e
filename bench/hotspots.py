"""Where the time goes in three GPU workloads: wall vs GPU time per phase, top CUDA kernels.

    python bench/hotspots.py -o /tmp/out                        # on a CUDA GPU: noise, flux and dlm sections
    python bench/hotspots.py --sections noise -o /tmp/out

A diagnostic, not a benchmark: it prints (and writes to hotspots.txt) what a profile of each workload shows, so that
a speed-up is chosen from measurements. For each phase, "issued" is the wall time until Python returns (before the
synchronize) and "done" the wall time until the GPU finishes: equal numbers mean the CPU is the bottleneck.

- noise: one CARINOX gradient step of the SD-Turbo-shaped pipeline with HPS- and CLIP-shaped ViT-H-14 rewards
  (`unbottle.bench.noise`): differentiable generation, rewards, the two pullbacks; then the same step with
  `cudnn.benchmark`, with channels-last UNet/VAE, and the generator run once at batch 2 (one copy per reward).
- flux: stock Flux-dev 1024² and flux-3x (`unbottle.bench.e2e`): wall time and the time inside transformer calls
  per input size (`e2e.CallTimes`, CUDA events); a profile of one 512² call.
- dlm: the LLaDA-8B-shaped model at `--context` (`unbottle.bench.dlm`): dense step, SparseD pattern step (fused
  tile importance) and cached sparse step on our kernel at density 0.1, with a profile of the cached step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = io.StringIO()
DEVICE = "cuda"  # the smoke test runs the sections on "cpu" with tiny models


def say(text: str = "") -> None:
    print(text, flush=True)
    OUT.write(text + "\n")


def phase(name: str, fn: Callable[[], object], repeats: int = 1) -> object:
    """Run `fn` `repeats` times; print issued / done wall ms of the median run."""
    issued, done, out = [], [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        issued.append((t1 - t0) * 1e3)
        done.append((t2 - t0) * 1e3)
    i = sorted(range(repeats), key=lambda j: done[j])[repeats // 2]
    say(f"  {name:<44} issued {issued[i]:9.1f} ms   done {done[i]:9.1f} ms   (runs: "
        f"{', '.join(f'{d:.0f}' for d in done)})")  # fmt: skip
    return out


def profile_table(name: str, fn: Callable[[], object], rows: int = 22) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    say(f"  profile of {name}: GPU kernel time {gpu_us / 1e3:.1f} ms in all")
    say(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70))


# ---- noise ----------------------------------------------------------------------------------------------------------
def noise_section() -> None:
    from unbottle.bench import noise
    from unbottle.pipelines.noise_search import NoiseSearch, _frozen, _reward_pixels

    device = torch.device(DEVICE)
    pipe = noise.build_pipeline(noise.Models(), device, torch.float16)
    rewards = noise.build_rewards(noise.Models(), device, torch.float16)
    weighted = {name: (rewards[name], w) for name, w in noise.REWARD_WEIGHTS.items()}
    search = NoiseSearch(pipe, rewards=weighted, seeds=[0], iterations=3, progress=False)
    kwargs = search._check(noise.PROMPT, noise.run._call_kwargs(noise.NoiseOptions()))
    call, dtype = search._call_arguments(noise.PROMPT, kwargs)
    call.pop("output_type")
    latents, state = search.family.draw(pipe, kwargs, 0, dtype)
    param = torch.nn.Parameter(latents.detach().float().clone())
    names = list(search.rewards)

    def reward_grads(pixels: torch.Tensor) -> list[torch.Tensor]:
        image = pixels.detach().float().requires_grad_(True)
        grads = []
        for name in names:
            reward, weight = search.rewards[name]
            with torch.enable_grad():
                scores = reward(_reward_pixels(reward, image), [noise.PROMPT] * image.shape[0]).float()
                (g,) = torch.autograd.grad(weight * (1 - scores.mean()), image)
            grads.append(g.to(pixels.dtype))
        return grads

    with _frozen(pipe):
        step = lambda: search._gradient_step(0, noise.PROMPT, call, param, dtype, state)  # noqa: E731
        for _ in range(2):
            step()
        say("noise: SD-Turbo-shaped, 512², fp16, rewards hps×5 + clip×1 (ViT-H-14)")
        phase("whole gradient step", step, 5)
        fwd = lambda: search._generate(call, param.to(dtype), state)  # noqa: E731
        pixels = phase("differentiable generation (forward)", fwd, 3)
        grads = phase("rewards forward + backward (both)", lambda: reward_grads(pixels), 3)

        def pullbacks() -> None:
            p = fwd()
            for i, g in enumerate(grads):
                torch.autograd.grad(p, param, g, retain_graph=i < len(grads) - 1)

        phase("forward + 2 pullbacks", pullbacks, 3)
        with torch.no_grad():
            phase("forward, no grad", lambda: search._generate(call, param.to(dtype), state, grad=False), 3)
        profile_table("one gradient step", step)

        def copies() -> None:  # the generator once at batch 2, one copy per reward, one backward
            eps = param.detach().to(dtype).repeat(2, 1, 1, 1).requires_grad_(True)
            batch = {k: (v.repeat(2, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v)
                     for k, v in call.items()}  # fmt: skip
            from unbottle.pipelines.noise_search import _generator, _media, differentiable_call

            out = differentiable_call(pipe, **batch, latents=eps, generator=_generator(state), output_type="pt")
            pix = _media(out)  # (2, 3, H, W)
            gs = reward_grads(pix[:1])
            torch.autograd.grad(pix, eps, torch.cat(gs))

        phase("batch-2 copies: forward + rewards + 1 backward", copies, 3)
        torch.backends.cudnn.benchmark = True
        for _ in range(2):
            step()
        phase("whole gradient step, cudnn.benchmark", step, 5)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        for _ in range(2):
            step()
        phase("whole gradient step, + channels_last", step, 5)
        phase("batch-2 copies, cudnn.benchmark + channels_last", copies, 3)
        torch.backends.cudnn.benchmark = False
    say(f"  peak memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")


# ---- flux -----------------------------------------------------------------------------------------------------------
def flux_section() -> None:
    from unbottle.bench import e2e

    device = torch.device(DEVICE)
    case = e2e.CASES["flux"]
    pipe = e2e.build_pipeline("flux", device)
    inputs = e2e.prompt_inputs(pipe, case, device, 0)
    stages = e2e.variant_stages("flux-3x", case)
    e2e.run._call(pipe, case, None, 3, inputs, 0, device)
    e2e.run._call(pipe, case, stages, 2, inputs, 0, device)
    say("flux: FLUX.1-dev-shaped, 1024², bf16")
    for label, st in (("stock 50 steps", None), ("flux-3x", stages)):
        with e2e.CallTimes(pipe.transformer) as calls:  # the e2e benchmark's own per-call clock
            phase(label, lambda st=st: e2e.run._call(pipe, case, st, None, inputs, 0, device))
        inside, sizes = calls.summary(1)
        say(f"    inside transformer calls {inside * 1e3:.0f} ms: " + ", ".join(
            f"{v['calls']} × {v['ms_per_call']:.1f} ms ({k})" for k, v in sizes.items()))  # fmt: skip
    tx = pipe.transformer
    low = {
        "hidden_states": torch.randn(1, 1024, tx.config.in_channels, device=device, dtype=tx.dtype),
        "encoder_hidden_states": inputs["prompt_embeds"], "pooled_projections": inputs["pooled_prompt_embeds"],
        "timestep": torch.tensor([0.5], device=device),
        "txt_ids": torch.zeros(inputs["prompt_embeds"].shape[1], 3, device=device),
        "img_ids": torch.zeros(1024, 3, device=device),
        "return_dict": False,
    }  # fmt: skip
    if tx.config.guidance_embeds:
        low["guidance"] = torch.tensor([3.5], device=device)
    with torch.no_grad():
        phase("one 512² transformer call (direct)", lambda: tx(**low), 5)
        profile_table("one 512² transformer call", lambda: tx(**low), 15)


# ---- dlm ------------------------------------------------------------------------------------------------------------
def dlm_section(context: int) -> None:
    import unbottle
    from unbottle.attention_processors import engine as ta  # the engine runs SparseD's pattern step
    from unbottle.bench import dlm
    from unbottle.pipelines.diffusion_lm import DiffusionLMPipeline

    device = torch.device(DEVICE)
    options = dlm.DLMOptions(contexts=(context,), densities=(0.1,))
    model = dlm.build_model(dlm.llada_config(), device, torch.bfloat16, options.seed)
    pipe = DiffusionLMPipeline(model, None, mask_token_id=options.mask_token_id)
    pipe.set_progress_bar_config(disable=True)
    prompt = dlm.prompt_ids(context, options, model.config.vocab_size, device)
    driver = dlm.StepDriver(pipe, prompt, options.gen_length, options.gen_steps, options.full_steps)
    say(f"dlm: LLaDA-8B-shaped, context {context}, bf16")
    with dlm.sdpa_backend("CUDNN_ATTENTION", device):
        phase("dense step (cuDNN)", driver.dense, 2)
        spent: dict[str, float] = {}

        def timed(name: str, fn: Callable) -> Callable:
            def wrapper(*args, **kwargs):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                torch.cuda.synchronize()
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
                return out

            return wrapper

        handle = unbottle.enable_sparse_attention(model, dlm.sparse_config(options, 0.1, pattern="window"))
        with dlm.triton_sparse_attention():
            phase("warm-up: window-pattern sparse step", driver.pattern, 1)
        unbottle.disable_sparse_attention(model)
        handle = unbottle.enable_sparse_attention(model, dlm.sparse_config(options, 0.1))
        saved = (ta.dense_attention_with_lse, ta._exact_scores, ta.isolated_selection, ta.pattern_to_block_mask)
        ta.dense_attention_with_lse = timed("exact attention + LSE", saved[0])
        ta._exact_scores = timed("tile importance", saved[1])
        ta.isolated_selection = timed("isolated selection", saved[2])
        ta.pattern_to_block_mask = timed("BlockMask", saved[3])
        try:
            with dlm.triton_sparse_attention() as calls:
                phase("pattern step (Triton sparse, d=0.1)", driver.pattern, 1)
                say("    inside it: " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()))
                ta.dense_attention_with_lse, ta._exact_scores, ta.isolated_selection, ta.pattern_to_block_mask = saved
                phase("cached sparse step (Triton, d=0.1)", driver.sparse, 3)
                profile_table("one cached sparse step", driver.sparse, 18)
                say(f"    block-sparse calls {calls.fast}, masked reference {calls.masked_reference}, patterns "
                    f"{sum(handle.pattern_computations.values())}")  # fmt: skip
        finally:
            ta.dense_attention_with_lse, ta._exact_scores, ta.isolated_selection, ta.pattern_to_block_mask = saved
            unbottle.disable_sparse_attention(model)
        profile_table("one dense step (cuDNN)", driver.dense, 14)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="/tmp/hotspots")
    parser.add_argument("--sections", default="noise,flux,dlm")
    parser.add_argument("--context", type=int, default=65536)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    say(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    sections = {"noise": noise_section, "flux": flux_section, "dlm": lambda: dlm_section(args.context)}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            sections[name]()
        except Exception:  # noqa: BLE001 — a diagnostic: report and go on to the next section
            say(f"{name}: FAILED\n{traceback.format_exc()}")
        say(f"[{name}: {time.perf_counter() - t0:.0f} s]\n")
        with contextlib.suppress(Exception):
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        (out / "hotspots.txt").write_text(OUT.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
