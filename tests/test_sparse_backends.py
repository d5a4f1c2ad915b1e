"""The backend choice for block-sparse attention (backend_choice.py) and the kept-list conversion the packaged Hopper
kernels read (kernels/kept_lists.py), on the CPU: fake backends whose speed and correctness are set by the test, the
PyTorch reference as the "flex" route every other backend must agree with."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from unbottle.attention_processors import backend_choice
from unbottle.attention_processors.backend_choice import Backend, BackendChooser, agrees, density_band, mask_summary
from unbottle.attention_processors.block_mask import dense_block_mask, pattern_to_block_mask
from unbottle.attention_processors.kernels.flash4 import ascending_lists
from unbottle.attention_processors.kernels.kept_lists import packed_kept_lists
from unbottle.attention_processors.reference import block_sparse_attention_reference

# ---- kept lists ---------------------------------------------------------------------------------------------------


def _tiles_of(indices: torch.Tensor, counts: torch.Tensor, n_kv_blocks: int) -> torch.Tensor:
    """(B, H, nQ, nK) bool: the tiles the packed lists keep (each entry must be a distinct valid block)."""
    b, h, nq, width = indices.shape
    tiles = torch.zeros(b, h, nq, n_kv_blocks, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for qi in range(nq):
                kept = indices[bi, hi, qi, : counts[bi, hi, qi]].tolist()
                assert len(set(kept)) == len(kept) and all(0 <= x < n_kv_blocks for x in kept)
                tiles[bi, hi, qi, kept] = True
    return tiles


def test_partial_and_full_lists_merge_into_one_packed_list():
    # partial tiles under the no-op mask_mod are whole tiles too: partial entries first, then the full ones
    partial_counts = torch.tensor([[[1, 0, 2]]], dtype=torch.int32)  # (1, 1, nQ=3)
    partial = torch.tensor([[[[3, 0, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0]]]], dtype=torch.int32)
    full_counts = torch.tensor([[[2, 0, 1]]], dtype=torch.int32)
    full = torch.tensor([[[[0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 0]]]], dtype=torch.int32)
    mask = BlockMask.from_kv_blocks(partial_counts, partial, full_counts, full, BLOCK_SIZE=4, seq_lengths=(12, 16),
                                    compute_q_blocks=False)  # fmt: skip
    indices, counts = packed_kept_lists(mask, 2, 3)  # batch and heads expanded from 1
    assert indices.shape[:3] == (2, 3, 3) and counts.shape == (2, 3, 3) and indices.dtype == torch.int32
    assert counts[0, 0].tolist() == [3, 0, 3]
    assert indices[0, 0, 0, :3].tolist() == [3, 0, 1]  # the partial entry, then the two full ones
    assert indices[1, 2, 2, :3].tolist() == [0, 2, 3]
    expected = dense_block_mask(mask).expand(2, 3, 12, 16)
    tiles = _tiles_of(indices, counts, 4)
    assert torch.equal(tiles.repeat_interleave(4, 2).repeat_interleave(4, 3), expected)


def test_flash4_lists_ascend_within_each_rows_count():
    """FlashAttention-4 masks the key length only in the last listed tile: each row's kept tiles go in ascending
    order, the same set, zeros after the count, widened to the number of key tiles."""
    g = torch.Generator().manual_seed(3)
    b, h, nqb, n_kv, width = 2, 3, 5, 9, 6
    indices = torch.stack([torch.randperm(n_kv, generator=g)[:width] for _ in range(b * h * nqb)])
    indices = indices.view(b, h, nqb, width).int()  # (B, H, nQ, K) in score order
    counts = torch.randint(0, width + 1, (b, h, nqb), generator=g).int()
    out = ascending_lists(indices, counts, n_kv)
    assert out.shape == (b, h, nqb, n_kv) and out.dtype == torch.int32
    for row, count in zip(out.view(-1, n_kv), counts.view(-1).tolist(), strict=True):
        kept = row[:count].tolist()
        assert kept == sorted(kept) and not row[count:].any()
    for row, src, count in zip(out.view(-1, n_kv), indices.view(-1, width), counts.view(-1).tolist(), strict=True):
        assert sorted(row[:count].tolist()) == sorted(src[:count].tolist())


def test_engine_patterns_pack_unchanged():
    torch.manual_seed(0)
    indices = torch.stack([torch.randperm(5)[:3] for _ in range(2 * 4)]).view(1, 2, 4, 3).to(torch.int32)
    counts = torch.randint(0, 4, (1, 2, 4), dtype=torch.int32)
    mask = pattern_to_block_mask(indices, counts, 8, 30, 40)
    packed, packed_counts = packed_kept_lists(mask, 1, 2)
    assert torch.equal(packed_counts, counts)
    for qi in range(4):
        for hi in range(2):
            c = int(counts[0, hi, qi])
            assert packed[0, hi, qi, :c].tolist() == indices[0, hi, qi, :c].tolist()


def test_partial_tiles_under_a_real_mask_mod_are_refused():
    from torch.nn.attention.flex_attention import create_block_mask

    causal = create_block_mask(lambda b, h, q, k: q >= k, 1, 1, 300, 300, device="cpu", BLOCK_SIZE=128)
    with pytest.raises(ValueError, match="partial tiles under a mask_mod"):
        packed_kept_lists(causal, 1, 1)


# ---- the chooser --------------------------------------------------------------------------------------------------


class Fakes:
    """Backends on the CPU: each records its runs; `ms` sets what the timer reports for it."""

    def __init__(self, ms: dict[str, float], wrong: tuple[str, ...] = (), refuse: tuple[str, ...] = ()) -> None:
        self.ms, self.runs, self.last = ms, {name: 0 for name in ms}, None
        self.fail_from: dict[str, int] = {}
        self.wrong, self.refuse = wrong, refuse

    def backend(self, name: str) -> Backend:
        def run(q, k, v, block_mask, scale):
            self.runs[name] += 1
            self.last = name
            if name in self.fail_from and self.runs[name] > self.fail_from[name]:
                raise RuntimeError(f"{name} broke")
            out, lse = block_sparse_attention_reference(q, k, v, block_mask, scale=scale)
            return (out * 1.1, lse) if name in self.wrong else (out, lse)

        def refusal(q, k, v, block_mask):
            return "head size 7 is not taken" if name in self.refuse else None

        return Backend(name, run, refusal, lambda: True)

    def timer(self, fn) -> float:
        fn()
        return self.ms[self.last]

    def chooser(self, path) -> BackendChooser:
        return BackendChooser([self.backend(n) for n in self.ms], path, timer=self.timer,
                              device_name=lambda device: "test-gpu")  # fmt: skip


def _call(seed: int = 0, density_counts: int = 2, empty_row: bool = False):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    nb = 5
    indices = torch.stack([torch.randperm(nb) for _ in range(2 * nb)]).view(1, 2, nb, nb).to(torch.int32)
    counts = torch.full((1, 2, nb), density_counts, dtype=torch.int32)
    if empty_row:
        counts[0, 1, 3] = 0
    return q, k, v, pattern_to_block_mask(indices, counts, 8, 40, 40)


def test_fastest_correct_backend_is_chosen_and_remembered_on_disk(tmp_path):
    path = tmp_path / "cache" / "sparse-backends.json"
    fakes = Fakes({"flex": 3.0, "fast": 1.0, "slow": 5.0, "wrong": 0.5, "refuses": 0.1}, wrong=("wrong",),
                  refuse=("refuses",))  # fmt: skip
    chooser = fakes.chooser(path)
    q, k, v, mask = _call()
    out, lse = chooser.run(q, k, v, mask, None)
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
    assert chooser.measurements == 1
    entry = json.loads(path.read_text())["entries"][chooser.key(q, k, v, mask)]
    assert entry["order"] == ["fast", "flex", "slow"]  # the wrong one never timed, the refusing one never run
    assert "disagrees with flex" in entry["failed"]["wrong"]
    assert entry["failed"]["refuses"] == "head size 7 is not taken"
    assert fakes.runs["refuses"] == 0
    runs = dict(fakes.runs)
    chooser.run(q, k, v, mask, None)  # the same key: no measurement, the fastest runs
    assert chooser.measurements == 1 and fakes.runs["fast"] == runs["fast"] + 1 and fakes.runs["slow"] == runs["slow"]

    again = Fakes({"flex": 3.0, "fast": 1.0, "slow": 5.0, "wrong": 0.5, "refuses": 0.1}).chooser(path)  # a new process
    again.run(q, k, v, mask, None)
    assert again.measurements == 0


def test_new_versions_or_a_new_key_measure_again(tmp_path, monkeypatch):
    path = tmp_path / "sparse-backends.json"
    fakes = Fakes({"flex": 2.0, "fast": 1.0})
    q, k, v, mask = _call()
    fakes.chooser(path).run(q, k, v, mask, None)
    chooser = fakes.chooser(path)
    q2, k2, v2, denser = _call(density_counts=4)  # density 0.8 instead of 0.4: another band
    chooser.run(q2, k2, v2, denser, None)
    chooser.run(q, k, v, mask, None)
    assert chooser.measurements == 1
    monkeypatch.setattr(backend_choice, "package_versions", lambda: {"torch": "another"})
    fresh = fakes.chooser(path)
    fresh.run(q, k, v, mask, None)
    assert fresh.measurements == 1


def test_key_holds_density_band_and_empty_rows():
    chooser = Fakes({"flex": 1.0}).chooser(None)
    q, k, v, mask = _call(density_counts=2)
    _, _, _, empty = _call(density_counts=2, empty_row=True)
    key, key_empty = chooser.key(q, k, v, mask), chooser.key(q, k, v, empty)
    assert key != key_empty and key.endswith("|no empty rows") and key_empty.endswith("|empty rows")
    assert "|d≤0.5|" in key and "|B1|H2|40x40|D8/8|bs8x8|" in key
    density, has_empty = mask_summary(empty)
    assert density == pytest.approx((2 * 5 * 2 - 2) / (2 * 5 * 5)) and has_empty
    assert [density_band(x) for x in (0.01, 0.02, 0.021, 0.1, 0.11, 1.0)] == [0.02, 0.02, 0.05, 0.1, 0.2, 1.0]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": 1, "versions": {}, "entries": {"k": {"order": ["nope"]}}}),
        json.dumps({"format": 1, "versions": {}, "entries": {"k": {"order": ["fast"], "ms": {"fast": -1}}}}),
        json.dumps({"format": 1, "versions": {}, "entries": {"k": {"order": ["fast", "fast"]}}}),
        json.dumps([1, 2]),
    ],
)
def test_a_bad_cache_file_warns_once_is_measured_again_and_rewritten(tmp_path, content):
    path = tmp_path / "sparse-backends.json"
    path.write_text(content)
    fakes = Fakes({"flex": 2.0, "fast": 1.0})
    chooser = fakes.chooser(path)
    q, k, v, mask = _call()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chooser.run(q, k, v, mask, None)
        chooser.run(q, k, v, mask, None)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and str(path) in messages[0] and "measured again" in messages[0]
    assert chooser.measurements == 1
    data = json.loads(path.read_text())
    assert data["format"] == 1 and list(data["entries"].values())[0]["order"] == ["fast", "flex"]


def test_a_backend_that_fails_later_warns_once_and_the_next_runs(tmp_path):
    fakes = Fakes({"flex": 2.0, "fast": 1.0})
    chooser = fakes.chooser(tmp_path / "c.json")
    q, k, v, mask = _call()
    chooser.run(q, k, v, mask, None)  # measured: fast first
    fakes.fail_from["fast"] = fakes.runs["fast"]  # from now on it raises
    ref_out, _ = block_sparse_attention_reference(q, k, v, mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [chooser.run(q, k, v, mask, None)[0] for _ in range(3)]
    assert len(caught) == 1 and "backend fast failed" in str(caught[0].message)
    assert "the next fastest runs" in str(caught[0].message)
    for out in outs:
        torch.testing.assert_close(out, ref_out)
    assert fakes.last == "flex"


def test_a_forced_backend_runs_and_a_bad_name_is_refused(tmp_path, monkeypatch):
    fakes = Fakes({"flex": 2.0, "fast": 1.0, "slow": 3.0})
    chooser = fakes.chooser(tmp_path / "c.json")
    q, k, v, mask = _call()
    monkeypatch.setenv(backend_choice.ENV_BACKEND, "slow")
    chooser.run(q, k, v, mask, None)
    assert fakes.runs == {"flex": 0, "fast": 0, "slow": 1} and chooser.measurements == 0
    monkeypatch.setenv(backend_choice.ENV_BACKEND, "fastest")
    with pytest.raises(ValueError, match=r"UNBOTTLE_SPARSE_BACKEND='fastest': must be 'auto' or one of flex, fast"):
        chooser.run(q, k, v, mask, None)


def test_an_unwritable_cache_warns_and_the_choice_holds(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    fakes = Fakes({"flex": 2.0, "fast": 1.0})
    chooser = fakes.chooser(blocker / "sub" / "c.json")  # its parent is a file: cannot be made
    q, k, v, mask = _call()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chooser.run(q, k, v, mask, None)
        chooser.run(q, k, v, mask, None)
    assert len(caught) == 1 and "cannot write" in str(caught[0].message)
    assert chooser.measurements == 1 and fakes.last == "fast"


def test_agreement_checks_output_and_lse():
    torch.manual_seed(0)
    out, lse = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8)
    assert agrees(out, lse, out.clone(), lse.clone()) is None
    assert "relative error" in agrees(out * 1.05, lse, out, lse)
    assert "LSE max error" in agrees(out, lse + 0.5, out, lse)
    empty = lse.clone()
    empty[0, 0, 3] = float("-inf")
    assert "-inf" in agrees(out, lse, out, empty)
    assert "non-finite" in agrees(out * float("nan"), lse, out, lse)


def test_cpu_calls_and_machines_without_hopper_packages_measure_nothing(monkeypatch):
    q, k, v, mask = _call()
    monkeypatch.delenv(backend_choice.ENV_BACKEND, raising=False)
    assert backend_choice.run_measured(q, k, v, mask, None) is None  # CPU tensors
    assert not backend_choice.hopper_installed()  # this machine has neither package


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNBOTTLE_CACHE_DIR", str(tmp_path / "u"))
    assert backend_choice.default_cache_dir() == tmp_path / "u"
    monkeypatch.delenv("UNBOTTLE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert backend_choice.default_cache_dir() == tmp_path / "x" / "unbottle"
