"""Noise search on a diffusion LM: exploration (best of N sampled generations) scored by a text reward, the shapes
retrieval verifier; text rewards refuse optimization and image pipelines."""

from __future__ import annotations

import random

import pytest
import torch

import unbottle
from unbottle.rewards import RetrievalVerifierReward
from unbottle.shapes import call_defaults, load_pipeline, retrieval


def test_retrieval_verifier_reads_the_answer_from_the_prompt():
    prompt, answer = retrieval.make_example(random.Random(3), 256)
    assert retrieval.answer_of(prompt) == answer
    reward = unbottle.load_reward("shapes-retrieval")
    assert isinstance(reward, RetrievalVerifierReward) and reward.modality == "text"
    wrong = " ".join(["v0"] * len(answer.split())) if answer.split()[0] != "v0" else "v1 v1"
    scores = reward([answer, wrong, answer + " v3", f"  {answer} "], prompt)
    assert scores.tolist() == [1.0, 0.0, 0.0, 1.0] and scores.dtype == torch.float32
    assert reward([answer], ["a red circle"]).tolist() == [0.0]  # not a retrieval prompt: nothing verifies it
    with pytest.raises(ValueError, match="takes no path"):
        unbottle.load_reward("shapes-retrieval", path="x.pt")


@pytest.fixture(scope="module")
def dlm():
    pipe = load_pipeline("dlm")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_exploration_on_the_shapes_dlm_keeps_the_best_verified_sample(dlm):
    """Best of 4 temperature samples at twice the trained context = the argmax of the seeds' own verified scores."""
    prompt, answer = retrieval.make_example(random.Random(11), 2048)
    n = len(answer.split())
    kwargs = {**call_defaults("dlm"), "gen_length": n, "block_length": n, "num_inference_steps": n,
              "sampling_method": "multinomial", "temperature": 2.0}  # fmt: skip
    reward = unbottle.load_reward("shapes-retrieval")
    alone = [dlm(prompt, generator=torch.Generator().manual_seed(s), **kwargs).texts[0] for s in range(4)]
    verified = [float(reward([t], prompt)) for t in alone]
    result = unbottle.NoiseSearch(dlm, {"shapes-retrieval": 1.0}, seeds=4, iterations=0, progress=False)(
        prompt, **kwargs
    )
    best = max(range(4), key=lambda s: (verified[s], -s))  # the first seed of the highest score
    assert result.seed == best and result.images == [alone[best]]
    assert result.scores == {"shapes-retrieval": verified[best]}
    assert [h[0].scores["shapes-retrieval"] for h in result.history.values()] == verified


def test_text_rewards_refuse_optimization_and_image_pipelines(dlm):
    from unbottle.testing import tiny_stable_diffusion_pipeline

    pipe = tiny_stable_diffusion_pipeline()
    with pytest.raises(ValueError, match="iterations must be 0"):
        unbottle.NoiseSearch(pipe, {"shapes-retrieval": 1.0}, iterations=2)
    with pytest.raises(ValueError, match="cannot optimize the noise of a LLaDA2Pipeline"):
        unbottle.NoiseSearch(dlm, {"shapes-retrieval": 1.0}, iterations=2)
    prompt, _ = retrieval.make_example(random.Random(1), 256)
    kwargs = {**call_defaults("dlm"), "gen_length": 2, "block_length": 2, "num_inference_steps": 2}
    with pytest.raises(ValueError, match="every reward must be a text reward"):
        unbottle.NoiseSearch(dlm, {"shapes-clip": 1.0}, seeds=1, iterations=0, progress=False)(prompt, **kwargs)
    with pytest.raises(ValueError, match="text rewards cannot score them"):
        unbottle.NoiseSearch(pipe, {"shapes-retrieval": 1.0}, seeds=1, iterations=0, progress=False)(
            "a red circle", num_inference_steps=1, height=32, width=32
        )
