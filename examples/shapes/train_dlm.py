"""Train the shapes masked-diffusion LM: a LLaDA-style bidirectional GemmaForCausalLM on key–value retrieval documents.

    python examples/shapes/train_dlm.py --out runs/dlm --minutes 5                  # one H200
    python examples/shapes/train_dlm.py --out runs/dlm --minutes 2 --resume         # continue
    python examples/shapes/train_dlm.py --out /tmp/dlm --minutes 0.2 --batch 2 --length 128 --workers 0   # CPU smoke
    python examples/shapes/train_dlm.py --out runs/dlm --minutes 4 --init-from unbottle/assets/shapes/dlm \
        --curriculum 0 --lr 3e-4                                                    # fine-tune the shipped model

Task (`unbottle.shapes.retrieval`): "k3 = v8 v91 ; <filler> k17 = v42 v7 v199 ; ... query k17 ->" → "v42 v7 v199",
exactly `--length` tokens. The answer is followed by end-of-text tokens up to the generation length (LLaDA pads its
fine-tuning answers with EOS the same way), so the model learns where an answer ends: a document's generation length
is `--gen-length` (the CLI's default) half of the time, otherwise drawn from U{2..`--max-gen-length`}, and never
shorter than the answer. Model: `GemmaForCausalLM` with `use_bidirectional_attention=True` and `is_causal=False`
(every position sees every other), RoPE, untied LM head, sdpa.

Objective (LLaDA SFT: the prompt is never masked, the loss is divided by the answer length). `--objective t`:
t ~ U(0, 1) per document (stratified over the batch), each answer token masked with probability t, loss Σ CE / t over
the masked tokens. `--objective count` (default): the same loss in expectation with t integrated out: k ~ U{1..n} of
the n answer tokens masked, weight n / k (`retrieval.mask_answer_count`). With 2–4 answer tokens the 1/t form is mostly
variance (rows with nothing masked, or one token at weight up to 1000 that gradient clipping then flattens): on CPU
(2 layers × 128, length 32, batch 64, 3,000 steps) the count form reached CE 0.9 (39% exact at 2,500 steps) while the
1/t form was still at CE 3.4 (about a uniform guess among the document's values).

Curriculum (adaptive, `--curriculum`): documents of 32, 64, 128, 256, 512 tokens first (up to 4× more of them per
step), moving on when greedy decoding gets ≥ 90% of 64 held-out documents of the current length right, and at the
latest once that fraction of the run's time has passed; then the training length. Short documents give more answers
per token and fewer distractors, so the retrieval circuit forms there first (on CPU, 2 layers × 128 at batch 64: 32
tokens took ~2,000 steps, 64 tokens more than 3,500) and then carries over to longer ones.

Data are generated on the fly, one seeded batch per step, by DataLoader workers. AdamW, warm-up then constant, linear
decay over the last 20% of `--minutes`; bf16 autocast on CUDA. Every ~60 s: checkpoint (resumable, with optimizer) and
a quick accuracy on 64 held-out documents (seed 10_000) of the training length, by greedy masked-diffusion decoding
with one token committed per step. At the end: `OUT/dlm/` (fp16 model and tokenizer, `save_pretrained`) and
`OUT/dlm_training.json` (steps, loss, accuracy at the trained length and at twice it).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from unbottle.shapes import retrieval  # noqa: E402
from unbottle.shapes.training_log import open_log  # noqa: E402

HELD_OUT_SEED = 10_000
STAGE_LENGTHS = (32, 64, 128, 256, 512)  # curriculum document lengths before the training length
STAGE_ACCURACY = 0.9  # held-out exact match that ends a curriculum stage


def build_model(
    tok, layers: int = 6, hidden: int = 256, heads: int = 4, head_dim: int = 64, max_positions: int = 8192
):
    """A fresh LLaDA-style bidirectional Gemma (untied head, RoPE, sdpa) for the retrieval vocabulary."""
    from transformers import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim, max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
        use_bidirectional_attention=True, is_causal=False, attn_implementation="sdpa", use_cache=False,
    )  # fmt: skip
    return GemmaForCausalLM(config)


def stages(length: int, curriculum: bool = True) -> list[int]:
    """Document lengths of the curriculum, ending with the training length."""
    return [n for n in STAGE_LENGTHS if n < length and curriculum] + [length]


def stage_batch(batch: int, length: int, stage_length: int) -> int:
    """Documents per step at `stage_length`: the training length's tokens per step, at most 4× the documents."""
    return min(batch * length // stage_length, 4 * batch)


def generation_length(rng: random.Random, gen_length: int, max_gen_length: int) -> int | None:
    """A document's generation length: `gen_length` half of the time, else U{2..max_gen_length} (None: no padding)."""
    if max_gen_length <= 0:
        return None
    return gen_length if rng.random() < 0.5 else rng.randint(retrieval.MIN_VALUE_TOKENS, max_gen_length)


def make_batch(seed: int, step: int, length: int, batch: int, tok, gen_length: int = 4,
               max_gen_length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The training batch of `step`: `(ids (B, L), answer_mask (B, L))`, a pure function of (seed, step, sizes)."""
    rng = random.Random(f"train-{seed}-{step}")  # a string seed never collides with the held-out int seed
    examples = []
    for _ in range(batch):
        padded = generation_length(rng, gen_length, max_gen_length)
        padded = None if padded is None else min(padded, length - retrieval.MIN_LENGTH + retrieval.MAX_VALUE_TOKENS)
        examples.append(retrieval.make_example(rng, length, padded))
    return retrieval.encode(tok, examples)


class RetrievalBatches(torch.utils.data.IterableDataset):
    """Whole batches for steps start, start+1, ...: worker w of W makes steps start+w, start+w+W, ... (the
    DataLoader takes workers round-robin, so batches arrive in step order). The document length is read from the
    shared `stage_length` as each batch is made, so a curriculum switch reaches the workers (after the few batches
    already queued)."""

    def __init__(self, seed: int, start: int, length: int, batch: int, stage_length, gen_length: int = 4,
                 max_gen_length: int = 16) -> None:  # fmt: skip
        self.seed, self.start, self.length, self.batch, self.stage_length = seed, start, length, batch, stage_length
        self.gen_length, self.max_gen_length = gen_length, max_gen_length

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        tok = retrieval.tokenizer()
        step = self.start + worker
        while True:
            length = self.stage_length.value
            yield make_batch(self.seed, step, length, stage_batch(self.batch, self.length, length), tok,
                             self.gen_length, self.max_gen_length)  # fmt: skip
            step += workers


def stratified_t(batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U(0, 1) per row, low-discrepancy over the batch: (u + i/B) mod 1."""
    u = torch.rand((), generator=generator, device=device)
    return (u + torch.arange(batch, device=device) / batch) % 1.0


def train_step(model, ids, answer_mask, mask_id, generator=None, objective: str = "count"):
    """Masked-diffusion loss of one batch (LLaDA SFT): returns (weighted loss, plain CE on the masked tokens)."""
    if objective == "t":
        t = stratified_t(ids.shape[0], ids.device, generator)
        noisy, masked, p_mask = retrieval.mask_answer(ids, answer_mask, mask_id, t=t, generator=generator)
    else:
        noisy, masked, p_mask = retrieval.mask_answer_count(ids, answer_mask, mask_id, generator=generator)
    keep = ids.shape[1] - int(answer_mask.float().argmax(1).min())  # answers are suffixes: logits for that span only
    logits = model(input_ids=noisy, logits_to_keep=keep).logits
    loss = retrieval.diffusion_loss(logits, ids, masked, p_mask, answer_mask)
    with torch.no_grad():
        sel = masked[:, -keep:]
        ce = torch.nn.functional.cross_entropy(logits[sel].float(), ids[:, -keep:][sel]) if sel.any() else loss * 0
    return loss, ce


@torch.no_grad()
def accuracy(model, tok, examples: list[tuple[str, str]], device, batch: int = 64) -> float:
    """Exact-match accuracy of greedy one-token-per-step masked-diffusion decoding on `examples` (the generated
    answer is cut at its first end-of-text, as the pipelines cut it)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        ids, answer_mask = retrieval.encode(tok, chunk)
        ids, answer_mask = ids.to(device), answer_mask.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out, _ = retrieval.decode(model, ids, answer_mask, tok.mask_token_id)
        for row, mask, (_, answer) in zip(out, answer_mask, chunk, strict=True):
            generated = row[mask].tolist()
            if tok.eos_token_id in generated:
                generated = generated[: generated.index(tok.eos_token_id)]
            correct += retrieval.score(tok.decode(generated, skip_special_tokens=True), answer)
    model.train(was_training)
    return correct / max(1, len(examples))


def held_out(length: int, n: int, answer_length: int | None = None) -> list[tuple[str, str]]:
    """`n` held-out documents (seed 10,000), answers padded to `answer_length` tokens when given."""
    rng = random.Random(HELD_OUT_SEED)
    return [retrieval.make_example(rng, length, answer_length) for _ in range(n)]


def learning_rate(args, elapsed: float, step: int) -> float:
    """Warm-up over 100 steps, constant, then linear decay to 10% over the last 20% of this run's time budget."""
    warm = min(1.0, (step + 1) / 100)
    frac = elapsed / max(args.minutes * 60, 1e-9)
    decay = 1.0 if frac < 0.8 else max(0.1, 1.0 - 0.9 * (frac - 0.8) / 0.2)
    return args.lr * warm * decay


def save_checkpoint(model, opt, state: dict, out: Path) -> None:
    tmp = out / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
    tmp.replace(out / "checkpoint.pt")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (with optimizer)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time of this run")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all (0: no limit)")
    parser.add_argument("--batch", type=int, default=128, help="documents per step at the training length")
    parser.add_argument("--length", type=int, default=1024, help="training document length in tokens")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-length", type=int, default=4,
                        help="generation length of half the documents: the CLI's default (answers padded with EOS)")
    parser.add_argument("--max-gen-length", type=int, default=16,
                        help="the other half: U{2..this} (0: answers not padded, no EOS learned)")
    parser.add_argument("--init-from", type=Path, help="start from a saved model folder's weights (fresh optimizer)")
    parser.add_argument("--objective", choices=("count", "t"), default="count", help="see the module docstring")
    parser.add_argument(
        "--curriculum",
        type=float,
        default=0.6,
        help="shorter documents first, for at most this fraction of --minutes (0: none)",
    )
    parser.add_argument("--stage-check", type=float, default=10.0, help="seconds between curriculum-stage checks")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds between checkpoints + quick evals")
    parser.add_argument(
        "--eval",
        type=int,
        default=None,
        help="held-out documents scored at the end, per length (default: 256 on CUDA, 16 on CPU)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.eval is None:
        args.eval = 256 if device.type == "cuda" else 16
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    log = open_log(args.out / "train.log")

    tok = retrieval.tokenizer()
    max_positions = max(8192, 2 * args.length)
    model = build_model(tok, args.layers, args.hidden, args.heads, max_positions=max_positions)
    if args.init_from is not None and not (args.resume and (args.out / "checkpoint.pt").exists()):
        from safetensors.torch import load_file

        weights = load_file(str(args.init_from / "model.safetensors"))
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise ValueError(f"--init-from {args.init_from}: weights do not fit ({missing[:3]}, {unexpected[:3]})")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))  # fmt: skip
    state = {"step": 0, "seconds": 0.0, "seed": args.seed, "length": args.length, "stage": 0, "history": []}
    if args.resume and (args.out / "checkpoint.pt").exists():
        ckpt = torch.load(args.out / "checkpoint.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state = ckpt["state"]
        log(f"resumed at step {state['step']} ({state['seconds'] / 60:.1f} min trained)")
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M params ({2 * n_params / 2**20:.1f} MiB in fp16), device {device}, "
        f"length {args.length}, batch {args.batch}, lr {args.lr}")  # fmt: skip

    lengths = stages(args.length, args.curriculum > 0)
    stage = min(state.get("stage", 0), len(lengths) - 1)
    stage_length = multiprocessing.get_context().RawValue("i", lengths[stage])  # read by the data workers
    data = RetrievalBatches(args.seed, state["step"], args.length, args.batch, stage_length, args.gen_length,
                            args.max_gen_length)  # fmt: skip
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if args.workers else None,
        persistent_workers=args.workers > 0,
    )
    loader = iter(loader)
    padded = args.gen_length if args.max_gen_length > 0 else None
    quick = held_out(args.length, 64, padded)
    gen = torch.Generator(device=device).manual_seed(args.seed * 7919 + state["step"])
    start = last_eval = last_log = last_check = time.time()
    losses, ces, tokens = [], [], 0
    while time.time() - start < args.minutes * 60 and not (args.max_steps and state["step"] >= args.max_steps):
        ids, answer_mask = next(loader)
        ids, answer_mask = ids.to(device, non_blocking=True), answer_mask.to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args, time.time() - start, state["step"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, ce = train_step(model, ids, answer_mask, tok.mask_token_id, gen, args.objective)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        tokens += ids.numel()
        losses.append(loss.detach())
        ces.append(ce.detach())
        now = time.time()
        if now - last_log > 15 or state["step"] == 1:
            mean_loss, mean_ce = torch.stack(losses).mean().item(), torch.stack(ces).mean().item()
            log(f"step {state['step']} len {ids.shape[1]}x{ids.shape[0]} loss {mean_loss:.4f} ce {mean_ce:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {tokens / (now - last_log):,.0f} tok/s")  # fmt: skip
            state["loss"] = mean_loss
            losses, ces, tokens, last_log = [], [], 0, now
        if stage < len(lengths) - 1 and now - last_check > args.stage_check:
            acc = accuracy(model, tok, held_out(lengths[stage], 64, padded), device)
            late = now - start > args.curriculum * args.minutes * 60
            log(f"step {state['step']} stage {lengths[stage]} tokens: quick accuracy {acc:.3f}")
            if acc >= STAGE_ACCURACY or late:
                stage += 1
                state["stage"] = stage
                stage_length.value = lengths[stage]
                log(f"step {state['step']} curriculum: now {lengths[stage]}-token documents" + (" (time)" * late))
            last_check = time.time()
        if now - last_eval > args.eval_every:
            acc = accuracy(model, tok, quick, device)
            state["seconds"] += now - last_eval
            state["history"].append({"step": state["step"], "loss": state.get("loss"), "accuracy": acc,
                                     "minutes": round(state["seconds"] / 60, 2)})  # fmt: skip
            log(f"step {state['step']} quick accuracy {acc:.3f} on 64 held-out documents of {args.length} tokens")
            save_checkpoint(model, opt, state, args.out)
            last_eval = time.time()
    state["seconds"] += time.time() - last_eval
    if losses:
        state["loss"] = torch.stack(losses).mean().item()
    save_checkpoint(model, opt, state, args.out)

    # fp16 model + tokenizer
    half = copy.deepcopy(model).to("cpu", torch.float16).eval()
    half.save_pretrained(args.out / "dlm")
    tok.save_pretrained(args.out / "dlm")
    log(f"saved {args.out / 'dlm'} at step {state['step']}")

    lengths = [args.length] + ([2 * args.length] if 2 * args.length <= max_positions else [])
    gen_lengths = [None] + ([args.gen_length, args.max_gen_length] if args.max_gen_length > 0 else [])
    by_length, by_gen_length = {}, {}
    scored = half.to(device, torch.float32)  # the fp16 weights, as saved, run in fp32 (bf16 autocast on CUDA)
    for length in lengths:
        for gen in gen_lengths if length == args.length else [padded]:
            docs = held_out(length, args.eval, gen)
            acc = accuracy(scored, tok, docs, device, batch=max(1, 65536 // length))
            if gen == padded:
                by_length[str(length)] = acc
            if length == args.length:
                by_gen_length["answer" if gen is None else str(gen)] = acc
            log(f"final accuracy {acc:.3f} on {args.eval} held-out documents of {length} tokens, generation length "
                f"{'= the answer' if gen is None else gen}")  # fmt: skip
    record = {
        "steps": state["step"], "loss": state.get("loss"), "accuracy": by_length[str(args.length)],
        "accuracy_by_length": by_length, "accuracy_by_gen_length": by_gen_length, "gen_length": padded,
        "eval_documents": args.eval, "length": args.length, "seed": args.seed,
        "minutes": round(state["seconds"] / 60, 2), "params": n_params, "history": state["history"],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }  # fmt: skip
    (args.out / "dlm_training.json").write_text(json.dumps(record, indent=1))
    log.file.close()
    return record


if __name__ == "__main__":
    main()
