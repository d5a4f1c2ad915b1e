"""Head-pattern files (SparseD): the round trip, the ties to model and config, and every way a file can be wrong —
each refused whole with a ValueError naming the file, before anything reaches the pattern store."""

import hashlib
import json
import math
import random
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, save

import unbottle
from unbottle.attention_processors import engine
from unbottle.testing import tiny_flux_pipeline, tiny_pixart_pipeline, tiny_sd3_pipeline

PROMPT = "a red circle left of a blue square"
CFG = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, refresh_every=2)
LAYERS = ("transformer_blocks.0.attn", "single_transformer_blocks.0.attn")  # the tiny Flux's sparse layers
HEADS = 2  # its attention heads


def run(pipe, steps=3):
    return pipe(
        PROMPT, num_inference_steps=steps, height=32, width=32, output_type="np", max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


def checksum(tensors, metadata):
    """The documented format-3 checksum, written out here independently of the module."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted([k, v] for k, v in metadata.items() if k != "checksum")).encode() + b"\n")
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(json.dumps([name, str(t.dtype)[len("torch.") :], list(t.shape)]).encode() + b"\n")
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_bytes(tensors, metadata, fmt="3", sign=True):
    """A safetensors file of these tensors and metadata as format `fmt`; format 3 carries a matching checksum."""
    meta = {k: v for k, v in metadata.items() if k != "checksum"} | {"format": fmt}
    if fmt == "3" and sign:
        meta["checksum"] = checksum(tensors, meta)
    return save({name: t.contiguous() for name, t in tensors.items()}, metadata=meta)


def parts(name):
    """(layer, tokens, block size, kind) of a tensor name."""
    fields = name.split("|")
    return fields[0], int(fields[1]), int(fields[2]), fields[-1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pattern file of the tiny Flux after one generation, its bytes, tensors, metadata, patterns and output."""
    pipe = tiny_flux_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, CFG)
    try:
        out = run(pipe)
        path = unbottle.save_head_patterns(pipe, tmp_path_factory.mktemp("patterns") / "sub" / "flux.safetensors")
        patterns = {key: (i.clone(), c.clone()) for key, (i, c) in handle.store.patterns.items()}
    finally:
        unbottle.disable_sparse_attention(pipe)
    data = path.read_bytes()
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    return dict(path=path, data=data, tensors=load(data), metadata=metadata, patterns=patterns, out=out)


@pytest.fixture(scope="module")
def enabled():
    pipe = tiny_flux_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, CFG)
    yield pipe, handle
    unbottle.disable_sparse_attention(pipe)


@pytest.fixture
def target(enabled, saved):
    """The enabled tiny Flux, its store holding other patterns under the file's keys, one more key and block masks."""
    pipe, handle = enabled
    sentinel = {key: (i.flip(-1).contiguous(), c.clone()) for key, (i, c) in saved["patterns"].items()}
    extra_key = (LAYERS[0], 64, 8, 1, 8, 8, 0, True)
    sentinel[extra_key] = next(iter(sentinel.values()))
    masks = {key: object() for key in sentinel}
    handle.store.patterns.clear()
    handle.store.patterns.update(sentinel)
    handle.store.block_masks.clear()
    handle.store.block_masks.update(masks)
    return pipe, handle, dict(sentinel), dict(masks)


def assert_store_is(handle, patterns, masks):
    assert handle.store.patterns.keys() == patterns.keys()
    for key, (indices, counts) in patterns.items():
        assert handle.store.patterns[key][0] is indices and handle.store.patterns[key][1] is counts
    assert handle.store.block_masks.keys() == masks.keys()
    assert all(handle.store.block_masks[key] is mask for key, mask in masks.items())


def assert_refused(target, path, *matches):
    """Loading `path` raises a ValueError naming the file and each of `matches`; the store is untouched."""
    pipe, handle, sentinel, masks = target
    with pytest.raises(ValueError) as caught:
        unbottle.load_head_patterns(pipe, path)
    message = str(caught.value)
    assert f"head patterns file {str(path)!r}" in message, message
    for match in matches:
        assert re.search(match, message), (match, message)
    assert_store_is(handle, sentinel, masks)
    return message


# -- round trip ------------------------------------------------------------------------------------------------------
def test_round_trip_gives_identical_patterns_and_output(saved, monkeypatch):
    importance = []
    original = engine.exact_block_importance
    monkeypatch.setattr(engine, "exact_block_importance", lambda *a, **k: importance.append(1) or original(*a, **k))
    pipe = tiny_flux_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, CFG)
    try:
        assert unbottle.load_head_patterns(pipe, saved["path"]) == len(saved["patterns"]) == len(LAYERS)
        assert handle.store.patterns.keys() == saved["patterns"].keys()
        for key, pattern in saved["patterns"].items():
            for loaded, original in zip(handle.store.patterns[key], pattern, strict=True):
                assert loaded.dtype == original.dtype == torch.int32 and torch.equal(loaded, original)
        out = run(pipe)
        assert handle.pattern_computations == {} and importance == []  # the loaded patterns ran, none was made
    finally:
        unbottle.disable_sparse_attention(pipe)
    np.testing.assert_array_equal(out, saved["out"])
    with pytest.raises(RuntimeError, match="not enabled"):
        unbottle.load_head_patterns(pipe, saved["path"])


def test_saved_file_names_shapes_and_checksum(saved):
    meta = saved["metadata"]
    assert meta["format"] == "3"
    assert (meta["model_class"], meta["pattern"], meta["density"], meta["block_size"]) == (
        "FluxTransformer2DModel", "cached", "0.3", "8"
    )  # fmt: skip
    assert meta["checksum"] == checksum(saved["tensors"], meta)
    assert not list(saved["path"].parent.glob("*.partial"))
    for name, t in saved["tensors"].items():
        layer, tokens, block, kind = parts(name)
        assert layer in LAYERS and t.dtype == torch.int32
        n_blocks = math.ceil(tokens / block)
        assert t.shape[:3] == (1, HEADS, n_blocks)  # cached: one pattern per head, shared by the batch


def test_window_patterns_round_trip_with_one_head_row(tmp_path):
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, pattern="window")
    first, second = tiny_flux_pipeline(), tiny_flux_pipeline()
    handle, handle2 = unbottle.enable_sparse_attention(first, cfg), unbottle.enable_sparse_attention(second, cfg)
    try:
        run(first, steps=2)
        path = unbottle.save_head_patterns(first, tmp_path / "window.safetensors")
        assert unbottle.load_head_patterns(second, path) == len(LAYERS)
        for key, (indices, counts) in handle.store.patterns.items():
            assert indices.shape[:2] == (1, 1)  # one pattern broadcast over batch and heads
            assert torch.equal(handle2.store.patterns[key][0], indices)
            assert torch.equal(handle2.store.patterns[key][1], counts)
    finally:
        unbottle.disable_sparse_attention(first)
        unbottle.disable_sparse_attention(second)


def test_save_refuses_a_directory(enabled, saved, tmp_path):
    pipe, handle = enabled
    handle.store.patterns.update(saved["patterns"])
    with pytest.raises(ValueError, match=re.escape(f"{str(tmp_path)!r} is a directory")):
        unbottle.save_head_patterns(pipe, tmp_path)


# -- ties to the model and config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [dict(block_size=4), dict(density=0.5), dict(pattern="window")])
def test_pattern_file_rejects_other_config(saved, change):
    pipe = tiny_flux_pipeline()
    cfg = unbottle.SparseAttentionConfig(**{"density": 0.3, "block_size": 8, "full_steps": 1, **change})
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    field = next(iter(change))
    try:
        with pytest.raises(ValueError, match=rf"{field}={saved['metadata'][field]!r}.*{field}={str(change[field])!r}"):
            unbottle.load_head_patterns(pipe, saved["path"])
        assert handle.store.patterns == {}
    finally:
        unbottle.disable_sparse_attention(pipe)


def test_pattern_file_rejects_other_model(saved):
    from diffusers import FluxTransformer2DModel

    pipe = tiny_sd3_pipeline()  # another family
    unbottle.enable_sparse_attention(pipe, CFG)
    try:
        with pytest.raises(ValueError, match="model_class='FluxTransformer2DModel'"):
            unbottle.load_head_patterns(pipe, saved["path"])
    finally:
        unbottle.disable_sparse_attention(pipe)
    reference = tiny_flux_pipeline().transformer  # same family, another architecture config
    other = FluxTransformer2DModel.from_config({**reference.config, "num_single_layers": 2})
    unbottle.enable_sparse_attention(other, CFG)
    try:
        with pytest.raises(ValueError, match="config_hash"):
            unbottle.load_head_patterns(other, saved["path"])
    finally:
        unbottle.disable_sparse_attention(other)


def test_dynamic_patterns_cannot_be_saved(tmp_path):
    pipe = tiny_pixart_pipeline()
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=8, full_steps=1, pattern="dynamic")
    unbottle.enable_sparse_attention(pipe, cfg)
    try:
        pipe(PROMPT, num_inference_steps=2, height=32, width=32, output_type="np", use_resolution_binning=False)
        with pytest.raises(RuntimeError, match="no head patterns"):
            unbottle.save_head_patterns(pipe, tmp_path / "never-written.safetensors")
        assert not (tmp_path / "never-written.safetensors").exists()
    finally:
        unbottle.disable_sparse_attention(pipe)


def test_save_requires_enabled_model(tmp_path):
    with pytest.raises(RuntimeError, match="not enabled"):
        unbottle.save_head_patterns(tiny_flux_pipeline(), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# -- crafted files ---------------------------------------------------------------------------------------------------
def _names(tensors, kind="indices"):
    return sorted(name for name in tensors if name.endswith(f"|{kind}"))


def _set(tensors, name, at, value):
    t = tensors[name].clone()
    t[at] = value
    tensors[name] = t


def _kept_row(tensors, name, least=2):
    """(b, h, q) of the first row of `name` keeping at least `least` blocks."""
    counts = tensors[name.replace("|indices", "|counts")]
    return tuple(int(i) for i in (counts >= least).nonzero()[0])


def _index(value):
    def craft(t):
        _set(t, _names(t)[0], (0, 1, 2, 0), value)
        return rf"{re.escape(repr(_names(t)[0]))} holds block index {value} at \(0, 1, 2, 0\), allowed 0\.\.33"

    return craft


def _reshape(shape):
    def craft(t):
        name = _names(t)[0]
        t[name] = t[name].reshape(shape)
        return rf"{re.escape(repr(name))} has shape {re.escape(str(shape))}, allowed"

    return craft


def _drop(kind):
    def craft(t):
        name = _names(t, kind)[0]
        del t[name]
        return rf"without its {re.escape(repr(name))}"

    return craft


def _extra(name):
    def craft(t):
        t[name] = torch.zeros(3, dtype=torch.int32)
        return rf"holds tensor {re.escape(repr(name))}, allowed only"

    return craft


def _dtype(kind, dtype):
    def craft(t):
        name = _names(t, kind)[0]
        t[name] = t[name].to(dtype)
        return rf"{re.escape(repr(name))} has dtype {str(dtype)[6:]}, allowed int32"

    return craft


def _heads(h):
    def craft(t):
        name = _names(t)[0]
        counts_name = name.replace("|indices", "|counts")
        t[name] = t[name][:, :1].expand(1, h, *t[name].shape[2:]).contiguous()
        t[counts_name] = t[counts_name][:, :1].expand(1, h, -1).contiguous()
        return rf"shape \(1, {h}, 34, 34\), allowed \(1, 1 or 2, 34, 1\.\.34\)"

    return craft


def _count(value):
    def craft(t):
        name = _names(t, "counts")[0]
        _set(t, name, (0, 1, 3), value)
        return rf"{re.escape(repr(name))} holds count {value} at \(0, 1, 3\), allowed 1\.\.34"

    return craft


def _duplicate(t):
    name = _names(t)[0]
    b, h, q = _kept_row(t, name)
    _set(t, name, (b, h, q, 1), int(t[name][b, h, q, 0]))
    return rf"{re.escape(repr(name))} keeps block {int(t[name][b, h, q, 0])} twice in row \({b}, {h}, {q}\)"


def _rename(field, value):
    """Give every tensor of the first pattern another key field: layer, a number, or the text_first flag."""

    def craft(t):
        prefix = _names(t)[0].rsplit("|", 1)[0]
        fields = prefix.split("|")
        position = {"layer": 0, "tokens": 1, "block_size": 2, "frames": 3, "text_len": 6, "text_first": 7}[field]
        fields[position] = value
        new = "|".join(fields)
        for kind in ("indices", "counts"):
            t[f"{new}|{kind}"] = t.pop(f"{prefix}|{kind}")
        return re.escape(repr(f"{new}|indices"))

    return craft


def _short_key(t):
    prefix = _names(t)[0].rsplit("|", 1)[0]
    new = prefix.rsplit("|", 1)[0]  # text_first left out
    for kind in ("indices", "counts"):
        t[f"{new}|{kind}"] = t.pop(f"{prefix}|{kind}")
    return r"is not named 'layer\|tokens\|block_size"


CRAFTED = {
    "index-high": _index(10**6),
    "index-negative": _index(-5),
    "index-one-past-last": _index(34),
    "indices-reshaped-batch": _reshape((2, 1, 34, 34)),
    "indices-reshaped-rows": _reshape((1, 2, 17, 68)),
    "indices-flattened": _reshape((1, 2, 34 * 34)),
    "counts-dropped": _drop("counts"),
    "indices-dropped": _drop("indices"),
    "extra-tensor": _extra("extra"),
    "extra-kind": _extra(f"{LAYERS[0]}|272|8|1|16|16|16|True|weights"),
    "indices-int64": _dtype("indices", torch.int64),
    "counts-float": _dtype("counts", torch.float32),
    "indices-uint8": _dtype("indices", torch.uint8),
    "three-heads": _heads(3),
    "count-above-width": _count(35),
    "count-zero": _count(0),
    "count-negative": _count(-1),
    "duplicate-block": _duplicate,
    "unknown-layer": _rename("layer", "transformer_blocks.9.attn"),
    "tokens-not-decimal": _rename("tokens", "272.0"),
    "tokens-signed": _rename("tokens", "+272"),
    "tokens-leading-zero": _rename("tokens", "0272"),
    "tokens-off-grid": _rename("tokens", "273"),
    "text-len-off-grid": _rename("text_len", "15"),
    "frames-zero": _rename("frames", "0"),
    "other-block-size": _rename("block_size", "4"),
    "text-first-lowercase": _rename("text_first", "true"),
    "key-too-short": _short_key,
}
EXPECTED_FIELD = {
    "unknown-layer": r"names layer 'transformer_blocks\.9\.attn', which is no sparse layer",
    "tokens-not-decimal": r"tokens '272\.0', allowed a decimal integer",
    "tokens-signed": r"tokens '\+272', allowed a decimal integer",
    "tokens-leading-zero": r"tokens '0272', allowed a decimal integer",
    "tokens-off-grid": r"tokens 273, allowed frames·height·width \+ text_len = 1·16·16 \+ 16 = 272",
    "text-len-off-grid": r"tokens 272, allowed frames·height·width \+ text_len = 1·16·16 \+ 15 = 271",
    "frames-zero": r"tokens 272, allowed .* = 0·16·16 \+ 16 = 16",
    "other-block-size": r"block_size 4, but this config has block_size=8",
    "text-first-lowercase": r"text_first 'true', allowed 'True' or 'False'",
}


@pytest.mark.parametrize("fmt", ["3", "2"])
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_file_is_refused_whole(case, fmt, saved, target, tmp_path):
    # format 3 with a correct checksum (so the content checks, not the checksum, must catch it) and format 2
    tensors = dict(saved["tensors"])
    match = CRAFTED[case](tensors)
    path = tmp_path / "p.safetensors"
    path.write_bytes(file_bytes(tensors, saved["metadata"], fmt))
    assert_refused(target, path, match, *[EXPECTED_FIELD[case]] if case in EXPECTED_FIELD else [])


def test_padding_past_the_counts_is_free(saved, target, tmp_path):
    tensors = dict(saved["tensors"])
    name = _names(tensors)[0]
    b, h, q = (int(i) for i in (tensors[name.replace("|indices", "|counts")] < 34).nonzero()[0])
    _set(tensors, name, (b, h, q, 33), -1)  # the last entry of a row that keeps fewer than all 34 blocks
    path = tmp_path / "p.safetensors"
    path.write_bytes(file_bytes(tensors, saved["metadata"]))
    pipe, handle, *_ = target
    assert unbottle.load_head_patterns(pipe, path) == len(LAYERS)
    for key, (indices, _) in handle.store.patterns.items():
        if key[0] == parts(name)[0] and key[1] == 272:
            assert torch.equal(indices, tensors[name])


def test_format_two_without_checksum_loads_identical_patterns(saved, target, tmp_path):
    path = tmp_path / "v2.safetensors"
    path.write_bytes(file_bytes(saved["tensors"], saved["metadata"], fmt="2"))
    pipe, handle, sentinel, _ = target
    assert unbottle.load_head_patterns(pipe, path) == len(LAYERS)
    for key, (indices, counts) in saved["patterns"].items():
        assert torch.equal(handle.store.patterns[key][0], indices)
        assert torch.equal(handle.store.patterns[key][1], counts)
    assert handle.store.block_masks.keys() == sentinel.keys() - saved["patterns"].keys()  # stale masks dropped


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("checksum-of-other-content", r"checksum does not match its contents"),
        ("checksum-missing", r"format '3' needs a sha256 checksum \(64 hex digits\), found None"),
        ("checksum-not-hex", r"format '3' needs a sha256 checksum \(64 hex digits\), found 'nope'"),
        ("format-two-with-checksum", r"format '2' files carry no checksum"),
        ("format-four", r"format '4' is not one this version reads \(2, 3\)"),
        ("format-missing", r"format None is not one this version reads"),
        ("extra-metadata", r"checksum does not match its contents"),
    ],
)
def test_metadata_and_checksum_are_checked(case, match, saved, target, tmp_path):
    tensors, meta = saved["tensors"], dict(saved["metadata"])
    if case == "checksum-of-other-content":
        other = dict(tensors)
        _set(other, _names(other)[0], (0, 0, 0, 0), 1)
        meta["checksum"] = checksum(other, meta)
    elif case == "checksum-missing":
        del meta["checksum"]
    elif case == "checksum-not-hex":
        meta["checksum"] = "nope"
    elif case == "format-two-with-checksum":
        meta["format"] = "2"
    elif case == "format-four":
        meta["format"] = "4"
    elif case == "format-missing":
        del meta["format"]
    else:
        meta["note"] = "added after saving"
    path = tmp_path / "p.safetensors"
    path.write_bytes(save(dict(tensors), metadata=meta))
    assert_refused(target, path, match)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("garbage", r"not a valid safetensors file"),
        ("empty", r"not a valid safetensors file \(0 bytes long"),
        ("text", r"not a valid safetensors file"),
        ("truncated", r"not a valid safetensors file \(its tensor entries do not match its data\)"),
        ("header-cut", r"not a valid safetensors file \(its header claims"),
        ("nested-header", r"not a valid safetensors file \(its header is not valid JSON\)"),
        ("no-metadata", r"has no head-pattern metadata; it was not written by unbottle\.save_head_patterns"),
        ("directory", r"is a directory, not a safetensors file"),
    ],
)
def test_unreadable_files_are_value_errors(case, match, saved, target, tmp_path):
    path = tmp_path / "p.safetensors"
    if case == "directory":
        path.mkdir()
    else:
        data = {
            "garbage": bytes(random.Random(0).randrange(256) for _ in range(4096)), "empty": b"",
            "text": b"indices,counts\n1,2\n", "truncated": saved["data"][: len(saved["data"]) // 2],
            "header-cut": saved["data"][:40], "no-metadata": save({"x": torch.zeros(2)}),
            "nested-header": (10**5).to_bytes(8, "little") + b"[" * 10**5,
        }[case]  # fmt: skip
        path.write_bytes(data)
    message = assert_refused(target, path, match)
    assert "Error" not in message and "deserializ" not in message  # no library internals


def test_missing_file_is_file_not_found(target, tmp_path):
    pipe, handle, sentinel, masks = target
    path = tmp_path / "nowhere" / "p.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(f"head patterns file {str(path)!r} does not exist")):
        unbottle.load_head_patterns(pipe, path)
    assert_store_is(handle, sentinel, masks)


# -- property: random corruptions load exactly or are refused whole -------------------------------------------------
def _corrupt(rng, saved):
    """(kind, file bytes): one random corruption of the saved file. Kinds "flip-data" (tensor bytes changed), "drop",
    "reshape", "range" must be refused; "flip" (header bytes too), "cut", "meta" may also leave the patterns intact
    (a header space flipped to other whitespace, an added metadata entry with a fresh checksum)."""
    tensors, meta = dict(saved["tensors"]), dict(saved["metadata"])
    kind = rng.choice(["flip", "flip", "cut", "drop", "reshape", "range", "meta"])
    sign = rng.random() < 0.5  # a fresh, correct checksum: the content checks alone must catch it
    if kind == "flip":
        data = bytearray(saved["data"])
        start = 8 + int.from_bytes(data[:8], "little")  # the tensor bytes begin after the header
        positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 3))]
        for at in positions:
            data[at] ^= rng.randint(1, 255)
        return ("flip-data" if min(positions) >= start else "flip"), bytes(data)
    if kind == "cut":
        data = saved["data"]
        cut = rng.randrange(len(data))
        tail = bytes(rng.randrange(256) for _ in range(cut % 64 + 1))
        return kind, data[:cut] if rng.random() < 0.5 else data + tail
    name = rng.choice(sorted(tensors))
    t = tensors[name]
    if kind == "drop":
        del tensors[name]
    elif kind == "reshape":
        shapes = [(t.numel(),), (1, *t.shape), tuple(reversed(t.shape)), (*t.shape[:-1], 1, t.shape[-1])]
        if t.shape[-1] % 2 == 0:
            shapes.append((*t.shape[:-1], 2, t.shape[-1] // 2))
        tensors[name] = t.reshape(rng.choice([s for s in shapes if s != tuple(t.shape)]))
    elif kind == "range":
        n_blocks = math.ceil(parts(name)[1] / parts(name)[2])
        if name.endswith("|counts"):
            at = tuple(rng.randrange(s) for s in t.shape)
            _set(tensors, name, at, rng.choice([0, -1, n_blocks + 1, 10**6, -(2**31)]))
        else:
            counts = tensors[name.replace("|indices", "|counts")]
            b, h, q = (rng.randrange(s) for s in counts.shape)
            slot = rng.randrange(int(counts[b, h, q]))  # a kept entry: padding may hold anything
            _set(tensors, name, (b, h, q, slot), rng.choice([-1, -5, n_blocks, n_blocks + 7, 10**6, 2**31 - 1]))
    else:  # meta
        key = rng.choice(sorted(meta) + ["new"])
        action = rng.choice(["drop", "edit", "append"])
        if action == "drop" and key in meta:
            del meta[key]
        else:
            meta[key] = meta.get(key, "") + "x" if action == "append" else rng.choice(["", "2", "4", "0.30", "x"])
        return kind, save(tensors, metadata=meta | ({"checksum": checksum(tensors, meta)} if sign else {}))
    return kind, file_bytes(tensors, meta, sign=sign)


def test_random_corruptions_load_exactly_or_are_refused_whole(saved, target, tmp_path):
    pipe, handle, sentinel, masks = target
    rng = random.Random(1234)
    path = tmp_path / "corrupt.safetensors"
    outcomes = {}
    for trial in range(200):
        kind, data = _corrupt(rng, saved)
        path.write_bytes(data)
        try:
            unbottle.load_head_patterns(pipe, path)
        except ValueError as e:
            assert f"head patterns file {str(path)!r}" in str(e), (trial, kind, str(e))
            assert_store_is(handle, sentinel, masks)
            outcomes.setdefault(kind, []).append("refused")
            continue
        assert kind in ("flip", "cut", "meta"), (trial, kind)  # changed tensor bytes or structure never load
        assert handle.store.patterns.keys() == sentinel.keys()
        for key, (indices, counts) in saved["patterns"].items():
            assert torch.equal(handle.store.patterns[key][0], indices), (trial, kind)
            assert torch.equal(handle.store.patterns[key][1], counts), (trial, kind)
        outcomes.setdefault(kind, []).append("loaded")
        handle.store.patterns.clear()
        handle.store.patterns.update(sentinel)
        handle.store.block_masks.clear()
        handle.store.block_masks.update(masks)
    assert set(outcomes) == {"flip", "flip-data", "cut", "drop", "reshape", "range", "meta"}  # every kind was tried
