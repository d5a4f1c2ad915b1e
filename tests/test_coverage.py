"""Calibrated sparse-attention budgets: coverage selection (top-p of SparseD's exact tile masses) on hand-built masses
and on attention maps with known block masses, the realized density reported, pattern files carrying the calibration,
config validation, `calibrate_sparse_attention` (the union over prompts) and `unbottle calibrate`."""

import math
import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load, save  # noqa: E402

import unbottle  # noqa: E402
from unbottle.attention_processors.calibrate import union_patterns  # noqa: E402
from unbottle.attention_processors.engine import AttentionCall, DiTPatterns, LayerState, PatternStore  # noqa: E402
from unbottle.attention_processors.handle import PipelineSparseAttention, SparseAttentionHandle  # noqa: E402
from unbottle.attention_processors.patterns import select_by_coverage  # noqa: E402
from unbottle.cli import main  # noqa: E402
from unbottle.families.layout import TokenLayout  # noqa: E402
from unbottle.testing import language as language_fixtures  # noqa: E402
from unbottle.testing import tiny_flux_pipeline  # noqa: E402

PROMPTS = ("a red circle left of a blue square", "two green triangles")
FLUX_CALL = dict(num_inference_steps=2, height=32, width=32, output_type="np", max_sequence_length=16)


def kept(indices, counts):
    """Per row, the kept key blocks in kept order: a nested list (B, H, nQ) of lists."""
    return [[[indices[b, h, q, : counts[b, h, q]].tolist() for q in range(counts.shape[2])]
             for h in range(counts.shape[1])] for b in range(counts.shape[0])]  # fmt: skip


def kept_sets(indices, counts):
    return [[[set(row) for row in head] for head in batch] for batch in kept(indices, counts)]


def counted_density(store):
    """Realized density counted here from the store's patterns: per layer the mean over its patterns of
    Σ counts / (B·H·nQ·nK), then the mean over the layers."""
    per_layer = {}
    for key, (_, counts) in store.patterns.items():
        n_k = math.ceil(key[1] / key[2])
        per_layer.setdefault(key[0], []).append(counts.sum().item() / (counts.numel() * n_k))
    return {layer: sum(v) / len(v) for layer, v in per_layer.items()}


# -- selection on hand-written tile masses --------------------------------------------------------------------------
def masses(rows, per_row=4):
    """(1, 1, nQ, nK) tile sums for row-normalized masses `rows` over `per_row` query rows per block."""
    return torch.tensor(rows, dtype=torch.float32)[None, None] * per_row


NO_FORCED = torch.zeros(3, 3, dtype=torch.bool)


@pytest.mark.parametrize(
    "row, coverage, expected",
    [
        ([0.5, 0.3, 0.2], 0.8, [0, 1]),  # reached exactly at the second tile
        ([0.5, 0.3, 0.2], 0.81, [0, 1, 2]),
        ([0.5, 0.3, 0.2], 0.5, [0]),
        ([0.5, 0.3, 0.2], 1e-9, [0]),  # at least one tile
        ([0.2, 0.3, 0.5], 0.6, [2, 1]),  # descending mass, whatever the position
        ([0.4, 0.3, 0.3], 0.7, [0, 1]),  # a tie: the lower key block
        ([0.3, 0.3, 0.4], 0.7, [2, 0]),
        ([0.3, 0.3, 0.4], 1.0, [2, 0, 1]),
        ([0.7, 0.0, 0.3], 1.0, [0, 2]),  # coverage 1: all the mass, not the empty tile
    ],
)
def test_coverage_keeps_the_fewest_tiles_reaching_the_mass(row, coverage, expected):
    indices, counts = select_by_coverage(masses([row] * 3), NO_FORCED, coverage, 4)
    assert indices.dtype == counts.dtype == torch.int32 and indices.is_contiguous() and counts.is_contiguous()
    assert counts.tolist() == [[[len(expected)] * 3]]
    assert indices.shape == (1, 1, 3, len(expected))  # trimmed to the widest row
    assert kept(indices, counts) == [[[expected] * 3]]


def test_forced_tiles_come_first_and_count_towards_the_mass():
    forced = torch.zeros(3, 3, dtype=torch.bool)
    forced[0, 2] = True  # row 0: a light forced tile (0.1), then the heaviest (0.6) reaches 0.65
    forced[1, 0] = forced[1, 1] = True  # row 1: two forced tiles holding 0.9 ≥ 0.65, both kept
    rows = [[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]
    indices, counts = select_by_coverage(masses(rows), forced, 0.65, 4)
    assert counts.tolist() == [[[2, 2, 2]]]
    got = kept(indices, counts)[0][0]
    assert got[0] == [2, 0] and set(got[1]) == {0, 1} and got[2] == [0, 1]
    indices, counts = select_by_coverage(masses(rows), NO_FORCED, 0.65, 4)
    assert kept(indices, counts) == [[[[0, 1]] * 3]]  # without them: 0.6 < 0.65, so two by mass


def test_rows_per_block_normalize_the_sums_and_rows_differ_per_batch_and_head():
    # sums over 4, 4 and 2 query rows: row masses [0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1]
    sums = torch.tensor([[2.0, 1.0, 1.0], [0.4, 0.4, 3.2], [0.9, 0.9, 0.2]])
    scores = torch.stack([sums, sums.flip(-1)])[None]  # (1, 2, 3, 3): head 1 sees the key blocks reversed
    uniform = torch.tensor([4.0, 4.0, 2.0])[:, None].expand(3, 3) / 3  # batch 1: every tile a third of its row
    scores = torch.cat([scores, uniform.expand(1, 2, 3, 3)])  # (2, 2, 3, 3)
    indices, counts = select_by_coverage(scores, NO_FORCED, 0.75, torch.tensor([4.0, 4.0, 2.0]))
    assert counts.tolist() == [[[2, 1, 2], [2, 1, 2]], [[3, 3, 3], [3, 3, 3]]]
    assert indices.shape == (2, 2, 3, 3)
    assert kept(indices, counts)[0] == [[[0, 1], [2], [0, 1]], [[2, 0], [0], [1, 2]]]


def test_union_of_patterns_keeps_every_tile_any_of_them_keeps():
    a = (torch.tensor([[[[0, 2, 1], [1, 0, 0]]]]).int(), torch.tensor([[[2, 1]]]).int())  # rows {0, 2}, {1}
    b = (torch.tensor([[[[2, 3], [3, 0]]]]).int(), torch.tensor([[[1, 2]]]).int())  # rows {2}, {3, 0}
    indices, counts = union_patterns([a, b], 4)
    assert counts.tolist() == [[[2, 3]]]
    assert kept_sets(indices, counts) == [[[{0, 2}, {0, 1, 3}]]]


# -- selection through the engine on attention maps with known block masses ------------------------------------------
def known_call():
    """Ten tokens in blocks of 4 (key blocks of 4, 4 and 2 keys), every query alike; head 0: exp(score) 1, 2 and 6
    per key of the three blocks, so masses 4/24, 8/24, 12/24 = [1/6, 1/3, 1/2]; head 1: uniform, [0.4, 0.4, 0.2]."""
    per_key = torch.tensor([1.0] * 4 + [2.0] * 4 + [6.0] * 2)
    k = torch.stack([per_key.log(), torch.zeros(10)])[None, :, :, None]  # (1, 2, 10, 1)
    q = torch.ones(1, 2, 10, 1)
    return AttentionCall(q, k, torch.randn(1, 2, 10, 4), scale=1.0)


@pytest.mark.parametrize(
    "coverage, head0, head1",
    [  # the diagonal block is forced: row 0 keeps block 0, row 1 block 1, row 2 block 2 first
        (0.5, [[0, 2], [1, 2], [2]], [[0, 1], [1, 0], [2, 0]]),
        (0.6, [[0, 2], [1, 2], [2, 1]], [[0, 1], [1, 0], [2, 0]]),
        (0.9, [[0, 2, 1], [1, 2, 0], [2, 1, 0]], [[0, 1, 2], [1, 0, 2], [2, 0, 1]]),
    ],
)
def test_engine_selects_by_exact_softmax_mass(coverage, head0, head1):
    cfg = unbottle.SparseAttentionConfig(coverage=coverage, block_size=4, pattern="cached")
    store = PatternStore()
    DiTPatterns("layer", cfg, store, TokenLayout()).block_mask(known_call(), LayerState(), None)
    ((key, (indices, counts)),) = store.patterns.items()
    assert kept(indices, counts) == [[head0, head1]]
    n_kept = sum(len(row) for row in head0 + head1)
    assert store.densities[key] == pytest.approx(n_kept / (2 * 3 * 3), abs=1e-12)


# -- the realized density -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        unbottle.SparseAttentionConfig(coverage=0.6, block_size=8, full_steps=1),
        unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1),
    ],
)
def test_realized_density_counts_the_kept_tiles(cfg):
    pipe = tiny_flux_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        assert handle.realized_density is None and handle.pattern_densities == {}
        pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), **FLUX_CALL)
        expected = counted_density(handle.store)
        assert len(expected) == 2  # the tiny Flux's two sparse layers
        assert handle.pattern_densities == pytest.approx(expected, abs=1e-12)
        assert handle.realized_density == pytest.approx(sum(expected.values()) / 2, abs=1e-12)
        assert 0 < handle.realized_density < 1
    finally:
        unbottle.disable_sparse_attention(pipe)


def test_pipeline_view_reports_every_denoisers_layers():
    cfg = unbottle.SparseAttentionConfig(density=0.5, block_size=4)
    stores = {"transformer": PatternStore(), "transformer_2": PatternStore()}
    counts = {"transformer": [[[1, 2]]], "transformer_2": [[[2, 2]], [[1, 1]]]}  # (1, H, 2) for 8 tokens in 2 blocks
    for component, store in stores.items():
        c = torch.tensor(counts[component], dtype=torch.int32).view(1, -1, 2)
        store.patterns[("blocks.0", 8, 4, 1, 1, 8, 0, True)] = (torch.zeros(1, c.shape[1], 2, 2).int(), c)
    handles = {c: SparseAttentionHandle(torch.nn.Identity(), cfg, s, {}) for c, s in stores.items()}
    view = PipelineSparseAttention(handles, cfg)
    assert view.pattern_densities == {"transformer.blocks.0": 3 / 4, "transformer_2.blocks.0": 6 / 8}
    assert view.realized_density == 3 / 4


# -- pattern files --------------------------------------------------------------------------------------------------
COVERAGE_CFG = unbottle.SparseAttentionConfig(coverage=0.6, block_size=8, full_steps=1)
PLAIN_CFG = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1)


def flux_latents(pipe):
    """Fixed initial latents, so that every prompt of a calibration starts from the same noise."""
    channels = pipe.transformer.config.in_channels // 4
    generator = torch.Generator().manual_seed(0)
    return pipe.prepare_latents(1, channels, 32, 32, torch.float32, "cpu", generator)[0]


def calibrated(tmp_path, prompts, name, cfg=COVERAGE_CFG):
    path, pipe = tmp_path / name, tiny_flux_pipeline()
    density = unbottle.calibrate_sparse_attention(
        pipe, prompts, cfg.coverage, path=path, config=cfg, latents=flux_latents(pipe), **FLUX_CALL
    )
    return path, density


def loaded(path, cfg=COVERAGE_CFG):
    """(patterns, realized density) of `path` loaded into a fresh tiny Flux with `cfg`."""
    pipe = tiny_flux_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        assert unbottle.load_head_patterns(pipe, path) == len(handle.store.patterns) == 2
        return dict(handle.store.patterns), handle.realized_density, counted_density(handle.store)
    finally:
        unbottle.disable_sparse_attention(pipe)


def metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Calibrated files for each prompt alone and for both, and a plain-density file."""
    tmp = tmp_path_factory.mktemp("coverage")
    out = {name: calibrated(tmp, prompts, f"{name}.safetensors")
           for name, prompts in (("a", PROMPTS[:1]), ("b", PROMPTS[1:]), ("ab", PROMPTS))}  # fmt: skip
    pipe = tiny_flux_pipeline()
    unbottle.enable_sparse_attention(pipe, PLAIN_CFG)
    try:
        pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), **FLUX_CALL)
        out["plain"] = unbottle.save_head_patterns(pipe, tmp / "plain.safetensors"), None
    finally:
        unbottle.disable_sparse_attention(pipe)
    return out


def test_file_carries_coverage_and_realized_density_and_round_trips(files):
    path, density = files["ab"]
    meta = metadata(path)
    assert meta["coverage"] == "0.6" and "density" not in meta
    patterns, reported, counted = loaded(path)
    assert float(meta["realized_density"]) == pytest.approx(sum(counted.values()) / 2, abs=1e-12)
    assert reported == pytest.approx(density, abs=1e-12) and density == pytest.approx(float(meta["realized_density"]))
    tensors = load(path.read_bytes())
    for key, (indices, counts) in patterns.items():
        name = "|".join(str(part) for part in key)
        assert torch.equal(indices, tensors[f"{name}|indices"]) and torch.equal(counts, tensors[f"{name}|counts"])
    plain = metadata(files["plain"][0])
    assert plain["coverage"] == "none" and plain["density"] == "0.3" and 0 < float(plain["realized_density"]) <= 1


def test_several_prompts_keep_the_union_of_their_tiles(files):
    (a, _, _), (b, _, _), (ab, _, _) = (loaded(files[name][0]) for name in ("a", "b", "ab"))
    assert a.keys() == b.keys() == ab.keys()
    grew = False
    for key in ab:
        union = [[[x | y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(ha, hb, strict=True)]
                 for ha, hb in zip(kept_sets(*a[key]), kept_sets(*b[key]), strict=True)]  # fmt: skip
        assert kept_sets(*ab[key]) == union
        grew |= union != kept_sets(*a[key])
    assert grew  # the second prompt added tiles: the union is not just the first prompt's pattern
    assert files["ab"][1] > max(files["a"][1], files["b"][1]) - 1e-12


@pytest.mark.parametrize(
    "cfg, found, wanted",
    [
        (unbottle.SparseAttentionConfig(coverage=0.9, block_size=8, full_steps=1), "'0.6'", "'0.9'"),
        (PLAIN_CFG, "'0.6'", "'none'"),
    ],
)
def test_coverage_mismatch_is_refused(files, cfg, found, wanted):
    path = files["ab"][0]
    pipe = tiny_flux_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    try:
        with pytest.raises(ValueError) as caught:
            unbottle.load_head_patterns(pipe, path)
        assert f"made for coverage={found}, but this model/config has coverage={wanted}" in str(caught.value)
        assert str(path) in str(caught.value) and handle.store.patterns == {}
    finally:
        unbottle.disable_sparse_attention(pipe)


def rewritten(tmp_path, source, drop=(), **changes):
    """`source` as a format-2 file (no checksum) with metadata keys dropped or changed."""
    meta = {k: v for k, v in metadata(source).items() if k not in ("checksum", *drop)} | changes | {"format": "2"}
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(save(load(source.read_bytes()), metadata=meta))
    return path


def test_files_without_the_calibration_keys_load_without_a_coverage(files, tmp_path):
    old = rewritten(tmp_path, files["plain"][0], drop=("coverage", "realized_density"))
    patterns, reported, counted = loaded(old, PLAIN_CFG)
    assert reported == pytest.approx(sum(counted.values()) / 2, abs=1e-12)
    refused = "made for coverage='none', but this model/config has coverage='0.6'"
    with pytest.raises(ValueError, match=re.escape(refused)):
        loaded(old, COVERAGE_CFG)


@pytest.mark.parametrize(
    "changes, drop, match",
    [
        (dict(realized_density="nan"), (), "has realized_density 'nan', allowed a finite number in (0, 1]"),
        (dict(realized_density="1.5"), (), "has realized_density '1.5', allowed a finite number in (0, 1]"),
        (dict(realized_density="0"), (), "has realized_density '0', allowed a finite number in (0, 1]"),
        (dict(realized_density="dense"), (), "has realized_density 'dense', allowed a finite number in (0, 1]"),
        (dict(realized_density="0.01"), (), "records realized_density 0.01, but its patterns keep"),
        ({}, ("realized_density",), "records a coverage but no realized_density"),
    ],
)
def test_realized_density_read_back_is_validated(files, tmp_path, changes, drop, match):
    path = rewritten(tmp_path, files["ab"][0], drop=drop, **changes)
    with pytest.raises(ValueError, match=re.escape(match)):
        loaded(path)


# -- config validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, message",
    [
        (0, "must be a finite number in (0, 1], got 0"),
        (0.0, "must be a finite number in (0, 1], got 0.0"),
        (1.5, "must be a finite number in (0, 1], got 1.5"),
        (-0.1, "must be a finite number in (0, 1], got -0.1"),
        (float("nan"), "must be a finite number in (0, 1], got nan"),
        (float("inf"), "must be a finite number in (0, 1], got inf"),
        ("0.9", "must be None or a number in (0, 1], got '0.9' (str)"),
        (True, "must be None or a number in (0, 1], got True (bool)"),
    ],
)
def test_bad_coverage_is_rejected_by_name(value, message):
    with pytest.raises(ValueError, match=re.escape(f"SparseAttentionConfig.coverage {message}")):
        unbottle.SparseAttentionConfig(coverage=value)


@pytest.mark.parametrize("pattern", ["window", "dynamic"])
def test_coverage_needs_the_cached_pattern(pattern):
    with pytest.raises(ValueError, match=re.escape(f"""needs pattern='cached' (only "cached" computes exact """
                                                   f"""softmax mass), got pattern={pattern!r}""")):  # fmt: skip
        unbottle.SparseAttentionConfig(coverage=0.9, pattern=pattern)
    assert unbottle.SparseAttentionConfig(coverage=1, pattern="cached").coverage == 1


def test_coverage_is_refused_on_a_transformers_model():
    model, _ = language_fixtures.tiny_llada2()
    with pytest.raises(ValueError, match=r"coverage=0\.9 applies to diffusers denoisers.*GemmaForCausalLM"):
        unbottle.enable_sparse_attention(model, unbottle.SparseAttentionConfig(coverage=0.9, block_size=8))
    assert not hasattr(model, "_unbottle_sparse")


NO_RESHAPE = unbottle.SparseAttentionConfig(coverage=0.6, block_size=8, full_steps=1, reshape=False)


def test_calibration_without_a_sparse_step_says_so(tmp_path):
    """Without reshape the pattern comes at the first sparse step: one dense step of one makes none."""
    path = tmp_path / "never.safetensors"
    refused = r"made no pattern: every step was dense \(num_inference_steps=1, full_steps=1\)"
    with pytest.raises(ValueError, match=refused):
        unbottle.calibrate_sparse_attention(tiny_flux_pipeline(), PROMPTS[:1], 0.6, path=path, config=NO_RESHAPE,
                                            **{**FLUX_CALL, "num_inference_steps": 1})  # fmt: skip
    assert not path.exists()


# -- the command line -----------------------------------------------------------------------------------------------
def test_cli_calibrate_writes_a_loadable_file_on_the_embedded_model(tmp_path, capsys):
    from unbottle.defaults import load_default

    out = tmp_path / "sub" / "patterns.safetensors"
    assert main(["calibrate", PROMPTS[0], "--steps", "2", "--coverage", "0.9", "-q", "-o", str(out)]) == 0
    printed = re.fullmatch(r"realized density (\S+) \(coverage 0\.9\)\n", capsys.readouterr().out)
    assert printed, "stdout"
    meta = metadata(out)
    assert meta["coverage"] == "0.9" and meta["block_size"] == "16"
    pipe = load_default("image")
    handle = unbottle.enable_sparse_attention(pipe, unbottle.SparseAttentionConfig(coverage=0.9, block_size=16))
    try:
        assert unbottle.load_head_patterns(pipe, out) == len(handle.layer_hooks)
        expected = counted_density(handle.store)
        assert handle.realized_density == pytest.approx(sum(expected.values()) / len(expected), abs=1e-12)
        assert f"{handle.realized_density:.4f}" == printed.group(1)
        assert float(meta["realized_density"]) == pytest.approx(handle.realized_density, abs=1e-12)
    finally:
        unbottle.disable_sparse_attention(pipe)


@pytest.mark.parametrize("value", ["2", "0", "nan", "most"])
def test_cli_calibrate_rejects_a_bad_coverage(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["calibrate", PROMPTS[0], "--coverage", value, "-o", str(tmp_path / "p.safetensors")])
    assert e.value.code == 2
    assert "--coverage must be a softmax mass in (0, 1]" in capsys.readouterr().err


def test_cli_calibrate_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["calibrate", PROMPTS[0], "--steps", "0", "-o", str(tmp_path / "p.safetensors")])
    assert e.value.code == 2 and "--steps must be an integer in [1, 1000], got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["calibrate", PROMPTS[0], "--block-size", "5000", "-o", str(tmp_path / "p.safetensors")])
    assert e.value.code == 2 and "--block-size must be an integer in [1, 4096], got 5000" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["calibrate", PROMPTS[0]])
    assert e.value.code == 2 and "-o/--output" in capsys.readouterr().err
    assert main(["calibrate", PROMPTS[0], "-o", str(tmp_path / "p.pt")]) == 2
    assert "must end in one of .safetensors" in capsys.readouterr().err
    assert main(["calibrate", " ", "-o", str(tmp_path / "p.safetensors")]) == 2
    assert "PROMPT must not be empty" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
