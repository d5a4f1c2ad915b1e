"""SparseD sparse attention on a diffusion LM: dense vs sparse retrieval accuracy on the shipped shapes DLM (CPU).

    python examples/sparse_dlm.py                       # 16 prompts of 1,024 tokens, 30% of blocks, block 64
    python examples/sparse_dlm.py --n 64 --density 0.2 --block-size 128 --pattern dynamic
    python examples/sparse_dlm.py --model PATH --prompt "..." --gen-length 128 --steps 128 --block-length 32

The shapes DLM (a bidirectional GemmaForCausalLM trained on 1,024-token key–value retrieval) answers with 2–4 tokens,
decoded greedily one token per step (`unbottle.shapes.retrieval.decode`); the steps are announced with
`notify_dlm_generation_start` (prompt length per row, for SparseD's isolated selection), and each forward counts as a
step. SparseD (Wang et al., 2025): dense for the first `--full-steps`, then one per-head block pattern per generation
and layer from that step's exact attention, reused by every later step.

`--model` runs a LLaDA-style semi-autoregressive generation (blocks of `--block-length`, low-confidence remasking,
greedy) on a transformers model whose attention dispatches through AttentionInterface, dense then sparse with SparseD's
long-context setting (30% of 128-token blocks, 20% dense steps), and prints both texts and times. A mask token id comes
from `--mask-id`, the tokenizer, or the model config. Remote-code LLaDA-8B / Dream keep their own attention modules, so
`enable_sparse_attention` refuses them with the list of supported models.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

import unbottle
from unbottle.attention_processors import notify_dlm_generation_start, notify_dlm_step
from unbottle.shapes import retrieval


def retrieval_accuracy(
    model: torch.nn.Module, tokenizer, examples: list[tuple[str, str]], config: unbottle.SparseAttentionConfig | None,
    batch: int = 4,
) -> tuple[float, float, dict[str, int]]:  # fmt: skip
    """(exact-match accuracy, seconds, pattern computations per layer) of greedy decoding; dense if no `config`."""
    handle = unbottle.enable_sparse_attention(model, config) if config is not None else None
    right, start = 0, time.perf_counter()
    try:
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            ids, answer = retrieval.encode(tokenizer, chunk)  # (B, L), every document is exactly L tokens
            prompt_length = answer.float().argmax(1).long()  # (B,) first answer position per row
            steps = int(answer.sum(1).max())  # one token committed per step
            notify_dlm_generation_start(model, prompt_length, steps, total_steps=steps)
            out, _ = retrieval.decode(model, ids, answer, tokenizer.mask_token_id)
            for row, (_, text) in enumerate(chunk):
                right += retrieval.score(tokenizer.decode(out[row][answer[row]]), text)
        computations = handle.pattern_computations if handle is not None else {}
    finally:
        if handle is not None:
            unbottle.disable_sparse_attention(model)
    return right / len(examples), time.perf_counter() - start, computations


@torch.no_grad()
def llada_generate(
    model: torch.nn.Module, prompt_ids: torch.Tensor, mask_id: int, gen_length: int, steps: int, block_length: int
) -> torch.Tensor:
    """LLaDA's semi-autoregressive greedy sampler with low-confidence remasking; announces every step (SparseD)."""
    b, p = prompt_ids.shape
    x = torch.cat([prompt_ids, torch.full((b, gen_length), mask_id, device=prompt_ids.device)], 1)  # (B, P + G)
    n_blocks = max(1, gen_length // block_length)
    per_block = max(1, steps // n_blocks)
    total = per_block * n_blocks
    notify_dlm_generation_start(model, p, gen_length, total_steps=total)
    step = 0
    for blk in range(n_blocks):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length if blk < n_blocks - 1 else p + gen_length
        for s in range(per_block):
            masked = x[:, lo:hi] == mask_id  # (B, block)
            if not masked.any():
                break
            notify_dlm_step(model, step, total)
            logits = model(x).logits[:, lo:hi].float()
            logits[..., mask_id] = float("-inf")
            confidence, token = logits.softmax(-1).max(-1)  # (B, block)
            confidence = confidence.masked_fill(~masked, -1.0)
            left = per_block - s
            n_commit = (masked.sum(1) + left - 1) // left  # spread the block's masks evenly over its steps
            for row in range(b):
                k = int(n_commit[row])
                if k:
                    pick = confidence[row].topk(k).indices
                    x[row, lo + pick] = token[row, pick]
            step += 1
    return x[:, p:]


def _shapes(args: argparse.Namespace) -> int:
    pipe = unbottle.shapes.load_pipeline("dlm")
    model, tokenizer = pipe.model, pipe.tokenizer
    torch.set_num_threads(args.threads)
    examples = [retrieval.make_example(random.Random(args.seed + i), args.length) for i in range(args.n)]
    config = unbottle.SparseAttentionConfig(
        density=args.density, block_size=args.block_size, pattern=args.pattern, reshape=args.reshape,
        full_steps=args.full_steps, refresh_every=0,
    )  # fmt: skip
    print(f"shapes DLM, {args.n} retrieval prompts of {args.length} tokens (seed {args.seed}), CPU", file=sys.stderr)
    dense_acc, dense_s, _ = retrieval_accuracy(model, tokenizer, examples, None, args.batch)
    sparse_acc, sparse_s, computed = retrieval_accuracy(model, tokenizer, examples, config, args.batch)
    per_layer = sorted(set(computed.values()))
    print(f"| attention | accuracy | seconds |\n|---|---:|---:|\n| dense | {dense_acc:.3f} | {dense_s:.1f} |")
    print(f"| SparseD {args.pattern}, {args.density:.0%} of {args.block_size}-token blocks, full_steps "
          f"{args.full_steps}{', reshape' if args.reshape else ''} | {sparse_acc:.3f} | {sparse_s:.1f} |")  # fmt: skip
    generations = -(-args.n // args.batch)
    print(f"patterns computed per layer: {per_layer} (generations: {generations})", file=sys.stderr)
    return 0


def _model(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    load = dict(dtype=dtype, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, **load).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    mask_id = args.mask_id if args.mask_id is not None else tokenizer.mask_token_id
    mask_id = mask_id if mask_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        print("error: no mask token id; pass --mask-id (LLaDA-8B: 126336)", file=sys.stderr)
        return 2
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(device)
    config = unbottle.SparseAttentionConfig(
        density=args.density, block_size=args.block_size, pattern=args.pattern, reshape=args.reshape,
        full_steps=args.full_steps, refresh_every=0,
    )  # fmt: skip
    texts, seconds = [], []
    for sparse in (False, True):
        if sparse:
            try:
                unbottle.enable_sparse_attention(model, config)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        start = time.perf_counter()
        out = llada_generate(model, ids, mask_id, args.gen_length, args.steps, args.block_length)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
        if sparse:
            unbottle.disable_sparse_attention(model)
    for name, text, s in zip(("dense", "sparse"), texts, seconds, strict=True):
        print(f"--- {name} ({s:.1f} s)\n{text}")
    return 0


def _steps(text: str) -> float | int:
    return int(text) if text.isdigit() else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="retrieval prompts (shapes DLM)")
    parser.add_argument("--length", type=int, default=1024, help="prompt + answer tokens (shapes DLM)")
    parser.add_argument("--seed", type=int, default=10_000, help="first document seed (held out from training)")
    parser.add_argument("--batch", type=int, default=4, help="documents per generation")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--density", type=float, default=0.3, help="fraction of key blocks kept (SparseD's select)")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per block (64; 128 with --model)")
    parser.add_argument("--pattern", choices=["cached", "dynamic", "window"], default="cached")
    parser.add_argument("--full-steps", type=_steps, default=0.2, help="dense steps: a fraction (0.2) or a count (1)")
    parser.add_argument("--reshape", action="store_true", help="add Re-ttention's reshape (SparseD does not)")
    parser.add_argument("--model", help="a transformers diffusion LM (hub id or folder) instead of the shapes DLM")
    parser.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--mask-id", type=int, default=None, help="mask token id (LLaDA-8B: 126336)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    if args.block_size is None:
        args.block_size = 128 if args.model else 64
    return _model(args) if args.model else _shapes(args)


if __name__ == "__main__":
    sys.exit(main())
