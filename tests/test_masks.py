import pytest
import torch

from slope import masks
from tests.reference import ref_nm_mask_rows


def test_row_mask_hand_written_4x4():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0],
                      [0.5, 0.1, -0.2, 0.9],
                      [7.0, 7.0, 7.0, 7.0],   # ties: lower index wins
                      [0.0, 0.0, -1.0, 0.0]])
    expected = torch.tensor([[0, 1, 1, 0],
                             [1, 0, 0, 1],
                             [1, 1, 0, 0],
                             [1, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(masks.row_mask(w, 2, 4), expected)


def test_column_mask_hand_written_4x4():
    w = torch.tensor([[1.0, 0.0, 5.0, 2.0],
                      [3.0, 2.0, 0.0, 1.0],
                      [2.0, 0.0, 4.0, 3.0],
                      [0.0, 1.0, 6.0, 4.0]])
    # column 0 keeps 3, 2; column 1 keeps 2, 1; column 2 keeps 6, 5; column 3 keeps 4, 3
    expected = torch.tensor([[0, 0, 1, 0],
                             [1, 1, 0, 0],
                             [1, 0, 0, 1],
                             [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks.nm_mask(w, 2, 4, dim=0), expected)


def test_double_prune_hand_written_4x4():
    # Row pruning keeps the two largest per row; column pruning then keeps <= 2 per column of W_R.
    w = torch.tensor([[9.0, 8.0, 1.0, 0.5],
                      [7.0, 6.0, 0.2, 0.1],
                      [5.0, 0.3, 4.0, 0.2],
                      [0.1, 0.2, 3.0, 2.0]])
    expected_r = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    # column 0 of W_R holds 9, 7, 5 -> keep 9, 7; column 1: 8, 6 -> both; column 2: 4, 3; column 3: 2.
    expected_rc = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks.row_mask(w, 2, 4), expected_r)
    assert torch.equal(masks.double_prune_mask(w, 2, 4), expected_rc)


def test_2_8_hand_written_8x8_rows():
    w = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    w[3] = torch.tensor([5.0, -9.0, 1.0, 0.0, 8.0, 2.0, -3.0, 4.0])
    mask = masks.row_mask(w, 2, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, 6:] = True           # increasing rows keep the last two
    expected[3] = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (2, 8), (4, 8), (1, 2), (4, 16)])
def test_nm_mask_matches_loop_reference(n, m):
    w = torch.randn(16, 32)
    w[0, :m] = 1.0  # force ties
    assert torch.equal(masks.row_mask(w, n, m), ref_nm_mask_rows(w, n, m))
    assert masks.is_nm_sparse(w * masks.row_mask(w, n, m), n, m, dim=1)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (2, 8), (4, 8), (1, 2)])
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_nm_mask_by_comparison_equals_the_stable_sort_with_ties_and_nans(n, m, dim):
    generator = torch.Generator().manual_seed(n * 100 + m * 10 + dim)
    scores = torch.randint(-3, 4, (8, 16, 24), generator=generator).float()  # few values: many ties, signs
    scores[0, 0, :8] = float("nan")
    scores[1, 0, :8:2] = float("inf")  # an inf beside a NaN: the NaN still ranks first
    scores[1, 0, 1:8:2] = float("nan")
    for tensor in (scores, scores.bfloat16(), scores.transpose(0, 2)):  # low precision, non-contiguous
        expected = masks._nm_mask_by_sort(tensor, n, m, dim % tensor.dim())
        assert torch.equal(masks.nm_mask(tensor, n, m, dim=dim), expected)


def test_double_pruned_density_2_4_is_0_40625():
    assert masks.double_pruned_density(2, 4) == pytest.approx(0.40625)
    w = torch.randn(1024, 1024)
    mask = masks.double_prune_mask(w, 2, 4)
    assert mask.float().mean().item() == pytest.approx(0.40625, abs=0.005)
    assert masks.is_nm_sparse(w * mask, 2, 4, dim=0) and masks.is_nm_sparse(w * mask, 2, 4, dim=1)


@pytest.mark.parametrize("n,m,closed_form", [(2, 8, None), (1, 2, 0.375)])
def test_double_pruned_density_matches_lemma(n, m, closed_form):
    expected = masks.double_pruned_density(n, m)
    if closed_form is not None:  # 1:2: a column pair of W_R keeps 1 if both survived row pruning (p = 1/4)
        assert expected == pytest.approx(closed_form)
    w = torch.randn(2048, 2048)
    assert masks.double_prune_mask(w, n, m).float().mean().item() == pytest.approx(expected, abs=0.005)


def test_transposable_mask_is_nm_both_ways_and_optimal_per_block():
    w = torch.randn(8, 12)
    mask = masks.transposable_nm_mask(w, 2, 4)
    assert masks.is_nm_sparse(w * mask, 2, 4, dim=0) and masks.is_nm_sparse(w * mask, 2, 4, dim=1)
    assert mask.sum().item() == w.numel() // 2
    # brute force on one block: no transposable 2:4 pattern keeps more magnitude
    block = w[:4, :4].abs()
    best = max((block * p.reshape(4, 4)).sum().item() for p in masks._transposable_patterns(2, 4))
    assert (block * mask[:4, :4]).sum().item() == pytest.approx(best)


@pytest.mark.parametrize("bad,match", [("2:3", "M=3"), ("4:4", "0 < N < M"), ("5:4", "0 < N < M"),
                                       ("two:four", "integers"), ("2-4", "'N:M'"), ("2:32", "M=32")])
def test_bad_sparsity_strings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        masks.parse_sparsity(bad)


def test_indivisible_dimension_names_tensor_and_fix():
    with pytest.raises(ValueError, match=r"mylayer: d_in \(dim 1\) = 6 is not divisible by M=4.*filter_fn"):
        masks.row_mask(torch.randn(4, 6), 2, 4, name="mylayer")
