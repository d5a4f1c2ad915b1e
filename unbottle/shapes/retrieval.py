"""Key–value retrieval documents for the shapes masked-diffusion LM: a long-context task with a checkable answer.

A document is a haystack of records `k17 = v42 v7 ;` (distinct keys k0..k255, each holding 2–4 value tokens from
v0..v255) with filler words between them, followed by a query; the answer is the queried key's value:

    prompt  "... k3 = v8 v91 ; red circle of the k17 = v42 v7 v199 ; sky ... k250 = v0 v0 ; query k17 ->"
    answer  "v42 v7 v199"

A diffusion LM generates a fixed number of tokens: as in LLaDA's fine-tuning, an answer shorter than the generation
is followed by end-of-text tokens (`answer_length`: "v42 v7 v199 <|endoftext|>" for 4 generated tokens), which the
pipelines cut at the first one.

Every token is one word of a closed vocabulary (`tokenizer()`: word level, pad/unk/eos/mask specials, no chat template,
nothing added around the text), so `length` is exact: prompt + answer is `length` tokens. The queried key occurs once
among the records, the query key is uniform over the records (so the answer's depth is uniform over the context), and
the answer's token sequence occurs nowhere else in the document. The fraction of the context taken by records is
drawn from U(0.1, 1) and capped by the 256 keys (≈1,500 tokens of records), so long documents are mostly filler.

`mask_answer` is the masked-diffusion corruption (LLaDA SFT: only answer tokens are ever masked, each with probability
t; the loss weighs them by 1/t), `mask_answer_count` the same objective with t integrated out (k ~ U{1..n} masked
tokens, weight n/k: lower variance), `diffusion_loss` the loss. `decode` is greedy masked-diffusion decoding with
low-confidence remasking that commits one answer token per step (the most confident masked position), so an answer
of n tokens takes n forward passes; `score` is exact match.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedTokenizerFast

NUM_KEYS = 256
NUM_VALUES = 256
MIN_VALUE_TOKENS, MAX_VALUE_TOKENS = 2, 4
KEYS: tuple[str, ...] = tuple(f"k{i}" for i in range(NUM_KEYS))
VALUES: tuple[str, ...] = tuple(f"v{i}" for i in range(NUM_VALUES))
# Haystack words between records (the shapes world's words, deduplicated).
FILLER: tuple[str, ...] = tuple(dict.fromkeys(
    """
    a an the of and or with on in at to from by for is are its this that it one two three four five six
    red green blue yellow orange purple pink white black gray brown cyan magenta circle square triangle star
    hexagon diamond cross ellipse heart ring cube sphere car sheep dog cat bird small large big tiny huge striped
    dotted solid left right above below under over near next beside behind moves moving up down top bottom middle
    center background photo picture image video painting man woman person people tree house sky sun moon water river
    mountain field flower
    """.split()
))  # fmt: skip
ASSIGN, END, QUERY, ARROW = "=", ";", "query", "->"
PAD, UNK, EOS, MASK = "<pad>", "<unk>", "<|endoftext|>", "<|mask|>"
MIN_LENGTH = 16  # smallest document: one record, the query and its answer (plus a little filler)


def tokenizer(model_max_length: int = 16384) -> PreTrainedTokenizerFast:
    """The task's word-level tokenizer: `<pad>` 0, `<unk>` 1, `<|endoftext|>` 2 (eos), `<|mask|>` 3 (mask token).

    Plain format: text encodes to exactly its words (no bos/eos added, no chat template).
    """
    from tokenizers import processors

    from ..tokenizers import word_level_tokenizer

    words = KEYS + VALUES + (ASSIGN, QUERY, ARROW, END) + FILLER
    tok = word_level_tokenizer(
        model_max_length, pad=PAD, eos=EOS, bos=None, unk=UNK, extra_special=(MASK,), words=words
    )
    tok.add_special_tokens({"mask_token": MASK})  # already in the vocabulary: sets mask_token_id, adds no id
    # the helper appends eos to every encoding; this task's prompt must end at `->`
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A:0", special_tokens=[])
    return tok


def make_example(rng: random.Random, length: int = 1024, answer_length: int | None = None) -> tuple[str, str]:
    """One document of exactly `length` tokens: `(prompt_text, answer_text)`, drawn from `rng` only.

    With `answer_length`, the answer is padded with end-of-text tokens to at least that many tokens (the prompt is
    that much shorter); `answer_value` gives the value alone."""
    prompt, answer = make_example_tokens(rng, length, answer_length)
    return " ".join(prompt), " ".join(answer)


def answer_value(answer_text: str) -> str:
    """The value words of an answer: everything before its first end-of-text token."""
    words = answer_text.split()
    return " ".join(words[: words.index(EOS)] if EOS in words else words)


def make_example_tokens(
    rng: random.Random, length: int = 1024, answer_length: int | None = None
) -> tuple[list[str], list[str]]:
    """`make_example` as word lists (prompt words, answer words)."""
    if length < MIN_LENGTH:
        raise ValueError(f"length must be at least {MIN_LENGTH}, got {length}")
    if answer_length is not None and not MIN_LENGTH + answer_length - MAX_VALUE_TOKENS <= length:
        raise ValueError(
            f"answer_length={answer_length} leaves too short a prompt in {length} tokens: use a length of at least "
            f"{MIN_LENGTH + answer_length - MAX_VALUE_TOKENS}"
        )
    while True:
        n_answer = rng.randint(MIN_VALUE_TOKENS, MAX_VALUE_TOKENS)
        n_padded = max(n_answer, answer_length or 0)
        budget = length - 3 - n_padded  # tokens before `query kX ->`
        mean_record = 3 + (MIN_VALUE_TOKENS + MAX_VALUE_TOKENS) / 2
        n_others = max(0, min(NUM_KEYS, round(rng.uniform(0.1, 1.0) * budget / mean_record)) - 1)
        others = [rng.randint(MIN_VALUE_TOKENS, MAX_VALUE_TOKENS) for _ in range(n_others)]
        while others and sum(others) + 3 * len(others) + n_answer + 3 > budget:  # drop records until they fit
            others.pop()
        target = rng.randint(0, len(others))
        sizes = others[:target] + [n_answer] + others[target:]
        n_records = len(sizes)
        keys = rng.sample(KEYS, n_records)
        values = [[rng.choice(VALUES) for _ in range(n)] for n in sizes]
        n_filler = budget - sum(sizes) - 3 * n_records
        cuts = sorted(rng.randint(0, n_filler) for _ in range(n_records))  # filler before each record, rest after
        gaps = [b - a for a, b in zip([0, *cuts], [*cuts, n_filler], strict=True)]
        body: list[str] = []
        for gap, key, value in zip(gaps, keys, values, strict=False):
            body += [rng.choice(FILLER) for _ in range(gap)]
            body += [key, ASSIGN, *value, END]
        body += [rng.choice(FILLER) for _ in range(gaps[-1])]
        answer = values[target]
        if _count(body, answer) == 1:  # the answer's token sequence occurs only as the queried value
            return body + [QUERY, keys[target], ARROW], answer + [EOS] * (n_padded - n_answer)


def _count(words: list[str], needle: list[str]) -> int:
    n = len(needle)
    return sum(1 for i in range(len(words) - n + 1) if words[i] == needle[0] and words[i : i + n] == needle)


def answer_of(prompt_text: str) -> str | None:
    """The answer a retrieval prompt asks for, read from the prompt itself (the queried key's record), or None when
    the text is not a retrieval prompt (no trailing `query kX ->`, or no single record of kX)."""
    words = prompt_text.split()
    if len(words) < 3 or words[-3] != QUERY or words[-1] != ARROW:
        return None
    key, found = words[-2], []
    for i in range(len(words) - 3):
        if words[i] == key and i + 1 < len(words) and words[i + 1] == ASSIGN:
            end = words.index(END, i + 2) if END in words[i + 2 :] else -1
            if end > i + 2:
                found.append(" ".join(words[i + 2 : end]))
    return found[0] if len(found) == 1 else None


def score(generated_text: str, answer_text: str) -> bool:
    """Exact match of the answer's value (whitespace-separated words up to the first end-of-text; nothing missing,
    nothing extra)."""
    return answer_value(generated_text).split() == answer_value(answer_text).split()


def encode(tok: PreTrainedTokenizerFast, examples: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `(B, L)` of prompt + answer and the bool answer mask `(B, L)`; all examples must share a length."""
    prompts = tok([p for p, _ in examples], add_special_tokens=False)["input_ids"]
    answers = tok([a for _, a in examples], add_special_tokens=False)["input_ids"]
    ids = [p + a for p, a in zip(prompts, answers, strict=True)]
    if len({len(x) for x in ids}) != 1:
        raise ValueError(f"examples differ in token length: {sorted({len(x) for x in ids})}")
    answer_mask = [[False] * len(p) + [True] * len(a) for p, a in zip(prompts, answers, strict=True)]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(answer_mask, dtype=torch.bool)


def mask_answer(
    input_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    mask_token_id: int,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked-diffusion corruption of the answer only: `(noisy_ids, masked, p_mask)`.

    t ~ U(0, 1) per row unless given; each answer token is masked independently with p = (1 − eps)·t + eps (LLaDA);
    prompt tokens are never masked. `p_mask` is `(B,)`; the loss weights masked tokens by 1 / p_mask.
    """
    b = input_ids.shape[0]
    if t is None:
        t = torch.rand(b, generator=generator, device=input_ids.device)
    p_mask = (1 - eps) * t.to(input_ids.device, torch.float32) + eps
    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = (u < p_mask[:, None]) & answer_mask
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids), masked, p_mask


def mask_answer_count(
    input_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same corruption with t integrated out: `(noisy_ids, masked, p_equiv)`, for `diffusion_loss`.

    Per row with n answer tokens: k ~ U{1..n}, then k answer positions uniformly at random are masked; `p_equiv` is
    k / n, so `diffusion_loss` weighs the row's masked tokens by n / k (Σ CE / k after the division by n): LLaDA's
    lower-variance form of its loss (its Eq. 6). It is the same objective in expectation as `mask_answer`: under
    t ~ U(0, 1) with independent masking the masked count l is uniform on {0..n} and E[1/t | l] = (n + 1) / l, so
    both equal Σ_{l=1..n} (1/l) E[Σ CE over l random positions]; this one never draws an empty or near-empty mask
    with a huge 1/t weight, which with 2–4 answer tokens is most of the variance.
    """
    n = answer_mask.sum(1)
    k = (torch.rand(n.shape, generator=generator, device=n.device) * n).floor().long() + 1  # U{1..n}
    score = torch.rand(input_ids.shape, generator=generator, device=input_ids.device).masked_fill(~answer_mask, 2.0)
    rank = score.argsort(1).argsort(1)  # answer positions first, in random order
    masked = (rank < k[:, None]) & answer_mask
    p_equiv = k.float() / n.clamp_min(1).float()
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids), masked, p_equiv


def diffusion_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    masked: torch.Tensor,
    p_mask: torch.Tensor,
    answer_mask: torch.Tensor,
) -> torch.Tensor:
    """LLaDA SFT loss: Σ over masked answer tokens of CE / p_mask, divided by the answer length, mean over rows.

    `logits` may cover only the last `logits.shape[1]` positions (as with `logits_to_keep`), which must hold every
    answer token.
    """
    keep = logits.shape[1]
    if answer_mask[:, :-keep].any():
        raise ValueError("the logits do not cover every answer position")
    ids, masked = input_ids[:, -keep:], masked[:, -keep:]
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")  # (B, keep)
    per_row = (ce * masked / p_mask[:, None]).sum(1) / answer_mask.sum(1).clamp_min(1)
    return per_row.mean()


@torch.no_grad()
def decode(
    model: torch.nn.Module, input_ids: torch.Tensor, answer_mask: torch.Tensor, mask_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy masked-diffusion decoding of the answer positions, one token per step (low-confidence remasking).

    The answer positions start as `mask_token_id` (whatever `input_ids` holds there). Each step runs the model on the
    whole sequence, takes the argmax token and its softmax probability at every still-masked answer position (the
    mask token itself is never predicted) and commits only the most confident one; the rest stay masked. A row with an
    n-token answer is done after n steps (rows with shorter answers idle while longer ones finish).

    Returns `(ids, step)`: the completed ids, and for each position the step at which it was committed (−1 for prompt
    positions).
    """
    x = torch.where(answer_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    start = int(answer_mask.float().argmax(1).min()) if answer_mask.any() else x.shape[1]
    keep = x.shape[1] - start  # logits only for the span that holds answers
    step_of = torch.full_like(x, -1)
    rows = torch.arange(x.shape[0], device=x.device)
    for step in range(int(answer_mask.sum(1).max())):
        masked = x[:, start:] == mask_token_id
        masked &= answer_mask[:, start:]
        logits = model(input_ids=x, logits_to_keep=keep).logits[:, -keep:].float()
        logits[..., mask_token_id] = float("-inf")
        confidence, token = logits.softmax(-1).max(-1)
        confidence = confidence.masked_fill(~masked, -1.0)
        pick = confidence.argmax(1)
        active = masked.any(1)
        where = start + pick[active]
        x[rows[active], where] = token[rows[active], pick[active]]
        step_of[rows[active], where] = step
    return x, step_of


def main(argv: list[str] | None = None) -> None:
    """Print a retrieval prompt, its answer to stderr: `unbottle text "$(python -m unbottle.shapes.retrieval)"`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="print a key–value retrieval prompt for the shapes diffusion LM")
    parser.add_argument("--length", type=int, default=512, help=f"document length in tokens (≥ {MIN_LENGTH})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.length < MIN_LENGTH:
        parser.error(f"--length must be at least {MIN_LENGTH}, got {args.length}")
    prompt, answer = make_example(random.Random(args.seed), args.length)
    print(prompt)
    print(f"answer ({len(answer.split())} tokens): {answer}", file=sys.stderr)


if __name__ == "__main__":
    main()
