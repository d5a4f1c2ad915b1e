"""The shipped shapes models: they load offline on CPU, generate deterministically, and keep their recorded accuracy.

The floors are measurements recorded in the model cards' `evaluation.json` (examples/shapes/evaluate_models.py and
the regression settings below), minus a margin for CPU/library numerics; a model or loader that breaks falls far
below them (a random T2I model scores ~0 facts, a random DLM ~0 answers, a random CLIP ~1/256 top-1).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from unbottle.shapes import caption, retrieval, sample_scene
from unbottle.shapes.evaluate import evaluate
from unbottle.shapes.pretrained import ASSETS, T2V_DIR, call_defaults, load_pipeline

CARD = json.loads((T2V_DIR / "evaluation.json").read_text())
REGRESSION = CARD["regression"]


def fact_accuracy(report) -> float:
    """Fraction of all caption facts satisfied (finer than the all-facts-right accuracy)."""
    total = sum(report.fact_counts.values())
    return sum(report.per_fact[f] * n for f, n in report.fact_counts.items()) / total


def regression_prompts(n: int) -> list[str]:
    rng = random.Random(REGRESSION["seed"])
    return [caption(sample_scene(rng), rng) for _ in range(n)]


@pytest.fixture(scope="module")
def t2i():
    pipe = load_pipeline("t2i")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_kinds_and_errors():
    with pytest.raises(ValueError, match=r"kind='t2x'.*t2i, t2v, dlm"):
        load_pipeline("t2x")
    with pytest.raises(ValueError, match="kind='image'"):
        call_defaults("image")
    assert call_defaults("t2i")["num_frames"] == 1 and call_defaults("t2v")["num_frames"] == 33
    with pytest.raises(TypeError):
        call_defaults("t2i")["height"] = 64  # read-only


def test_weights_are_fp16_safetensors_within_budget():
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) >= 5  # vae, text encoder, transformer, clip, dlm
    assert sum(p.stat().st_size for p in files) <= 60 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    from safetensors import safe_open

    for path in weights:
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, (path, dtypes)


def test_t2i_loads_offline_and_is_deterministic(t2i):
    from diffusers import WanPipeline

    assert isinstance(t2i, WanPipeline) and t2i.transformer.dtype == torch.float32
    kwargs = {**call_defaults("t2i"), "num_inference_steps": 4, "output_type": "np"}

    def run(seed):
        return t2i("a red circle", generator=torch.Generator().manual_seed(seed), **kwargs).frames

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 1, 128, 128, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_t2i_regression_floor(t2i):
    """The shipped T2I model on fixed prompts keeps the fact accuracy recorded in its card."""
    prompts = regression_prompts(REGRESSION["prompts"])
    kwargs = {**call_defaults("t2i"), "num_inference_steps": REGRESSION["steps"], "output_type": "np"}
    frames = t2i(prompts, generator=torch.Generator().manual_seed(0), **kwargs).frames
    images = [(np.asarray(f[0]) * 255).round().astype(np.uint8) for f in frames]
    report = evaluate(zip(images, prompts, strict=True))
    assert report.n == len(prompts)
    assert fact_accuracy(report) >= REGRESSION["fact_accuracy_floor"], report.table()
    assert report.accuracy >= REGRESSION["accuracy_floor"], report.table()


def test_dlm_answers_retrieval_through_the_stock_llada2_pipeline():
    from diffusers import LLaDA2Pipeline

    pipe = load_pipeline("dlm")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, LLaDA2Pipeline)
    card = json.loads((ASSETS / "dlm" / "evaluation.json").read_text())
    rng = random.Random(10_000)
    correct = 0
    for _ in range(8):
        prompt, answer = retrieval.make_example(rng, card["length"])
        n = len(answer.split())
        out = pipe(prompt=prompt, **{**call_defaults("dlm"), "gen_length": n}).texts[0]
        correct += retrieval.score(out, answer)
    assert correct / 8 >= card["accuracy_floor"]


def test_clip_ranks_held_out_captions():
    from unbottle.shapes.clip import load_shapes_clip, preprocess
    from unbottle.shapes.render import render_image

    model, _, tokenizer = load_shapes_clip()
    card = json.loads((ASSETS / "shapes_clip_evaluation.json").read_text())
    rng = random.Random(10_000)
    scenes = [sample_scene(rng) for _ in range(64)]
    captions = [caption(s, rng) for s in scenes]
    images = torch.from_numpy(np.stack([render_image(s, 128) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(preprocess(images)), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    best = (img @ txt.T).argmax(1)
    top1 = np.mean([captions[j] == captions[i] for i, j in enumerate(best.tolist())])
    assert top1 >= card["top1_floor_64"]


def test_missing_weights_are_a_clear_error(monkeypatch, tmp_path):
    import unbottle.shapes.pretrained as pretrained

    monkeypatch.setattr(pretrained, "T2V_DIR", tmp_path / "t2v")
    monkeypatch.setattr(pretrained, "DLM_DIR", tmp_path / "dlm")
    for kind in ("t2i", "dlm"):
        with pytest.raises(FileNotFoundError, match="shipped shapes weights are missing.*train_all.sh"):
            load_pipeline(kind)


def test_cli_text_default_answers_a_retrieval_query(capsys):
    from unbottle.cli import main

    prompt, answer = retrieval.make_example(random.Random(7), 512)
    assert main(["text", prompt, "--gen-length", str(len(answer.split())), "-q"]) == 0
    assert capsys.readouterr().out.split() == answer.split()


def test_cli_text_at_its_default_length_stops_at_the_answer(capsys):
    """`unbottle text "$(python -m unbottle.shapes.retrieval)"`: the model ends a short answer with end-of-text and
    the printed text stops there (no repeated value word filling the default 4 generated tokens)."""
    from unbottle.cli import main
    from unbottle.shapes.retrieval import main as print_prompt

    print_prompt([])  # the module's own default prompt: 512 tokens, seed 0, a 3-token answer
    printed = capsys.readouterr()
    prompt, answer = printed.out.strip(), printed.err.split(":", 1)[1].strip()
    assert len(answer.split()) < call_defaults("dlm")["gen_length"]
    assert main(["text", prompt, "-q"]) == 0
    assert capsys.readouterr().out.split() == answer.split()
    card = json.loads((ASSETS / "dlm" / "evaluation.json").read_text())
    rng, correct = random.Random(10_000), 0
    for _ in range(8):  # held-out documents that leave room for the default generation, as the card measures them
        prompt, answer = retrieval.make_example(rng, card["length"], call_defaults("dlm")["gen_length"])
        assert main(["text", prompt, "-q"]) == 0
        correct += capsys.readouterr().out.split() == retrieval.answer_value(answer).split()
    assert correct / 8 >= card["accuracy_floor"]


def test_diffusion_lm_text_is_cut_at_the_first_end_of_text():
    from unbottle.pipelines.diffusion_lm import DiffusionLMPipeline

    tok = retrieval.tokenizer()
    pipe = DiffusionLMPipeline.__new__(DiffusionLMPipeline)  # only the decoding is under test
    pipe.tokenizer = tok
    ids = tok(["v1 v2", "v3 v4 v5 v6"], add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    rows = torch.tensor([[ids[0][0], eos, ids[0][1], eos], ids[1]])
    assert pipe._decode(rows) == ["v1", "v3 v4 v5 v6"]
