"""Masked-diffusion text generation (LLaDA) with `unbottle.DiffusionLMPipeline`, on the shapes DLM or a hub model.

    python examples/diffusion_lm.py                                  # shapes retrieval DLM, offline, CPU, seconds
    python examples/diffusion_lm.py --documents 16 --length 1024     # more and longer retrieval documents
    python examples/diffusion_lm.py --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code --mask-token-id 126336
    python examples/diffusion_lm.py --model Dream-org/Dream-v0-Instruct-7B --trust-remote-code

Default: key–value retrieval documents (`unbottle.shapes.retrieval`, known answers) decoded greedily by
DiffusionLMPipeline (full-sequence masked diffusion, low-confidence remasking) and by the stock diffusers
LLaDA2Pipeline the model ships in; prints both accuracies, whether the two agree, and a batched run.
With `--model`: one prompt through the hub model (needs its weights in the local cache, or network, and a GPU;
LLaDA-8B is ≈16 GB in bfloat16), LLaDA's settings by default (gen_length 128, steps 128, block_length 32).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import unbottle


def shapes_demo(documents: int, length: int) -> None:
    from unbottle.shapes import call_defaults, load_pipeline, retrieval

    stock = load_pipeline("dlm")
    stock.set_progress_bar_config(disable=True)
    pipe = unbottle.DiffusionLMPipeline(stock.model, stock.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(0)
    examples = [retrieval.make_example(rng, length) for _ in range(documents)]
    ours = theirs = agree = 0
    start = time.perf_counter()
    for prompt, answer in examples:
        n = len(answer.split())  # the answer's length: one token committed per step, one block
        text = pipe(prompt, gen_length=n, steps=n, block_length=n).texts[0]
        stock_call = {**call_defaults("dlm"), "gen_length": n, "block_length": n, "num_inference_steps": n}
        stock_text = stock(prompt, **stock_call).texts[0]
        ours += retrieval.score(text, answer)
        theirs += retrieval.score(stock_text, answer)
        agree += text == stock_text
    seconds = time.perf_counter() - start
    print(f"{documents} documents of {length} tokens: DiffusionLMPipeline {ours}/{documents} right, "
          f"LLaDA2Pipeline {theirs}/{documents}, same text {agree}/{documents} ({seconds:.1f}s for both)")  # fmt: skip

    # a batch of prompts of different lengths (left-padded) decodes as each prompt alone
    pairs = [examples[0], retrieval.make_example(rng, length // 2)]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    batch = pipe(prompts, gen_length=4, steps=4, block_length=4).texts  # 4 tokens: answers have 2–4
    alone = [pipe(p, gen_length=4, steps=4, block_length=4).texts[0] for p in prompts]
    print(f"batch of 2 (lengths {length}, {length // 2}): {batch} for answers {answers}; "
          f"same as one at a time: {batch == alone}")  # fmt: skip


def hub_demo(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = unbottle.DiffusionLMPipeline.from_pretrained(
        args.model, trust_remote_code=args.trust_remote_code, mask_token_id=args.mask_token_id, dtype=dtype
    ).to(device)
    start = time.perf_counter()
    out = pipe(args.prompt, gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
               temperature=args.temperature, cfg_scale=args.cfg_scale,
               generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    print(out.texts[0])
    print(f"{args.gen_length} tokens in {time.perf_counter() - start:.1f}s ({args.steps} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local folder of a masked diffusion LM (default: the shapes DLM)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (LLaDA, Dream)")
    parser.add_argument("--mask-token-id", type=int, help="mask token id when the tokenizer has none (LLaDA: 126336)")
    parser.add_argument("--prompt", default="Lily can run 12 kilometers per hour for 4 hours. How far does she run?")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--cfg-scale", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--documents", type=int, default=4, help="shapes demo: retrieval documents")
    parser.add_argument("--length", type=int, default=512, help="shapes demo: document length in tokens (256–1024)")
    args = parser.parse_args()
    if args.model is None:
        shapes_demo(args.documents, args.length)
    else:
        hub_demo(args)


if __name__ == "__main__":
    main()
