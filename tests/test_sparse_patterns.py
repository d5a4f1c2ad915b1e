"""Block patterns: window (spatial neighbours), forced text blocks, dynamic pooled q·k top-k, cached importance."""

import math

import pytest
import torch

from unbottle.attention_processors import patterns, reference
from unbottle.attention_processors.layout import TokenLayout


def kept_sets(indices, counts, b=0, h=0):
    """Row → set of kept key blocks, from (indices, counts); also checks a row lists no block twice."""
    rows = []
    for qb in range(indices.shape[2]):
        row = indices[b, h, qb, : int(counts[b, h, qb])].tolist()
        assert len(set(row)) == len(row), row
        rows.append(set(row))
    return rows


def nearest(i, n, k):
    """The k blocks nearest to block i on a line, ties towards the lower index."""
    return set(sorted(range(n), key=lambda j: (abs(i - j), j))[:k])


def window_pattern(layout, n, bs, density):
    forced = patterns.forced_blocks(layout, n, bs, "cpu")
    return patterns.select_blocks(patterns.window_scores(layout, n, bs, "cpu"), forced, density)


# -- window pattern --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [1, 2, 3, 4, 5])
def test_window_keeps_grid_row_neighbours(keep):
    # an 8×8 grid with block size 8: block i is grid row i; density keep/8 keeps `keep` blocks per row
    layout, n, bs = TokenLayout((1, 8, 8)), 64, 8
    indices, counts = window_pattern(layout, n, bs, keep / 8)
    rows = kept_sets(indices, counts)
    assert [len(r) for r in rows] == [keep] * 8
    for i, row in enumerate(rows):
        assert row == nearest(i, 8, keep), (i, row)
    if keep == 3:  # the example, spelled out
        assert rows[0] == {0, 1, 2} and rows[4] == {3, 4, 5} and rows[7] == {5, 6, 7}
    if keep == 2:  # ties go to the lower index
        assert rows[4] == {3, 4} and rows[0] == {0, 1}


def test_window_keeps_neighbouring_frames_of_a_video():
    # 6 frames of 4×4: block size 16 = one frame per block; 3 of 6 blocks kept → the frame and its two neighbours
    layout, n, bs = TokenLayout((6, 4, 4)), 96, 16
    rows = kept_sets(*window_pattern(layout, n, bs, 0.5))
    assert rows == [nearest(f, 6, 3) for f in range(6)]


def test_window_on_half_rows_uses_2d_distance():
    # 4×8 grid, block size 4: block 2r + c is the left (c=0) or right (c=1) half of row r
    layout, n, bs = TokenLayout((1, 4, 8)), 32, 4
    rows = kept_sets(*window_pattern(layout, n, bs, 3 / 8))
    centre = {(r, c): torch.tensor([r, 1.5 + 4 * c]) for r in range(4) for c in range(2)}
    for r in range(4):
        for c in range(2):
            i = 2 * r + c
            dist = sorted(range(8), key=lambda j: (float((centre[(r, c)] - centre[divmod(j, 2)]).norm()), j))
            assert rows[i] == set(dist[:3]), (i, rows[i])
            # the block right above or below (distance 1) beats the other half of the same row (distance 4)
            assert 2 * r + (1 - c) not in rows[i]


@pytest.mark.parametrize(
    ("text_len", "text_first", "text_blocks"),
    [
        (8, True, {0}),  # one whole text block in front
        (5, True, {0}),  # a mixed text/image block counts as a text block
        (8, False, {8}),  # text behind the image
        (12, False, {8, 9}),  # text spans a full and a partial block at the end
    ],
)
def test_text_blocks_are_forced_keys_and_dense_query_rows(text_len, text_first, text_blocks):
    layout = TokenLayout((1, 8, 8), text_len, text_first)
    n, bs = 64 + text_len, 8
    nb = math.ceil(n / bs)
    forced = patterns.forced_blocks(layout, n, bs, "cpu")
    assert forced.shape == (nb, nb) and forced.dtype == torch.bool
    expected = torch.eye(nb, dtype=torch.bool)
    for t in text_blocks:
        expected[t, :] = True
        expected[:, t] = True
    assert torch.equal(forced, expected)

    indices, counts = window_pattern(layout, n, bs, 3 / nb)
    rows = kept_sets(indices, counts)
    for i, row in enumerate(rows):
        if i in text_blocks:
            assert row == set(range(nb)), (i, row)  # text queries attend to everything
        else:
            assert text_blocks | {i} <= row, (i, row)  # every image row keeps the text and its own block
            assert len(row) == max(3, len(text_blocks | {i}))


def test_one_d_layout_window_is_a_band():
    layout, n, bs = TokenLayout(), 50, 5  # unknown grid: tokens are a 1-D sequence
    rows = kept_sets(*window_pattern(layout, n, bs, 0.3))
    assert rows == [nearest(i, 10, 3) for i in range(10)]


# -- select_blocks ---------------------------------------------------------------------------------------------------
def test_select_blocks_takes_top_scores_per_head_after_forced():
    gen = torch.Generator().manual_seed(0)
    b, h, nq, nk = 2, 3, 6, 10
    scores = torch.randn(b, h, nq, nk, generator=gen)
    forced = torch.zeros(nq, nk, dtype=torch.bool)
    forced[:, 9] = True  # a forced key column
    forced[2, :] = True  # a forced dense row
    indices, counts = patterns.select_blocks(scores, forced, 0.4)  # 4 of 10 key blocks
    assert indices.shape[:3] == (b, h, nq) and counts.shape == (b, h, nq)
    for bi in range(b):
        for hi in range(h):
            rows = kept_sets(indices, counts, bi, hi)
            for qi, row in enumerate(rows):
                if qi == 2:
                    assert row == set(range(nk))
                    continue
                others = scores[bi, hi, qi, :9].argsort(descending=True)[:3].tolist()
                assert row == {9, *others}, (bi, hi, qi)


@pytest.mark.parametrize("density", [0.05, 0.4, 1.0])
def test_select_blocks_with_host_max_forced_matches_the_synced_width(density):
    """The engine passes the forced row maximum from the host (no device sync per step); same patterns."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 3, 8, 12, generator=gen)
    forced = torch.rand(8, 12, generator=gen) < 0.2
    forced[5] = True
    a = patterns.select_blocks(scores, forced, density)
    b = patterns.select_blocks(scores, forced, density, max_forced=int(forced.sum(-1).max()))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("density", "nk", "keep"), [(0.05, 10, 1), (0.1, 10, 1), (0.3, 10, 3), (1.0, 7, 7), (0.5, 7, 4)]
)
def test_select_blocks_keeps_ceil_density_blocks(density, nk, keep):
    scores = torch.randn(1, 1, 3, nk)
    _, counts = patterns.select_blocks(scores, torch.zeros(3, nk, dtype=torch.bool), density)
    assert counts.flatten().tolist() == [keep] * 3


# -- dynamic: pooled q·k ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "bs"), [(32, 8), (37, 8), (10, 4)])
def test_pooled_scores_are_block_mean_dot_products(n, bs):
    gen = torch.Generator().manual_seed(n)
    q, k = torch.randn(2, 3, n, 8, generator=gen), torch.randn(2, 3, n, 8, generator=gen)
    nb = math.ceil(n / bs)
    qm = torch.stack([q[:, :, i * bs : (i + 1) * bs].mean(2) for i in range(nb)], 2)
    km = torch.stack([k[:, :, i * bs : (i + 1) * bs].mean(2) for i in range(nb)], 2)
    expected = qm @ km.transpose(-1, -2) * 0.3
    torch.testing.assert_close(patterns.pooled_scores(q, k, bs, 0.3), expected, rtol=1e-5, atol=1e-6)


def test_dynamic_selection_follows_planted_affinities():
    # query block i points along e_i; key block perm[i] is the only key block along e_i
    nb, bs, d = 6, 4, 8
    perm = [3, 0, 5, 1, 2, 4]  # no fixed point: the diagonal is forced anyway
    q = torch.zeros(1, 1, nb * bs, d)
    k = torch.zeros(1, 1, nb * bs, d)
    for i in range(nb):
        q[0, 0, i * bs : (i + 1) * bs, i] = 1.0
        k[0, 0, perm[i] * bs : (perm[i] + 1) * bs, i] = 5.0
    q = q + 0.01 * torch.randn(q.shape, generator=torch.Generator().manual_seed(0))
    scores = patterns.pooled_scores(q, k, bs, d**-0.5)
    rows = kept_sets(*patterns.select_blocks(scores, torch.eye(nb, dtype=torch.bool), 2 / nb))
    assert rows == [{i, perm[i]} for i in range(nb)]


# -- cached (SparseD): exact tile importance -------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "bs", "chunk"), [(32, 8, 1024), (37, 8, 16), (30, 4, 8)])
def test_exact_block_importance_is_mean_softmax_mass_per_tile(n, bs, chunk):
    gen = torch.Generator().manual_seed(n + bs)
    b, h, d = 2, 3, 8
    q, k = torch.randn(b, h, n, d, generator=gen), torch.randn(b, h, n, d, generator=gen)
    scale = d**-0.5
    lse = reference.dense_attention_reference(q, k, k, scale=scale)[1]
    imp = patterns.exact_block_importance(q, k, lse, bs, scale, chunk=chunk)
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale, -1)  # (B, H, N, N)
    nb = math.ceil(n / bs)
    expected = torch.zeros(1, h, nb, nb, dtype=torch.float64)
    for i in range(nb):
        for j in range(nb):
            expected[0, :, i, j] = p[:, :, i * bs : (i + 1) * bs, j * bs : (j + 1) * bs].mean((2, 3)).mean(0)
    torch.testing.assert_close(imp.double(), expected, rtol=1e-4, atol=1e-6)


def test_exact_block_importance_gives_masked_keys_no_weight():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 32, 8, generator=gen), torch.randn(1, 2, 32, 8, generator=gen)
    mask = torch.ones(1, 1, 1, 32, dtype=torch.bool)
    mask[..., 8:16] = False
    lse = reference.dense_attention_reference(q, k, k, attn_mask=mask)[1]
    imp = patterns.exact_block_importance(q, k, lse, 8, 8**-0.5, attn_mask=mask)
    assert torch.all(imp[..., 1] == 0)
    # the kept keys' probabilities still sum to one per row: tile means × tile sizes add up to 1 per query row
    assert torch.allclose((imp * 8).sum(-1), torch.ones(1, 2, 4), atol=1e-5)
