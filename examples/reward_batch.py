"""Reward-scored batches: N candidates per prompt, ranked by rewards; does the top-ranked candidate get more right?

    python examples/reward_batch.py                          # the shipped shapes model + shapes-clip, offline, CPU
    python examples/reward_batch.py --prompts 8 --n 8        # more of both
    python examples/reward_batch.py --hub sd3                # stabilityai/stable-diffusion-3.5-medium, CLIPScore
    accelerate launch --num_processes 8 examples/reward_batch.py --hub flux --rewards clip,hps   # 8 GPUs

On the shapes model, every candidate is also checked by the shapes evaluator (plain image analysis of each caption's
facts: objects, colours, relations, ...), so the example prints what reward ranking buys: the fraction of facts and
of fully correct images for the top-ranked candidate against a random candidate (the mean over all). Run it again
with the same arguments and it resumes (nothing is made twice); `-o` picks the folder, `index.html` is the sheet.
The same batch from the shell: `unbottle batch prompts.txt --n 4 -o DIR`.
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
import torch
from PIL import Image

import unbottle
from unbottle.batch import BatchConfig, make_state, run_batch

# hub models: (id, call arguments); they need the weights in the local cache (or network) and a GPU
HUB = {
    "sd3": ("stabilityai/stable-diffusion-3.5-medium", dict(height=1024, width=1024, num_inference_steps=28)),
    "flux": ("black-forest-labs/FLUX.1-dev", dict(height=1024, width=1024, num_inference_steps=28)),
}
HUB_PROMPTS = [
    "a red car and a white sheep in a field, photo",
    "a blue cup to the left of a yellow book on a wooden table",
    "three green apples in a glass bowl",
    "a black cat sitting on a red chair",
]


def shapes_prompts(count: int, seed: int) -> list[str]:
    """Captions of freshly sampled shapes scenes (what the shapes model was trained on)."""
    from unbottle.shapes import caption, sample_scene

    rng = random.Random(seed)
    return [caption(sample_scene(rng), rng) for _ in range(count)]


def fact_report(result, out_dir) -> None:
    """Shapes evaluator facts of the top-ranked candidate vs the mean candidate, per prompt and overall."""
    from unbottle.shapes.evaluate import score

    best_facts, mean_facts, best_all, mean_all = [], [], [], []
    print(f"\n{'prompt':<58} {'top facts':>9} {'mean facts':>10}")
    for entry in result.ranking:
        rows = [r for r in result.records if r["prompt_index"] == entry["prompt_index"]]
        facts = {}
        for r in rows:
            checked = score(np.asarray(Image.open(out_dir / r["image"]).convert("RGB")), r["prompt"])
            facts[r["candidate"]] = (sum(checked.values()) / max(len(checked), 1), all(checked.values()))
        top = facts[entry["best"]["candidate"]]
        mean = (np.mean([f for f, _ in facts.values()]), np.mean([a for _, a in facts.values()]))
        best_facts.append(top[0])
        best_all.append(top[1])
        mean_facts.append(mean[0])
        mean_all.append(mean[1])
        print(f"{entry['prompt'][:58]:<58} {top[0]:>9.2f} {mean[0]:>10.2f}")
    print(f"\nfacts right:   top-ranked {np.mean(best_facts):.3f}, mean candidate {np.mean(mean_facts):.3f}")
    print(f"fully correct: top-ranked {np.mean(best_all):.3f}, mean candidate {np.mean(mean_all):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", choices=sorted(HUB), help="a hub model instead of the shipped shapes model")
    parser.add_argument("--prompts", type=int, default=4, help="how many prompts (shapes captions, or hub prompts)")
    parser.add_argument("--n", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--rewards", help="NAME[:W],... (default: shapes-clip; clip for --hub)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="reward-batch", help="output folder")
    args = parser.parse_args()

    state = make_state()  # one process, or one per GPU under `accelerate launch`
    if args.hub is None:
        from unbottle.shapes import call_defaults, load_pipeline

        pipe, call = load_pipeline("t2i", device=state.device), dict(call_defaults("t2i"))
        prompts, rewards, model = (
            shapes_prompts(args.prompts, args.seed),
            args.rewards or unbottle.rewards.DEFAULT,
            None,
        )
    else:
        from diffusers import DiffusionPipeline

        model, call = HUB[args.hub]
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.bfloat16).to(state.device)
        prompts, rewards = (HUB_PROMPTS * args.prompts)[: args.prompts], args.rewards or "clip"
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    pipe.set_progress_bar_config(disable=True)
    config = BatchConfig(n=args.n, rewards=unbottle.rewards.parse_rewards(rewards), seed=args.seed,
                         batch_size=args.batch_size)  # fmt: skip
    say = (lambda text: print(text, file=sys.stderr)) if state.is_main_process else (lambda text: None)
    say(f"{len(prompts)} prompts × {config.n} candidates on {state.device}, rewards {config.weights}")
    result = run_batch(pipe, prompts, args.output, config, call_kwargs=call, state=state, model=model, log=say)
    if not state.is_main_process:
        return
    print(f"wrote {result.out_dir / 'index.html'} ({len(result.records)} candidates, {result.resumed} from before)")
    for entry in result.ranking:
        best = entry["best"]
        print(f"  best of #{entry['prompt_index']}: candidate {best['candidate']} (seed {best['seed']}, combined "
              f"{best['combined']:.4f}) {entry['prompt']!r}")  # fmt: skip
    if args.hub is None:
        fact_report(result, result.out_dir)


if __name__ == "__main__":
    main()
