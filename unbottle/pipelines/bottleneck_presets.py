"""Stage lists for `BottleneckSampler.from_preset`, from Bottleneck Sampling (Tian et al., 2025) and our cost model.

A preset is named by the wall-clock speedup it is meant to measure against the stock pipeline's own step count (its
family's `stock_steps` in the family registry: 50; SD3 28).
Rows are (scale, steps, strength, shift), high → low → high resolution, as in the paper's Tables 4 and 5.

Cost model (H200, bf16, one transformer call; ../shared/notes/bottleneck-sampling.md): Flux-dev 1024² 170 ms, 512²
84 ms (512 text tokens dominate at low resolution); Wan2.1-1.3B 81 f 480×832 606 ms, 240×416 89 ms.
"""

from __future__ import annotations

from types import MappingProxyType

PRESETS = MappingProxyType({
    # FLUX.1-dev, paper Table 4 verbatim (1024 → 512 → 1024). 14 × 170 + 20 × 84 ms ≈ 0.48 of 50 full steps: this
    # measures ≈ 2.1× on an H200, not 3×, hence its name here.
    "flux-2x": ("Flux", (
        (1.0, 6, 1.0, 9.0),
        (0.5, 20, 0.8, 6.0),
        (1.0, 8, 0.6, 9.0),
    )),
    # FLUX.1-dev 3×: Table 4's strengths and shifts with ≈ 0.68 of its steps: 10 × 170 + 13 × 84 ms ≈ 2.8 s vs 8.5 s
    # for 50 steps (≈ 3.0×). The paper's "×3" row does not say which steps it ran.
    "flux-3x": ("Flux", (
        (1.0, 4, 1.0, 9.0),
        (0.5, 13, 0.8, 6.0),
        (1.0, 6, 0.6, 9.0),
    )),
    # HunyuanVideo, paper Table 5 verbatim: 720×1280 → 544×960 (scale 0.75, rounded to the 16 px grid) → 720×1280,
    # 129 frames throughout. The paper reports it as its 2.5× configuration; by token count (a 544×960 step ≈ 0.43 of
    # a full one, scaled from the Wan timings) it would measure nearer 1.7×: re-measure before relying on the name.
    "hunyuanvideo-2.5x": ("HunyuanVideo", (
        (1.0, 4, 1.0, 7.0),
        (0.75, 24, 0.8, 9.0),
        (1.0, 16, 0.7, 9.0),
    )),
    # Wan2.1 against its stock 50 steps. Steps from the Wan cost model (a half-resolution Wan step is 6.8× cheaper
    # than a full one: 20 × 606 + 24 × 89 ms ≈ 14.3 s vs 30.3 s, ≈ 2.1×); strengths chosen on the shapes model v3
    # (the first 64 of the 200 evaluation captions, so the 200-caption check below is not independent of the
    # choice; CPU; stock 0.594): the Flux strengths (low 0.8, final 0.6) 0.531, final 0.8 0.547,
    # low 0.6 / final 0.8 0.562, **low 0.7 / final 0.8 0.594** (the stock accuracy; all facts 0.833 vs 0.829), low
    # 0.9 0.547, Wan's base shift 3 throughout 0.531. The 64 px stage decides the layout and draws sizes and textures
    # worse: re-noising less (0.7) keeps more of the first stage's layout, and a stronger final stage (0.8) redraws
    # the details at full resolution. 200 held-out captions (bench/results/quality-shapes-v3-presets-cpu.md): stock
    # 0.645, wan-2x 0.640, wan-3x 0.640 (−0.5 points; all facts 0.853 → 0.870).
    # Out of sample (96 captions of seed 20,000, wan-3x steps): stock 0.635, Flux strengths 0.573, 0.7 / 0.8 0.625.
    # On the shapes model v4 (quality-shapes-v4-presets-cpu.md): stock 0.875, wan-2x 0.855, wan-3x 0.865 (−1 point).
    "wan-2x": ("Wan", (
        (1.0, 8, 1.0, 9.0),
        (0.5, 24, 0.7, 6.0),
        (1.0, 12, 0.8, 9.0),
    )),
    # Wan2.1 3×, 13 × 606 + 20 × 89 ms ≈ 9.7 s vs 30.3 s (≈ 3.1×); the strengths of wan-2x (chosen with these steps).
    "wan-3x": ("Wan", (
        (1.0, 5, 1.0, 9.0),
        (0.5, 20, 0.7, 6.0),
        (1.0, 8, 0.8, 9.0),
    )),
    # SD3 against its stock 28 steps. Steps from the SD3-medium cost model measured on an H100 (bf16, 1024², CFG as one
    # batch-2 call; bench/results/e2e-h100-80gb-hbm3-sd3.md): a 1024² call 52.9 ms, a 512² call 24.1 ms (0.46 of one:
    # the 333 text tokens weigh at low resolution), so 8 × 52.9 + 10 × 24.1 ≈ 0.66 s vs 28 × 52.9 ≈ 1.48 s (≈ 2.2×;
    # the Flux-table steps 4/14/6 measured 1.67×). Strengths chosen on the shapes model, whose scheduler is SD3's
    # (FlowMatchEuler, static shift 3), run at SD3's 28 steps: 64 tuning captions (seed 30,000; CPU), stock 0.812; at
    # 4/14/6 steps, low / final strength 0.8 / 0.6 (Flux's) 0.734, 0.7 / 0.6 0.688, 0.7 / 0.8 0.797, 0.8 / 0.8 0.797,
    # 0.7 / 0.9 0.828, 0.8 / 0.9 0.828; 5/12/6 at 0.7 / 0.8 0.797; 3/16/7 0.781; at 0.7 / 0.9: **3/10/5 0.828**, 4/8/5
    # 0.797, 3/12/4 0.750; 3/10/5 at 0.8 / 0.9 0.797. SD3's full-resolution stage needs a strong redraw (final 0.9):
    # its 28-step schedule leaves fewer steps to repair the upsampled estimate than Wan's 50. Held out (200 captions of
    # seed 10,000, 28 steps; bench/results/quality-shapes-v4-sd3-cpu.md): stock 0.855, this preset 0.875 (all facts
    # 0.953 → 0.950: counts 0.56 → 0.72, colour binding 0.97 → 0.85), the Flux-table 4/14/6 one 0.790.
    "sd3-2x": ("SD3", (
        (1.0, 3, 1.0, 9.0),
        (0.5, 10, 0.7, 6.0),
        (1.0, 5, 0.9, 9.0),
    )),
    # Wan2.2-T2V-A14B (two experts, the high-noise one while t ≥ 875) against WanPipeline's stock 50 steps (the model
    # card samples 40: scale the steps by 0.8), 81 frames 480×832. Timed per call on an H100 (bf16, random weights,
    # bench/results/e2e-h100-80gb-hbm3-wan22.md): a full-size call 3.40 s, a half-size one 0.58 s (0.17 of it; FLOPs
    # predicted 0.15), so 13 × 3.40 + 20 × 0.58 s ≈ 56 s vs 170 s (≈ 3.0×); the same run measured 3.12× for these
    # stages scaled to 12 steps (1 + 5 + 2). wan-3x's steps, strengths and shifts: the first stage is where the
    # high-noise expert runs (its t stays above 875).
    "wan22-3x": ("Wan", (
        (1.0, 5, 1.0, 9.0),
        (0.5, 20, 0.7, 6.0),
        (1.0, 8, 0.8, 9.0),
    )),
    # Qwen-Image 1328² against its stock 50 steps (true CFG: two calls per step). Timed per call on an H100 (bf16,
    # random weights, 128 text tokens; bench/results/e2e-h100-80gb-hbm3-qwen-image.md): 6,889 image tokens 317 ms,
    # 1,764 (672²) 145 ms: 0.46 of a full call, not the 0.22 FLOPs predict (text tokens and fixed costs weigh at the
    # small size). FLOPs-chosen stages (8, 20, 12) measured only 1.72× (scaled to 20 steps), so the stages are FLUX.1's
    # paper table: 14 × 317 + 20 × 145 ms ≈ 7.3 s vs 15.9 s per branch (≈ 2.2×, predicted from the timed calls).
    # FLUX.1's strengths and shifts (the same packed 2×2 latents and dynamic shifting).
    "qwenimage-2x": ("QwenImage", (
        (1.0, 6, 1.0, 9.0),
        (0.5, 20, 0.8, 6.0),
        (1.0, 8, 0.6, 9.0),
    )),
    # FLUX.2 [dev] 1024² against its stock 50 steps. Not timed yet: predicted from FLOPs (8 double + 48 single blocks,
    # 6144 wide; 4,096 image + 512 text tokens at 1024², 1,024 + 512 at 512²): a half-size call ≈ 0.31 of a full one,
    # so 18 full + 20 × 0.31 ≈ 24.2 vs 50 (≈ 2.1×); FLUX.1's strengths and shifts. Qwen-Image's timed half-size call
    # cost twice its FLOPs share: expect less than 2× until this one is timed.
    "flux2-2x": ("Flux2", (
        (1.0, 8, 1.0, 9.0),
        (0.5, 20, 0.8, 6.0),
        (1.0, 10, 0.6, 9.0),
    )),
    # HunyuanVideo-1.5 720p 121 frames against its stock 50 steps. Not timed yet: predicted from FLOPs (2048 wide, 54
    # blocks; 111,600 video tokens at 720×1280, 27,900 at 360×640: attention dominates, a half-size call ≈ 0.08 of a
    # full one): 13 full + 20 × 0.08 ≈ 14.6 vs 50 (≈ 3.4×); HunyuanVideo's strengths and shifts (Table 5).
    # Timed at 480p, 121 frames (H100, bf16, random weights, bench/results/e2e-h100-80gb-hbm3-hunyuan-video15.md): a
    # full-size call (49,290 video tokens + conditioning) 9.15 s, a half-size one 0.80 s (0.087 of it), so at 480p
    # 13 × 9.15 + 20 × 0.80 ≈ 135 s vs 50 × 9.15 ≈ 458 s (≈ 3.4×, predicted from the timed calls; the preset itself
    # was timed only scaled to 3 steps, 1 + 1 + 1: 1.43×).
    "hunyuanvideo15-3x": ("HunyuanVideo-1.5", (
        (1.0, 5, 1.0, 7.0),
        (0.5, 20, 0.8, 9.0),
        (1.0, 8, 0.7, 9.0),
    )),
})  # fmt: skip
