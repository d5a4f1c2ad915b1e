"""User mistakes on the CLI and the public API: one clear error naming the option or argument, never a traceback."""

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention.flex_attention import create_block_mask  # noqa: E402

import unbottle  # noqa: E402
import unbottle.cli.loading as loading  # noqa: E402
from unbottle.cli import build_parser, main  # noqa: E402
from unbottle.cli.generate import check_gen_length  # noqa: E402
from unbottle.errors import RunError  # noqa: E402
from unbottle.testing.language import tiny_llada2_pipeline  # noqa: E402

PROMPT = "a red circle to the left of a blue square"
SEED_RANGE = "[0, 2**63 − 1] = [0, 9223372036854775807]"


def _refused_by_parser(argv, capsys) -> str:
    """The one error line of an argument the parser refuses (exit 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _refused(argv, capsys, code: int = 2) -> str:
    """The one error line of a run that `main` refuses with `code`."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the error must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n")
    return str(path)


# ---- --sparse-block-size ------------------------------------------------------------------------------------------


def test_sparse_block_size_out_of_range_is_refused_before_loading(tmp_path, capsys, no_model):
    out = tmp_path / "x.png"
    err = _refused_by_parser(["image", PROMPT, "-o", str(out), "--sparse", "0.3", "--sparse-block-size", "100000"],
                             capsys)  # fmt: skip
    assert "--sparse-block-size must be an integer in [1, 4096], got 100000" in err
    assert not out.exists()
    # the CLI's bound is the config's: the largest block it accepts is the largest the engine accepts
    assert build_parser().parse_args(["video", PROMPT, "--sparse-block-size", "4096"]).sparse_block_size == 4096
    assert unbottle.SparseAttentionConfig(block_size=4096).block_size == 4096
    with pytest.raises(ValueError, match=r"block_size must be in \[1, 4096\], got 4097"):
        unbottle.SparseAttentionConfig(block_size=4097)


# ---- --seed -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "1180591620717411303424", str(2**63), "1.5"])
def test_seed_rule_is_the_same_on_every_verb(value, prompts_file, capsys, no_model):
    lines = {
        verb: _refused_by_parser([*head, "--seed", value], capsys)
        for verb, head in [("image", ["image", PROMPT]), ("video", ["video", PROMPT]), ("text", ["text", PROMPT]),
                           ("batch", ["batch", prompts_file])]
    }  # fmt: skip
    shown = value if value != "1.5" else "'1.5'"
    for verb, line in lines.items():
        message = f"--seed must be an integer in {SEED_RANGE}, got {shown}"
        assert line == f"unbottle {verb}: error: argument --seed: {message}"


def test_largest_seed_is_accepted_everywhere(prompts_file):
    parser = build_parser()
    for head in (["image", PROMPT], ["video", PROMPT], ["text", PROMPT], ["batch", prompts_file]):
        assert parser.parse_args([*head, "--seed", str(2**63 - 1)]).seed == 2**63 - 1
        assert parser.parse_args([*head, "--seed", "0"]).seed == 0


def test_explored_seeds_past_the_largest_are_refused_before_loading(tmp_path, capsys, no_model):
    seed = 2**63 - 2
    err = _refused(["image", PROMPT, "--explore", "3", "--seed", str(seed), "-o", str(tmp_path / "x.png")], capsys)
    assert err.startswith("unbottle image: error: --seed/--explore: --explore 3 runs seeds")
    assert f"{seed} … {seed + 2}" in err and f"--seed ≤ {2**63 - 3}" in err


# ---- bench quality -o ---------------------------------------------------------------------------------------------


def test_bench_quality_checks_its_output_folder_before_the_run(tmp_path, capsys, monkeypatch):
    import unbottle.bench.quality.run as quality

    monkeypatch.setattr(quality, "run_quality", lambda *a, **k: pytest.fail("the benchmark ran"))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    err = _refused(["bench", "quality", "--captions", "1", "-o", str(blocker)], capsys)
    assert "-o/--output" in err and repr(str(blocker)) in err and "is a file" in err
    err = _refused(["bench", "quality", "--captions", "1", "-o", str(blocker / "sub")], capsys, code=1)
    assert "-o/--output: cannot create the folder" in err and str(blocker / "sub") in err


def test_bench_quality_failure_takes_back_the_folders_it_made(tmp_path, monkeypatch):
    import unbottle.bench.quality.run as quality

    def interrupted(*args, **kwargs):
        assert (tmp_path / "new" / "out").is_dir()  # made before the run
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "run_quality", interrupted)
    assert main(["bench", "quality", "--captions", "1", "-o", str(tmp_path / "new" / "out")]) == 130
    assert list(tmp_path.iterdir()) == []


# ---- --guidance-scale ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [("nan", "nan"), ("inf", "inf"), ("-1", "-1.0"), ("abc", "abc")])
@pytest.mark.parametrize("verb", ["image", "video"])
def test_guidance_scale_must_be_finite_and_not_negative(verb, value, shown, capsys, no_model):
    err = _refused_by_parser([verb, PROMPT, "--guidance-scale", value], capsys)
    assert err.endswith(f"argument --guidance-scale: --guidance-scale must be a finite number ≥ 0, got {shown}")


@pytest.mark.parametrize("value, shown", [("nan", "nan"), ("-inf", "-inf"), ("-0.5", "-0.5")])
def test_batch_guidance_scale_has_the_same_rule(value, shown, prompts_file, tmp_path, capsys, no_model):
    out = tmp_path / "out"
    err = _refused(["batch", prompts_file, f"--guidance-scale={value}", "-o", str(out)], capsys)
    assert err == f"unbottle batch: error: --guidance-scale must be a finite number ≥ 0, got {shown}"
    assert not out.exists()


def test_guidance_scale_zero_and_large_are_accepted(prompts_file):
    parser = build_parser()
    assert parser.parse_args(["image", PROMPT, "--guidance-scale", "0"]).guidance_scale == 0.0
    assert parser.parse_args(["video", PROMPT, "--guidance-scale", "12.5"]).guidance_scale == 12.5


# ---- the public API -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", [torch.nn.Linear(2, 2), None, "pipe"])
def test_disable_sparse_attention_says_what_it_expects(what):
    expected = "expects a diffusers pipeline, its transformer/unet, or a transformers model"
    with pytest.raises(ValueError, match=expected):
        unbottle.disable_sparse_attention(what)


def test_disable_sparse_attention_names_a_module_without_attention():
    with pytest.raises(ValueError, match="Linear has no attention processors"):
        unbottle.disable_sparse_attention(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("prompt", [None, 3, b"a red circle", ["a red circle"]])
def test_noun_phrases_needs_a_str_prompt(prompt):
    with pytest.raises(TypeError, match=f"prompt must be a str, got {type(prompt).__name__}"):
        unbottle.noun_phrases(prompt)


def _qkv():
    return (torch.zeros(1, 1, 8, 4) for _ in range(3))  # (B, H, N, D)


def test_block_sparse_attention_needs_a_block_mask():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="block_mask must be a FlexAttention BlockMask .*, got NoneType"):
        unbottle.block_sparse_attention(q, k, v, None)
    with pytest.raises(TypeError, match="block_mask must be a FlexAttention BlockMask .*, got Tensor"):
        unbottle.block_sparse_attention(q, k, v, torch.ones(1, 1, 8, 8, dtype=torch.bool))


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("bad", [None, [[0.0]]])
def test_block_sparse_attention_needs_tensors(position, bad):
    qkv = list(_qkv())
    mask = create_block_mask(lambda b, h, q, k: q >= k, 1, 1, 8, 8, device="cpu", BLOCK_SIZE=4)
    qkv[position] = bad
    name = "qkv"[position]
    with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor of shape \\(B, H, N, D\\), got "):
        unbottle.block_sparse_attention(*qkv, mask)


def test_block_sparse_attention_scale_must_be_a_finite_number():
    q, k, v = _qkv()
    mask = create_block_mask(lambda b, h, q, k: q >= k, 1, 1, 8, 8, device="cpu", BLOCK_SIZE=4)
    with pytest.raises(TypeError, match="scale must be a number or None"):
        unbottle.block_sparse_attention(q, k, v, mask, scale="0.5")
    with pytest.raises(ValueError, match="scale must be finite, got nan"):
        unbottle.block_sparse_attention(q, k, v, mask, scale=math.nan)


# ---- -o, --steps, --gen-length ------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb, name", [("image", "x.png"), ("text", "x.txt"), ("video", "x.mp4")])
@pytest.mark.parametrize("ending", ["/", "/."])
def test_output_spelled_as_a_folder_is_a_usage_error(verb, name, ending, tmp_path, capsys, no_model):
    given = str(tmp_path / name) + ending
    err = _refused([verb, PROMPT, "-o", given], capsys)
    assert err.startswith(f"unbottle {verb}: error: -o/--output: {given!r} names a folder")
    assert list(tmp_path.iterdir()) == []


def test_empty_output_is_a_usage_error(capsys, no_model):
    assert "-o/--output must not be empty" in _refused(["image", PROMPT, "-o", ""], capsys)
    assert "-o/--output must not be empty" in _refused(["text", PROMPT, "-o", ""], capsys)


def test_failed_run_removes_only_the_empty_folders_it_made(tmp_path, capsys, monkeypatch):
    (tmp_path / "kept").mkdir()

    def fails(*args, **kwargs):
        raise RunError("no model here")

    monkeypatch.setattr(loading, "load_pipeline", fails)
    assert main(["image", PROMPT, "-o", str(tmp_path / "kept" / "new" / "deeper" / "x.png")]) == 1
    assert "no model here" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []

    def writes_then_fails(*args, **kwargs):
        (tmp_path / "new" / "other.txt").write_text("not ours")
        raise RunError("no model here")

    monkeypatch.setattr(loading, "load_pipeline", writes_then_fails)
    assert main(["image", PROMPT, "-o", str(tmp_path / "new" / "deeper" / "x.png")]) == 1
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["other.txt"]  # deeper/ went, new/ is not empty


@pytest.mark.parametrize(
    "head, option, bound",
    [
        (["image", PROMPT], "--steps", 1000),
        (["video", PROMPT], "--steps", 1000),
        (["text", PROMPT], "--steps", 8192),  # a diffusion LM's steps go up to its tokens
        (["batch", "prompts.txt"], "--steps", 1000),
        (["text", PROMPT], "--gen-length", 8192),
    ],
)
def test_counts_have_an_upper_bound(head, option, bound, capsys, no_model):
    err = _refused_by_parser([*head, option, str(bound + 1)], capsys)
    assert err.endswith(f"argument {option}: {option} must be an integer in [1, {bound}], got {bound + 1}")
    assert getattr(build_parser().parse_args([*head, option, str(bound)]), option[2:].replace("-", "_")) == bound


def test_gen_length_past_the_model_positions(capsys, monkeypatch):
    pipe = tiny_llada2_pipeline()
    limit = pipe.model.config.max_position_embeddings
    prompt = "k1 = v2 ; query k1 ->"
    prompt_tokens = len(pipe.tokenizer(prompt)["input_ids"])
    check_gen_length(pipe, prompt, limit - prompt_tokens)  # fits exactly
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pipe)
    err = _refused(["text", prompt, "--model", "tiny", "--gen-length", str(limit - prompt_tokens + 1), "-q"], capsys)
    assert f"--gen-length {limit - prompt_tokens + 1}: the prompt's {prompt_tokens} tokens" in err
    assert f"the {limit} positions of {type(pipe.model).__name__}" in err
    assert f"use --gen-length ≤ {limit - prompt_tokens}" in err
