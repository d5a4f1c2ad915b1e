"""The shapes masked-diffusion LM task: retrieval documents, tokenizer, score, masking objective, decoding, training
script."""

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest
import torch

from unbottle.shapes import retrieval

os.environ["HF_HUB_OFFLINE"] = "1"
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "train_dlm.py"


@pytest.fixture(scope="module")
def train_dlm():
    spec = importlib.util.spec_from_file_location("train_dlm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tok():
    return retrieval.tokenizer()


def _examples(seed: int, n: int, length: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [retrieval.make_example(rng, length) for _ in range(n)]


def _tiny_model(train_dlm, tok, seed: int = 0):
    torch.manual_seed(seed)
    return train_dlm.build_model(tok, layers=2, hidden=64, heads=2, head_dim=32, max_positions=512).eval()


# --- documents ---


def test_same_seed_same_documents_different_seed_different():
    assert _examples(3, 20, 256) == _examples(3, 20, 256)
    assert _examples(3, 20, 256) != _examples(4, 20, 256)
    # one stream: the n-th document depends only on the seed and what came before
    assert _examples(3, 5, 256) == _examples(3, 20, 256)[:5]


@pytest.mark.parametrize("length", [64, 128, 1024, 2048, 8192])
def test_length_and_answer_is_the_queried_value_exactly_once(length, tok):
    for prompt, answer in _examples(length, 3 if length >= 2048 else 30, length):
        n_tokens = len(tok(prompt)["input_ids"]) + len(tok(answer)["input_ids"])
        assert abs(n_tokens - length) <= 0.05 * length  # in fact exact
        assert n_tokens == length
        words, want = prompt.split(), answer.split()
        assert words[-3] == retrieval.QUERY and words[-1] == retrieval.ARROW
        key = words[-2]
        body = words[:-3]
        assert retrieval.MIN_VALUE_TOKENS <= len(want) <= retrieval.MAX_VALUE_TOKENS
        assert all(w in retrieval.VALUES for w in want)
        at = [i for i, w in enumerate(body) if w == key]
        assert len(at) == 1  # the queried key is recorded once
        i = at[0]
        assert body[i + 1] == retrieval.ASSIGN
        end = body.index(retrieval.END, i)
        assert body[i + 2 : end] == want  # ... and holds the answer
        n = len(want)
        occurrences = [j for j in range(len(body) - n + 1) if body[j : j + n] == want]
        assert occurrences == [i + 2]  # the answer's token sequence appears nowhere else
        assert len(set(w for w in body if w in retrieval.KEYS)) == sum(w in retrieval.KEYS for w in body)


def test_query_depth_and_answer_length_vary():
    depths, sizes = [], set()
    for prompt, answer in _examples(11, 200, 512):
        words = prompt.split()
        depths.append(words.index(words[-2]) / len(words))
        sizes.add(len(answer.split()))
    assert sizes == {2, 3, 4}
    assert min(depths) < 0.2 and max(depths) > 0.8


def test_too_short_is_refused():
    with pytest.raises(ValueError):
        retrieval.make_example(random.Random(0), retrieval.MIN_LENGTH - 1)
    retrieval.make_example(random.Random(0), retrieval.MIN_LENGTH)


@pytest.mark.parametrize("answer_length", [2, 4, 9])
def test_padded_answers_end_in_eos_and_keep_the_length(answer_length, tok):
    rng = random.Random(21)
    padded = [retrieval.make_example(rng, 256, answer_length) for _ in range(30)]
    for prompt, answer in padded:
        words = answer.split()
        n = len(retrieval.answer_value(answer).split())
        assert len(words) == max(n, answer_length) and words[n:] == [retrieval.EOS] * (len(words) - n)
        assert retrieval.EOS not in words[:n] and all(w in retrieval.VALUES for w in words[:n])
        assert len(tok(prompt)["input_ids"]) + len(tok(answer)["input_ids"]) == 256
        assert tok(answer)["input_ids"][n:] == [tok.eos_token_id] * (len(words) - n)
        assert retrieval.answer_of(prompt) == retrieval.answer_value(answer)  # the prompt still holds the answer
    assert {len(retrieval.answer_value(a).split()) for _, a in padded} == {2, 3, 4}


def test_padding_that_leaves_no_prompt_is_refused():
    with pytest.raises(ValueError, match=r"answer_length=20 .* at least 32"):
        retrieval.make_example(random.Random(0), 31, 20)
    assert len(retrieval.make_example(random.Random(0), 32, 20)[1].split()) == 20


# --- tokenizer and score ---


def test_tokenizer_round_trip_no_unknowns(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert tok.bos_token_id is None and not getattr(tok, "chat_template", None)
    for prompt, answer in _examples(5, 20, 512):
        ids = tok(prompt)["input_ids"]
        assert tok.unk_token_id not in ids and tok.eos_token_id not in ids and tok.mask_token_id not in ids
        assert tok.decode(ids) == prompt
        assert tok.decode(tok(answer)["input_ids"]) == answer
        assert len(ids) == len(prompt.split())  # one word, one token; nothing added
    n_words = len(retrieval.KEYS) + len(retrieval.VALUES) + 3 + len(retrieval.FILLER)  # + `=`, `query`, `->`
    assert len(tok) == 4 + n_words + 11  # specials, words, the helper's 11 punctuation marks (`;` among them)


def test_encode_marks_the_answer_suffix(tok):
    examples = _examples(6, 8, 128)
    ids, answer_mask = retrieval.encode(tok, examples)
    assert ids.shape == answer_mask.shape == (8, 128)
    for row, mask, (prompt, answer) in zip(ids, answer_mask, examples, strict=True):
        n = len(answer.split())
        assert mask.sum() == n and mask[-n:].all()
        assert tok.decode(row[mask].tolist()) == answer and tok.decode(row[~mask].tolist()) == prompt


def test_score_is_exact_match():
    assert retrieval.score("v42 v7 v199", "v42 v7 v199")
    assert retrieval.score("  v42  v7\tv199 ", "v42 v7 v199")  # whitespace is not a token
    assert not retrieval.score("v42 v7", "v42 v7 v199")  # missing token
    assert not retrieval.score("v42 v7 v199 v1", "v42 v7 v199")  # extra token
    assert not retrieval.score("v7 v42 v199", "v42 v7 v199")  # order matters
    assert not retrieval.score("v42 v7 v198", "v42 v7 v199")
    assert not retrieval.score("", "v42 v7")
    eos = retrieval.EOS
    assert retrieval.score(f"v42 v7 {eos} {eos}", f"v42 v7 {eos}")  # the value is what counts, up to the first EOS
    assert retrieval.score(f"v42 v7 {eos} v9", "v42 v7")  # what follows an EOS is not the answer
    assert not retrieval.score(f"v42 {eos} v7", "v42 v7")


# --- objective ---


def test_masking_only_touches_the_answer_with_probability_t(tok):
    ids, answer_mask = retrieval.encode(tok, _examples(7, 64, 64))
    ids, answer_mask = ids.repeat(40, 1), answer_mask.repeat(40, 1)  # 2,560 rows, ~7,700 answer tokens
    gen = torch.Generator().manual_seed(0)
    for t in (0.1, 0.5, 0.9):
        t_rows = torch.full((len(ids),), t)
        noisy, masked, p = retrieval.mask_answer(ids, answer_mask, tok.mask_token_id, t=t_rows, generator=gen)
        assert not (masked & ~answer_mask).any()  # the prompt is never masked
        assert torch.equal(noisy == tok.mask_token_id, masked)
        assert torch.equal(noisy[~masked], ids[~masked])
        fraction = masked.sum().item() / answer_mask.sum().item()
        assert abs(fraction - t) < 0.03, (t, fraction)
        assert torch.allclose(p, torch.full_like(p, (1 - 1e-3) * t + 1e-3))
    # t ~ U(0, 1): about half of the answer tokens in expectation
    _, masked, _ = retrieval.mask_answer(ids, answer_mask, tok.mask_token_id, generator=gen)
    assert abs(masked.sum().item() / answer_mask.sum().item() - 0.5) < 0.03
    _, masked, _ = retrieval.mask_answer(ids, answer_mask, tok.mask_token_id, t=torch.ones(len(ids)), generator=gen)
    assert torch.equal(masked, answer_mask)


def test_count_masking_masks_one_to_n_answer_tokens(tok):
    ids, answer_mask = retrieval.encode(tok, _examples(7, 64, 64))
    ids, answer_mask = ids.repeat(40, 1), answer_mask.repeat(40, 1)
    noisy, masked, p = retrieval.mask_answer_count(
        ids, answer_mask, tok.mask_token_id, torch.Generator().manual_seed(0)
    )
    assert not (masked & ~answer_mask).any()
    assert torch.equal(noisy == tok.mask_token_id, masked) and torch.equal(noisy[~masked], ids[~masked])
    n, k = answer_mask.sum(1), masked.sum(1)
    assert ((k >= 1) & (k <= n)).all() and torch.allclose(p, k / n)
    for size in (2, 3, 4):  # k ~ U{1..n}
        counts = torch.bincount(k[n == size], minlength=size + 1)[1:].float()
        assert (counts / counts.sum() - 1 / size).abs().max() < 0.05, (size, counts)


def test_count_and_t_objectives_agree_in_expectation():
    """Σ_masked CE / t under t ~ U(0,1) equals Σ_masked CE · n / k under k ~ U{1..n}, in expectation."""
    ids = torch.tensor([[5, 6, 7, 8, 9]]).repeat(200_000, 1)
    answer_mask = torch.tensor([[False, False, True, True, True]]).repeat(200_000, 1)
    logits = torch.randn(1, 5, 12).expand(200_000, -1, -1)
    gen = torch.Generator().manual_seed(0)
    _, masked, p = retrieval.mask_answer(ids, answer_mask, 3, t=torch.rand(200_000, generator=gen), generator=gen)
    via_t = retrieval.diffusion_loss(logits, ids, masked, p, answer_mask)
    _, masked, p = retrieval.mask_answer_count(ids, answer_mask, 3, generator=gen)
    via_count = retrieval.diffusion_loss(logits, ids, masked, p, answer_mask)
    ce = torch.nn.functional.cross_entropy(logits[0], ids[0], reduction="none")[2:]
    exact = ce.mean()  # Σ_{l=1..n} (1/l) · l · mean CE / n: the mean CE over the answer

    assert abs(via_count.item() - exact.item()) < 0.01 * exact.item()
    assert abs(via_t.item() - exact.item()) < 0.03 * exact.item()  # the 1/t form: same mean, noisier


def test_diffusion_loss_weights_masked_answer_tokens_by_one_over_t(train_dlm):
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    answer_mask = torch.tensor([[False, False, True, True], [False, True, True, True]])
    masked = torch.tensor([[False, False, True, False], [False, True, True, True]])
    p = torch.tensor([0.5, 0.25])
    logits = torch.randn(2, 4, 10)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    want = ((ce[0, 2] / 0.5) / 2 + (ce[1, 1:].sum() / 0.25) / 3) / 2
    assert torch.allclose(retrieval.diffusion_loss(logits, ids, masked, p, answer_mask), want)
    assert torch.allclose(retrieval.diffusion_loss(logits[:, 1:], ids, masked, p, answer_mask), want)  # suffix logits
    with pytest.raises(ValueError):
        retrieval.diffusion_loss(logits[:, 2:], ids, masked, p, answer_mask)  # misses an answer position
    t = train_dlm.stratified_t(8, "cpu", torch.Generator().manual_seed(0))
    assert ((t >= 0) & (t < 1)).all() and torch.allclose(torch.sort(t).values.diff(), torch.full((7,), 1 / 8))


# --- decoding ---


class _Recorder(torch.nn.Module):
    """Wraps a model; records the masked answer tokens it is shown at each call."""

    def __init__(self, model, mask_id):
        super().__init__()
        self.model, self.mask_id, self.masks = model, mask_id, []

    def forward(self, input_ids, **kwargs):
        self.masks.append((input_ids == self.mask_id).sum(1).tolist())
        return self.model(input_ids=input_ids, **kwargs)


def test_decode_commits_one_token_per_step_and_leaves_no_mask(train_dlm, tok):
    model = _tiny_model(train_dlm, tok)
    examples = _examples(8, 6, 64)
    ids, answer_mask = retrieval.encode(tok, examples)
    lengths = answer_mask.sum(1).tolist()
    assert len(set(lengths)) > 1  # rows with different answer lengths in one batch
    recorder = _Recorder(model, tok.mask_token_id)
    out, step = retrieval.decode(recorder, ids, answer_mask, tok.mask_token_id)
    assert len(recorder.masks) == max(lengths)  # len(answer) forward passes
    for k, shown in enumerate(recorder.masks):
        assert shown == [max(n - k, 0) for n in lengths]  # exactly one commit per step per unfinished row
    assert not (out == tok.mask_token_id).any()
    assert torch.equal(out[~answer_mask], ids[~answer_mask])  # the prompt is never touched
    for row, mask, n in zip(step, answer_mask, lengths, strict=True):
        assert sorted(row[mask].tolist()) == list(range(n))  # each answer position committed once, one per step
        assert (row[~mask] == -1).all()
    # greedy: deterministic, and independent of what the answer positions held
    again, _ = retrieval.decode(model, torch.where(answer_mask, 0, ids), answer_mask, tok.mask_token_id)
    assert torch.equal(out, again)


def test_decode_commits_the_most_confident_position_first(train_dlm, tok):
    model = _tiny_model(train_dlm, tok, seed=1)
    ids, answer_mask = retrieval.encode(tok, _examples(9, 1, 64))
    x = torch.where(answer_mask, tok.mask_token_id, ids)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float()
    logits[:, tok.mask_token_id] = float("-inf")
    conf, token = logits.softmax(-1).max(-1)
    first = torch.where(answer_mask[0], conf, -1.0).argmax()
    out, step = retrieval.decode(model, ids, answer_mask, tok.mask_token_id)
    assert step[0, first] == 0 and out[0, first] == token[first]


def test_decode_matches_llada2_pipeline_on_raw_prompts(train_dlm, tok):
    """diffusers' LLaDA2Pipeline takes the plain prompt (no chat template); with the answer as one block, one commit
    per step (threshold > 1) and no editing, it is the same greedy low-confidence decoding."""
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline

    model = _tiny_model(train_dlm, tok, seed=2)

    def no_mask(module, args, logits):  # the pipeline may commit the mask token; a trained model never predicts it
        return logits.index_fill(-1, torch.tensor([tok.mask_token_id]), float("-inf"))

    model.lm_head.register_forward_hook(no_mask)
    pipe = LLaDA2Pipeline(model=model, scheduler=BlockRefinementScheduler(), tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    for prompt, answer in _examples(12, 3, 96):  # 96 − n is a multiple of n = 2, 3, 4: the answer is one block
        n = len(answer.split())
        ids, answer_mask = retrieval.encode(tok, [(prompt, answer)])
        ours, _ = retrieval.decode(model, ids, answer_mask, tok.mask_token_id)
        result = pipe(prompt=prompt, use_chat_template=False, gen_length=n, block_length=n, num_inference_steps=n,
                      sampling_method="greedy", threshold=1.5, editing_threshold=None,
                      eos_early_stop=False)  # fmt: skip
        assert torch.equal(result.sequences[0], ours[0, -n:])
        assert result.texts[0] == tok.decode(ours[0, -n:].tolist())


# --- training script ---


def test_default_model_size_and_shape(train_dlm, tok):
    model = train_dlm.build_model(tok)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    assert 5e6 <= n <= 8e6 and 2 * n <= 16 * 2**20  # fp16 weights ≤ 16 MiB
    assert cfg.hidden_size == 256 and cfg.head_dim == 64 and 4 <= cfg.num_hidden_layers <= 6
    assert cfg.use_bidirectional_attention and cfg.is_causal is False and not cfg.tie_word_embeddings
    assert cfg.max_position_embeddings >= 4096 and cfg._attn_implementation == "sdpa"


def test_curriculum_stages_and_batches(train_dlm, tok):
    assert train_dlm.stages(1024) == [32, 64, 128, 256, 512, 1024]
    assert train_dlm.stages(1024, curriculum=False) == [1024]
    assert train_dlm.stages(128) == [32, 64, 128] and train_dlm.stages(32) == [32]
    assert train_dlm.stage_batch(128, 1024, 512) == 256  # same tokens per step ...
    assert train_dlm.stage_batch(128, 1024, 32) == 512  # ... but at most 4x the documents
    assert train_dlm.stage_batch(128, 1024, 1024) == 128
    lengths = [train_dlm.generation_length(random.Random(i), 4, 16) for i in range(400)]
    assert 0.4 < lengths.count(4) / 400 < 0.65 and set(lengths) <= set(range(2, 17)) and max(lengths) == 16
    assert train_dlm.generation_length(random.Random(0), 4, 0) is None  # no padding
    ids, mask = train_dlm.make_batch(0, 7, 128, 32, tok)
    padded = [int(m.sum()) for m in mask]
    assert max(padded) > 4 and padded.count(4) >= 8 and min(padded) >= 2
    eos_rows = [row[m].tolist() for row, m in zip(ids, mask, strict=True) if tok.eos_token_id in row[m].tolist()]
    assert eos_rows and all(r[r.index(tok.eos_token_id) :] == [tok.eos_token_id] * (len(r) - r.index(tok.eos_token_id))
                            for r in eos_rows)  # fmt: skip
    plain = train_dlm.make_batch(0, 7, 128, 32, tok, max_gen_length=0)[1]
    assert set(plain.sum(1).tolist()) <= {2, 3, 4}
    a, b = train_dlm.make_batch(0, 7, 128, 4, tok), train_dlm.make_batch(0, 7, 128, 4, tok)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], train_dlm.make_batch(0, 8, 128, 4, tok)[0])
    assert a[0].shape == (4, 128)


def test_two_step_training_run_writes_and_reloads(train_dlm, tok, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    args = ["--out", str(out), "--max-steps", "2", "--batch", "2", "--length", "128", "--workers", "0",
            "--layers", "2", "--hidden", "64", "--heads", "2", "--eval", "4",
            "--curriculum", "1e-9", "--stage-check", "0"]  # fmt: skip
    record = train_dlm.main(args)
    assert record["steps"] == 2 and record["length"] == 128
    saved = json.loads((out / "dlm_training.json").read_text())
    assert saved["steps"] == 2 and 0.0 <= saved["accuracy"] <= 1.0 and saved["loss"] > 0
    assert set(saved["accuracy_by_length"]) == {"128", "256"}
    assert (out / "checkpoint.pt").exists()
    log = (out / "train.log").read_text()
    # step 1 on 32-token documents (curriculum stage 0, 4x the batch), then the stage deadline moves it on each step
    assert "step 1 len 32x8 " in log
    assert "step 1 curriculum: now 64-token documents (time)" in log
    assert "step 2 curriculum: now 128-token documents (time)" in log
    weights = load_file(out / "dlm" / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in weights.values())

    model = AutoModelForCausalLM.from_pretrained(out / "dlm", dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(out / "dlm")
    assert type(model).__name__ == "GemmaForCausalLM"
    assert model.config.use_bidirectional_attention and model.config.is_causal is False
    assert tok2.mask_token_id == tok.mask_token_id and len(tok2) == len(tok)
    prompt, answer = _examples(13, 1, 128)[0]
    assert tok2(prompt)["input_ids"] == tok(prompt)["input_ids"]

    # the trained weights (checkpoint, fp32) rounded to fp16 give the same logits as the reloaded model
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    ref = train_dlm.build_model(tok, layers=2, hidden=64, heads=2, max_positions=8192)
    ref.load_state_dict({k: v.half().float() for k, v in ckpt["model"].items()})
    ref.eval()
    ids = torch.tensor([tok2(prompt + " " + answer)["input_ids"]])
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, ref(input_ids=ids).logits
        assert torch.equal(got, want)
        later = ids.clone()
        later[0, -1] = tok.convert_tokens_to_ids("v0") if later[0, -1] != tok.convert_tokens_to_ids("v0") else 4
        assert not torch.allclose(model(input_ids=later).logits[0, 0], got[0, 0])  # bidirectional: sees the future

    record = train_dlm.main(args[:2] + ["--resume"] + ["--max-steps", "3"] + args[4:])
    assert record["steps"] == 3
    assert "resumed at step 2" in (out / "train.log").read_text()
