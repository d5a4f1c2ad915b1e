"""The tiny offline image pipelines: deterministic, seed-sensitive, right shapes at call-time sizes, eval mode."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from unbottle.testing import image as fixtures  # noqa: E402
from unbottle.testing.tokenizers import WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer  # noqa: E402

FIXTURES = {
    "stable_diffusion": (fixtures.tiny_stable_diffusion_pipeline, {}),
    "sdxl": (fixtures.tiny_sdxl_pipeline, {}),
    "sd3": (fixtures.tiny_sd3_pipeline, {}),
    "flux": (fixtures.tiny_flux_pipeline, {"max_sequence_length": 32}),
    "pixart": (fixtures.tiny_pixart_pipeline, {"use_resolution_binning": False}),
}
PROMPT = "a red circle to the left of a blue square"


def _run(pipe, height, width, seed=0, **extra):
    out = pipe(
        PROMPT, num_inference_steps=2, height=height, width=width, output_type="np",
        generator=torch.Generator().manual_seed(seed), **extra,
    )  # fmt: skip
    return out.images


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def family(request):
    build, extra = FIXTURES[request.param]
    return request.param, build(), extra


def test_deterministic_and_shaped(family):
    name, pipe, extra = family
    first = _run(pipe, 32, 32, **extra)
    second = _run(pipe, 32, 32, **extra)
    assert first.shape == (1, 32, 32, 3), name
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


def test_seed_changes_output(family):
    name, pipe, extra = family
    assert not np.array_equal(_run(pipe, 32, 32, seed=0, **extra), _run(pipe, 32, 32, seed=1, **extra)), name


def test_other_size_at_call_time(family):
    name, pipe, extra = family
    assert _run(pipe, 16, 24, **extra).shape == (1, 16, 24, 3), name


def test_rebuild_is_identical(family):
    # same seed → same weights → same picture, from a freshly built pipeline
    name, pipe, extra = family
    np.testing.assert_array_equal(_run(pipe, 32, 32, **extra), _run(FIXTURES[name][0](), 32, 32, **extra))


def test_eval_mode(family):
    _, pipe, _ = family
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            assert not any(m.training for m in component.modules())


def test_attention_layers_have_several_heads(family):
    name, pipe, _ = family
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    heads = [m.heads for m in denoiser.modules() if hasattr(m, "heads") and hasattr(m, "to_q")]
    assert heads and min(heads) >= 2, (name, heads)


def test_clip_tokenizer_spells_known_words_as_single_tokens():
    tok = tiny_clip_tokenizer()
    assert len(tok) < 1000  # fits the tiny CLIP configs' vocab_size
    ids = tok("A red circle").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 5
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "red</w>", "circle</w>"]
    assert len(set(tok.convert_tokens_to_ids([w + "</w>" for w in WORDS]))) == len(set(WORDS))
    # unknown words fall back to characters, never to nothing
    assert len(tok("zebra").input_ids) > 3


def test_t5_tokenizer_appends_eos_and_pads_with_zero():
    tok = tiny_t5_tokenizer(16)
    ids = tok("A red circle", padding="max_length", max_length=8).input_ids
    assert ids[3] == tok.eos_token_id and ids[4:] == [0] * 4 and tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens(ids[:3]) == ["a", "red", "circle"]
    assert tok("zebra").input_ids[0] == tok.unk_token_id
