"""`unbottle.DiffusionLMPipeline` (LLaDA-style masked diffusion), its SparseD step hooks, the stock-pipeline helper,
and `unbottle text --model` on a transformers masked LM: on the shipped shapes retrieval DLM and tiny random models."""

import os
import random
import subprocess
import sys

import pytest
import torch

from unbottle.cli import main
from unbottle.pipelines import diffusion_lm, diffusion_lm_stock
from unbottle.pipelines.diffusion_lm import DiffusionLMConfig, DiffusionLMPipeline, run_stock_dlm_pipeline
from unbottle.pipelines.remasking import select_transfer, transfer_schedule
from unbottle.shapes import call_defaults, load_pipeline, retrieval
from unbottle.testing.language import tiny_diffusion_gemma_pipeline, tiny_llada2, tiny_llada2_pipeline


class Recorder(torch.nn.Module):
    """A masked LM that records every forward's inputs (and returns the wrapped model's output)."""

    def __init__(self, inner: torch.nn.Module, events: list | None = None):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []
        self.events = events if events is not None else []

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=None):
        self.calls.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask,
                           "position_ids": position_ids, "logits_to_keep": logits_to_keep})  # fmt: skip
        self.events.append("forward")
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         logits_to_keep=logits_to_keep, use_cache=use_cache)  # fmt: skip
        self.calls[-1]["logits"] = out.logits
        return out


@pytest.fixture(scope="module")
def shapes():
    stock = load_pipeline("dlm")
    stock.set_progress_bar_config(disable=True)
    pipe = DiffusionLMPipeline(stock.model, stock.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return stock, pipe


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llada2()
    return model, tok


def _pipe(model, tok, **kwargs):
    pipe = DiffusionLMPipeline(model, tok, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _example(seed, length):
    return retrieval.make_example(random.Random(seed), length)


def _seeded(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ---- generation on the shapes retrieval model ---------------------------------------------------------------------


def test_answers_retrieval_prompts_like_the_stock_pipeline(shapes):
    stock, pipe = shapes
    defaults = dict(call_defaults("dlm"))
    for seed, length in ((0, 256), (1, 384), (2, 320)):
        prompt, answer = _example(seed, length)
        n = len(answer.split())
        out = pipe(prompt, gen_length=n, steps=n, block_length=n)
        assert out.sequences.shape == (1, n)
        assert retrieval.score(out.texts[0], answer), (out.texts[0], answer)
        expected = stock(prompt, **{**defaults, "gen_length": n, "block_length": n, "num_inference_steps": n})
        assert out.texts == expected.texts
        # one token per block (left to right): the answer still comes out
        assert retrieval.score(pipe(prompt, gen_length=n, steps=n, block_length=1).texts[0], answer)


def test_batch_of_different_prompt_lengths_equals_single_runs(shapes):
    _, pipe = shapes
    (p0, _), (p1, _) = _example(5, 300), _example(6, 256)
    recorder = Recorder(pipe.model)
    batched = _pipe(recorder, pipe.tokenizer)
    kw = dict(gen_length=4, steps=4, block_length=2)
    both = batched([p0, p1], **kw)
    call = recorder.calls[0]
    n0, n1 = (len(tok) for tok in pipe._encode([p0, p1], None, None, True))
    assert call["attention_mask"][1].tolist()[: n0 - n1 + 1] == [0] * (n0 - n1) + [1]  # row 1 left-padded
    assert call["position_ids"][1].tolist()[n0 - n1 :] == list(range(n1 + 4))  # 0 at the first real token
    singles = [pipe(p, **kw).sequences for p in (p0, p1)]
    torch.testing.assert_close(both.sequences, torch.cat(singles), rtol=0, atol=0)
    assert recorder.calls[-1]["logits"].shape[1] == 2  # logits_to_keep: only the current block's logits


# ---- the tiny random model: schedule, randomness, CFG, hooks ------------------------------------------------------


def test_transfer_schedule_is_linear_with_the_remainder_first():
    assert transfer_schedule(torch.tensor([7, 5, 2]), 3).tolist() == [[3, 2, 2], [2, 2, 1], [1, 1, 0]]
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.3, 0.3, 0.3]])
    masked = torch.tensor([[True, False, True, True], [True, True, True, True]])
    chosen = select_transfer(scores, masked, torch.tensor([2, 2]))
    assert chosen.tolist() == [[False, False, True, True], [True, True, False, False]]  # never a committed one


def test_committed_tokens_per_step_follow_the_schedule(tiny):
    model, tok = tiny
    pipe = _pipe(model, tok)
    seen = []

    def count(p, step, step_in_block, tensors):
        block = step // 3
        start = tensors["x"].shape[1] - 14 + 7 * block
        assert (tensors["x"][:, start + 7 :] == pipe.mask_token_id).all()  # later blocks untouched
        seen.append((step, step_in_block, tensors["transfer_index"].sum(-1).tolist()))
        return {}

    out = pipe(["a red circle", "two blue squares and a star"], gen_length=14, steps=6, block_length=7,
               callback_on_step_end=count, callback_on_step_end_tensor_inputs=["x", "transfer_index"])  # fmt: skip
    assert [c for _, _, c in seen] == [[3, 3], [2, 2], [2, 2]] * 2
    assert [(s, i) for s, i, _ in seen] == [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]
    assert not (out.sequences == pipe.mask_token_id).any()


def test_random_remasking_is_deterministic_per_seed_and_per_row(tiny):
    model, tok = tiny
    pipe = _pipe(model, tok)
    prompts = ["a red circle", "two blue squares and a big star"]
    kw = dict(gen_length=8, steps=8, block_length=4, remasking="random", temperature=1.0)
    a = pipe(prompts, generator=torch.Generator().manual_seed(0), **kw).sequences
    b = pipe(prompts, generator=torch.Generator().manual_seed(0), **kw).sequences
    c = pipe(prompts, generator=torch.Generator().manual_seed(1), **kw).sequences
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    both = pipe(prompts, generator=_seeded(3, 4), **kw).sequences  # one generator per row: each row as if alone
    singles = [pipe(p, generator=_seeded(s), **kw).sequences for p, s in zip(prompts, (3, 4), strict=True)]
    torch.testing.assert_close(both, torch.cat(singles), rtol=0, atol=0)
    greedy_random = dict(kw, temperature=0.0)  # random remasking alone: commit order differs, tokens argmax
    assert not torch.equal(pipe(prompts, generator=_seeded(5, 6), **greedy_random).sequences,
                           pipe(prompts, generator=_seeded(7, 8), **greedy_random).sequences)  # fmt: skip


def test_cfg_zero_runs_no_unconditional_branch_and_cfg_combines_the_two(tiny):
    model, tok = tiny
    recorder = Recorder(model)
    pipe = _pipe(recorder, tok)
    prompt_ids = pipe._encode("a red circle", None, None, True)[0]  # with the chat template
    plain = pipe("a red circle", gen_length=8, steps=4, block_length=8)
    assert len(recorder.calls) == 4 and all(c["input_ids"].shape[0] == 1 for c in recorder.calls)
    recorder.calls.clear()
    x0 = []
    guided = pipe("a red circle", gen_length=8, steps=4, block_length=8, cfg_scale=2.0,
                  callback_on_step_end=lambda p, s, i, t: x0.append(t["x0"]) or {},
                  callback_on_step_end_tensor_inputs=["x0"])  # fmt: skip
    assert len(recorder.calls) == 4 and all(c["input_ids"].shape[0] == 2 for c in recorder.calls)
    first = recorder.calls[0]
    p = first["input_ids"].shape[1] - 8
    assert (first["input_ids"][1, :p] == pipe.mask_token_id).all()  # unconditional: the prompt masked
    assert first["input_ids"][0, :p].tolist() == prompt_ids
    cond, uncond = first["logits"][0].double(), first["logits"][1].double()  # (8, V)
    combined = uncond + 3.0 * (cond - uncond)
    combined[:, pipe.mask_token_id] = float("-inf")
    assert torch.equal(x0[0][0], combined.argmax(-1))
    assert not torch.equal(plain.sequences, guided.sequences)


def test_step_hooks_are_called_before_every_forward(tiny, monkeypatch):
    model, tok = tiny
    events = []
    starts = []
    monkeypatch.setattr(diffusion_lm, "notify_dlm_step", lambda m, step, total_steps: events.append(
        (step, total_steps, m)))  # fmt: skip
    monkeypatch.setattr(diffusion_lm, "notify_dlm_generation_start",
                        lambda m, **kw: starts.append(kw) or events.append("start"))  # fmt: skip
    recorder = Recorder(model, events)
    pipe = _pipe(recorder, tok)
    pipe(["a red circle", "two big blue squares"], gen_length=8, steps=4, block_length=4)
    assert events[0] == "start" and len(starts) == 1
    steps = events[1::2]
    assert [s[:2] for s in steps] == [(i, 4) for i in range(4)] and all(s[2] is recorder for s in steps)
    assert events[2::2] == ["forward"] * 4
    prompt_length = recorder.calls[0]["input_ids"].shape[1] - 8
    assert starts[0]["prompt_length"] == prompt_length and starts[0]["gen_length"] == 8
    assert starts[0]["attention_mask"].shape == (2, prompt_length + 8) and starts[0]["total_steps"] == 4
    events.clear()
    pipe("a red circle", gen_length=4, steps=8, block_length=4)  # 8 steps for 4 tokens: steps 4..7 commit nothing
    assert [e[0] for e in events if e not in ("start", "forward")] == [0, 1, 2, 3]
    assert events.count("forward") == 4


def test_hooks_without_sparse_attention_change_nothing(tiny, monkeypatch):
    model, tok = tiny
    pipe = _pipe(model, tok)
    with_hooks = pipe(["a red circle", "a blue star"], gen_length=8, steps=8, block_length=4).sequences
    monkeypatch.setattr(diffusion_lm, "notify_dlm_step", lambda *args, **kwargs: None)
    monkeypatch.setattr(diffusion_lm, "notify_dlm_generation_start", lambda *args, **kwargs: None)
    without = pipe(["a red circle", "a blue star"], gen_length=8, steps=8, block_length=4).sequences
    torch.testing.assert_close(with_hooks, without, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(gen_length=10, block_length=4), "gen_length"),
        (dict(gen_length=8, block_length=4, steps=3), "steps"),
        (dict(gen_length=8, block_length=2, steps=2), "steps"),
        (dict(gen_length=0), "gen_length"),
        (dict(steps=-1), "steps"),
        (dict(block_length=0), "block_length"),
        (dict(gen_length=8.0), "gen_length"),
        (dict(remasking="entropy"), "remasking"),
        (dict(cfg_scale=-1.0), "cfg_scale"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(generator=[torch.Generator()], temperature=1.0), "generator"),
        (dict(callback_on_step_end_tensor_inputs=["logits"]), "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments_name_the_argument(tiny, kwargs, named):
    model, tok = tiny
    pipe = _pipe(model, tok)
    call = dict(gen_length=8, steps=8, block_length=4) | kwargs
    with pytest.raises(ValueError, match=named):
        pipe(["a red circle", "a blue star"], **call)


def test_config_is_frozen_and_validated():
    config = DiffusionLMConfig(gen_length=64, steps=32, block_length=16)
    assert (config.num_blocks, config.steps_per_block) == (4, 8)
    with pytest.raises(AttributeError):
        config.steps = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="steps=3 must be a multiple"):
        DiffusionLMConfig(gen_length=64, steps=3, block_length=16)


def test_missing_mask_token_names_mask_token_id(tiny):
    model, tok = tiny
    stock = tiny_diffusion_gemma_pipeline()
    with pytest.raises(ValueError, match="mask_token_id"):
        DiffusionLMPipeline(model, stock.processor)  # a tokenizer without a mask token, a config without one
    pipe = _pipe(model, stock.processor, mask_token_id=tok.mask_token_id)  # given explicitly: fine
    assert pipe.mask_token_id == tok.mask_token_id


def test_input_ids_and_tuple_output(tiny):
    model, tok = tiny
    pipe = _pipe(model, tok)
    text = pipe("a red circle", gen_length=8, steps=8, block_length=8, use_chat_template=False)
    ids = torch.tensor([tok("a red circle")["input_ids"]])
    sequences, texts = pipe(input_ids=ids, gen_length=8, steps=8, block_length=8, return_dict=False)
    assert torch.equal(sequences, text.sequences) and texts == text.texts


# ---- stock diffusers pipelines with the hooks ---------------------------------------------------------------------


@pytest.mark.parametrize("fixture", [tiny_llada2_pipeline, tiny_diffusion_gemma_pipeline])
def test_stock_pipeline_helper_notifies_the_steps(fixture, monkeypatch):
    stock = fixture()
    stock.set_progress_bar_config(disable=True)
    kwargs = dict(gen_length=8, num_inference_steps=4, eos_early_stop=False)
    if fixture is tiny_llada2_pipeline:
        kwargs.update(threshold=1.5, editing_threshold=None)
    else:
        kwargs.update(confidence_threshold=None)
    expected = stock("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).sequences
    steps, starts, user = [], [], []
    monkeypatch.setattr(diffusion_lm_stock, "notify_dlm_step", lambda m, step, total_steps: steps.append(
        (step, total_steps)))  # fmt: skip
    monkeypatch.setattr(diffusion_lm_stock, "notify_dlm_generation_start", lambda m, **kw: starts.append(kw))
    out = run_stock_dlm_pipeline(stock, "a red circle", generator=torch.Generator().manual_seed(0),
                                 callback_on_step_end=lambda p, i, t, kw: user.append(i) or kw, **kwargs)  # fmt: skip
    torch.testing.assert_close(out.sequences, expected, rtol=0, atol=0)
    total = stock.num_timesteps
    assert user == list(range(len(user))) and 0 < len(user) <= total  # the caller's callback still runs
    # step 0 before the call, step i + 1 after step i; a block that fills early announces one step that never runs
    assert [s for s, _ in steps] == list(range(len(steps))) and len(user) <= len(steps) <= min(len(user) + 1, total)
    assert {t for _, t in steps} == {total}
    assert len(starts) == 1 and starts[0]["gen_length"] == 8 and starts[0]["total_steps"] == total
    assert starts[0]["attention_mask"].shape == (1, starts[0]["prompt_length"] + 8)
    with pytest.raises(TypeError, match="LLaDA2Pipeline"):
        run_stock_dlm_pipeline(object(), "a red circle")


# ---- the command line ---------------------------------------------------------------------------------------------


def test_text_verb_runs_a_local_masked_lm_through_the_pipeline(tiny, tmp_path, capsys):
    model, tok = tiny
    folder = tmp_path / "tiny-llada"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert main(["text", "a red circle", "--model", str(folder), "-q", "--gen-length", "8", "--seed", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    expected = _pipe(model, tok)("a red circle", gen_length=8, steps=8, block_length=8,
                                 generator=torch.Generator().manual_seed(2)).texts[0]  # fmt: skip
    assert printed == expected.strip()
    bare = tmp_path / "no-mask"
    model.save_pretrained(bare)
    tiny_diffusion_gemma_pipeline().processor.save_pretrained(bare)  # a tokenizer without a mask token
    assert main(["text", "a red circle", "--model", str(bare), "-q"]) == 2
    assert "mask_token_id" in capsys.readouterr().err


def test_text_verb_finds_a_cached_hub_masked_lm(tiny, tmp_path):
    """A hub id whose cached snapshot is a transformers model (config.json, no model_index.json) loads offline."""
    model, tok = tiny
    repo = tmp_path / "hub" / "models--someone--tiny-llada"
    snapshot = repo / "snapshots" / "0123abcd"
    model.save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "unbottle", "text", "a red circle", "--model", "someone/tiny-llada", "-q",
           "--gen-length", "8"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = _pipe(model, tok)("a red circle", gen_length=8, steps=8, block_length=8).texts[0]
    assert proc.stdout.strip() == expected.strip()
