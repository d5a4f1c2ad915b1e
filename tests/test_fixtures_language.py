"""The tiny diffusion-LM fixtures: deterministic, seed-sensitive, pipeline-shaped outputs, a bidirectional LLaDA
stand-in, and attention routed through transformers' AttentionInterface."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AttentionInterface, AttentionMaskInterface  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import sdpa_mask  # noqa: E402

from unbottle.testing import language as fixtures  # noqa: E402

PROMPT = "a red circle to the left of a blue square"
PROBE = "unbottle_probe"
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")


def _gen(pipe, seed=0, **kwargs):
    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)


def _all_eval(model):
    return not any(module.training for module in model.modules())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads and lose a lot to them when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def probe():
    """Register an sdpa-delegating attention function (and sdpa's mask builder) as `unbottle_probe`; log its calls."""
    calls = []

    def attention(module, query, key, value, attention_mask, **kwargs):
        calls.append((type(module).__name__, attention_mask is not None, kwargs.get("is_causal")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(PROBE, attention)
    AttentionMaskInterface.register(PROBE, sdpa_mask)
    yield calls
    AttentionInterface._global_mapping.pop(PROBE, None)
    AttentionMaskInterface._global_mapping.pop(PROBE, None)


# --- DiffusionGemma ---


def test_diffusion_gemma_model_contract():
    model, tok = fixtures.tiny_diffusion_gemma()
    text = model.config.text_config
    assert _all_eval(model)
    assert model.config._attn_implementation == text._attn_implementation == "sdpa"
    assert text.vocab_size == len(tok) and text.hidden_size <= 64 and text.num_hidden_layers == 2
    assert text.num_attention_heads >= 2
    special_ids = [tok.pad_token_id, tok.eos_token_id, tok.bos_token_id]
    assert [text.pad_token_id, text.eos_token_id, text.bos_token_id] == special_ids
    enc = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=True)
    assert tok.unk_token_id not in enc["input_ids"]  # every word of the prompt and template is in the vocab

    ids = torch.randint(6, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    canvas = torch.randint(0, len(tok), (2, model.config.canvas_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=canvas).logits
        other_prompt = ids.clone()
        other_prompt[:, 2] = (other_prompt[:, 2] + 1 - 6) % (len(tok) - 6) + 6
        logits_other = model(input_ids=other_prompt, decoder_input_ids=canvas).logits
    assert logits.shape == (2, model.config.canvas_length, len(tok))
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, logits_other)  # the canvas reads the prompt through the encoder KV cache


def test_diffusion_gemma_pipeline_deterministic_and_shaped():
    pipe = fixtures.tiny_diffusion_gemma_pipeline()
    assert _all_eval(pipe.model)
    canvas = pipe.model.config.canvas_length
    gen_length = canvas + 2  # rounded up to a whole number of canvases
    expected = math.ceil(gen_length / canvas) * canvas

    first = _gen(pipe, gen_length=gen_length, eos_early_stop=False)
    second = _gen(pipe, gen_length=gen_length, eos_early_stop=False)
    assert first.sequences.shape == (1, expected)
    assert torch.equal(first.sequences, second.sequences) and first.texts == second.texts
    assert isinstance(first.texts, list) and len(first.texts) == 1 and isinstance(first.texts[0], str)
    assert first.texts[0].strip()
    assert int(first.sequences.min()) >= 0 and int(first.sequences.max()) < len(pipe.processor)
    assert not torch.equal(first.sequences, _gen(pipe, seed=1, gen_length=gen_length, eos_early_stop=False).sequences)

    seq = _gen(pipe, gen_length=gen_length, output_type="seq")  # default eos_early_stop: whole canvases, maybe fewer
    assert seq.texts is None
    assert seq.sequences.shape[1] % canvas == 0 and canvas <= seq.sequences.shape[1] <= expected
    if seq.sequences.shape[1] < expected:
        assert (seq.sequences == pipe.eos_token_id).any()


# --- LLaDA2-style ---


def test_llada2_model_contract_and_bidirectional():
    model, tok = fixtures.tiny_llada2()
    assert _all_eval(model)
    assert model.config._attn_implementation == "sdpa"
    assert tok.mask_token == fixtures.MASK_TOKEN
    assert tok.convert_tokens_to_ids(fixtures.MASK_TOKEN) == tok.mask_token_id
    assert tok.mask_token_id < len(tok) == model.config.vocab_size
    assert model.config.num_attention_heads >= 2 and model.config.hidden_size <= 64
    enc = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=True)
    assert tok.unk_token_id not in enc["input_ids"]

    length, block = 12, fixtures.LLADA_BLOCK_LENGTH
    ids = torch.randint(7, len(tok), (2, length), generator=torch.Generator().manual_seed(0))
    later = ids.clone()
    later[:, -1] = tok.mask_token_id
    blocks = torch.arange(length) // block
    block_causal = (blocks[:, None] >= blocks[None, :]).expand(2, 1, length, length)
    padded = torch.ones(2, length, dtype=torch.long)
    padded[:, -2:] = 0
    with torch.no_grad():
        full, full_later = model(ids).logits, model(later).logits
        bc, bc_later = (model(x, attention_mask=block_causal).logits for x in (ids, later))
        pad, pad_later = (model(x, attention_mask=padded).logits for x in (ids, later))
    assert full.shape == (2, length, len(tok))
    # bidirectional: the last token reaches the first position
    assert (full[:, 0] - full_later[:, 0]).abs().max() > 1e-3
    # a 4-D block-causal mask is honoured: earlier blocks are blind to the last block, its own block is not
    assert torch.allclose(bc[:, : length - block], bc_later[:, : length - block], atol=1e-6)
    assert (bc[:, length - block] - bc_later[:, length - block]).abs().max() > 1e-3
    # the pipeline's 2-D mask hides the block-aligned tail from every position
    assert torch.allclose(pad[:, :-2], pad_later[:, :-2], atol=1e-6)
    # like a trained masked-diffusion LM, it never proposes the mask token
    assert not (full.argmax(-1) == tok.mask_token_id).any()


def test_llada2_pipeline_deterministic_and_shaped():
    pipe = fixtures.tiny_llada2_pipeline()
    assert _all_eval(pipe.model)
    gen_length = fixtures.LLADA_BLOCK_LENGTH + 3  # not block-aligned: the pipeline still returns exactly gen_length
    sample = {"gen_length": gen_length, "temperature": 1.0, "eos_early_stop": False}

    first, second = _gen(pipe, **sample), _gen(pipe, **sample)
    assert first.sequences.shape == (1, gen_length)
    assert torch.equal(first.sequences, second.sequences) and first.texts == second.texts
    assert isinstance(first.texts, list) and len(first.texts) == 1 and isinstance(first.texts[0], str)
    assert first.texts[0].strip()
    assert not (first.sequences == pipe.mask_token_id).any()  # every generated position was committed
    assert not torch.equal(first.sequences, _gen(pipe, seed=1, **sample).sequences)

    greedy = _gen(pipe, gen_length=gen_length, output_type="seq")  # defaults: greedy, early stop at eos
    assert greedy.texts is None and greedy.sequences.shape == (1, gen_length)
    assert torch.equal(greedy.sequences, _gen(pipe, seed=1, gen_length=gen_length, output_type="seq").sequences)


# --- attention routing ---


def _diffusion_gemma_logits(model, tok):
    ids = torch.randint(6, len(tok), (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    canvas = torch.randint(0, len(tok), (2, model.config.canvas_length), generator=torch.Generator().manual_seed(1))
    return model(input_ids=ids, attention_mask=mask, decoder_input_ids=canvas).logits


def _llada2_logits(model, tok):
    ids = torch.randint(7, len(tok), (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # the pipeline's block-aligned tail
    return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize(
    "build, logits_of, layers_per_forward",
    [(fixtures.tiny_diffusion_gemma, _diffusion_gemma_logits, 4), (fixtures.tiny_llada2, _llada2_logits, 2)],
    ids=["diffusion_gemma", "llada2"],
)
def test_attention_interface_routes_model(probe, build, logits_of, layers_per_forward):
    model, tok = build()
    with torch.no_grad():
        reference = logits_of(model, tok)
        assert not probe
        model.set_attn_implementation(PROBE)
        assert model.config._attn_implementation == PROBE
        routed = logits_of(model, tok)
    assert len(probe) == layers_per_forward  # every attention layer (DiffusionGemma: encoder and decoder) used it
    assert any(has_mask for _, has_mask, _ in probe)  # the registered mask builder fed it the padding mask
    torch.testing.assert_close(routed, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [fixtures.tiny_diffusion_gemma_pipeline, fixtures.tiny_llada2_pipeline])
def test_attention_interface_routes_pipeline(probe, build):
    pipe = build()
    reference = _gen(pipe, gen_length=8, eos_early_stop=False, output_type="seq").sequences
    pipe.model.set_attn_implementation(PROBE)
    routed = _gen(pipe, gen_length=8, eos_early_stop=False, output_type="seq").sequences
    assert probe and torch.equal(routed, reference)
    if build is fixtures.tiny_llada2_pipeline:
        assert all(is_causal is False for _, _, is_causal in probe)  # bidirectional under the pipeline too
