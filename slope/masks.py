"""N:M magnitude masks, SLoPe's double pruning, and N:M checks (pure torch, any device).

Conventions used everywhere in `slope`:

* A mask is a ``torch.bool`` tensor of the weight's shape; **True means kept**, False means pruned. (The public
  reference code mixed both polarities between its pruner and its compressor; we use one and test it.)
* "N:M along dim d" means: split the tensor into groups of M consecutive elements along d and keep the N of
  largest magnitude in each group. Ties are broken towards the lower index (a stable sort), so masks are
  deterministic and hand-written test cases are exact.
* For a linear weight W of shape (d_out, d_in):
  - the forward mask prunes along d_in (``dim=1``, "row-wise"): every output row keeps N of each M inputs;
  - double pruning then prunes the already-pruned W_R along d_out (``dim=0``, "column-wise"), which is what
    the input-gradient GEMM dX = dY·W_RC reduces over. W_RC keeps a subset of W_R's entries.

The expected density of W_RC for a random matrix is given by the paper's lemma
(`double_pruned_density`): 0.40625 at 2:4.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations, product
from math import comb

import torch

# M values that hardware or the paper use. The mask maths works for any M >= 2, and 1:2 appears in the paper's
# density lemma, so 2 is accepted too; sparse tensor cores need 2:4 (or 1:2 at fp32/tf32).
SUPPORTED_M = (2, 4, 8, 16)
_LINEAR_DIM_NAMES = ("d_out (dim 0)", "d_in (dim 1)")


def parse_sparsity(sparsity: str | tuple[int, int], *, where: str = "sparsity") -> tuple[int, int]:
    """Parse ``"N:M"`` (or an ``(N, M)`` tuple) into ``(N, M)``, with errors that say what is accepted."""
    if isinstance(sparsity, tuple) and len(sparsity) == 2:
        n, m = sparsity
    elif isinstance(sparsity, str) and sparsity.count(":") == 1:
        left, right = sparsity.split(":")
        try:
            n, m = int(left), int(right)
        except ValueError:
            raise ValueError(f"{where}={sparsity!r} is not an 'N:M' string of integers, e.g. '2:4' or '2:8'") from None
    else:
        raise ValueError(f"{where}={sparsity!r} is not an 'N:M' string, e.g. '2:4' (keep 2 of every 4)")
    if m not in SUPPORTED_M:
        raise ValueError(f"{where}={sparsity!r}: M={m} is not supported; use M in {SUPPORTED_M}")
    if not 0 < n < m:
        raise ValueError(f"{where}={sparsity!r}: need 0 < N < M (N kept of every M); got N={n}, M={m}")
    return int(n), int(m)


def check_divisible(shape: torch.Size | tuple[int, ...], m: int, dims: tuple[int, ...], *, name: str = "tensor") -> None:
    """Raise a clear error if any of ``dims`` of ``shape`` is not a multiple of the group size ``m``."""
    for dim in dims:
        size = shape[dim]
        if size % m:
            which = _LINEAR_DIM_NAMES[dim % 2] if len(shape) == 2 else f"dim {dim}"
            raise ValueError(
                f"{name}: {which} = {size} is not divisible by M={m}, so it cannot be split into N:M groups. "
                f"Keep this layer dense (pass a filter_fn that excludes it) or choose an M that divides {size}."
            )


def nm_mask(scores: torch.Tensor, n: int, m: int, dim: int = -1, *, name: str = "tensor") -> torch.Tensor:
    """Boolean N:M mask (True = kept) keeping the N largest ``|scores|`` in each group of M along ``dim``."""
    if not 0 < n < m:
        raise ValueError(f"{name}: need 0 < N < M, got N={n}, M={m}")
    dim = dim % scores.dim()
    check_divisible(scores.shape, m, (dim,), name=name)
    if m > _RANK_BY_COMPARISON_MAX_M:
        return _nm_mask_by_sort(scores, n, m, dim)
    # SLoPe re-derives W_RC's mask of every layer at every step, so this is on the training step's path. A sort
    # of millions of 4-element groups is one slow kernel on the GPU; ranking by pairwise comparisons is a few
    # elementwise ones, and reads the groups in place (no transposed copy for dim=0). Same result as the sort:
    # element i's rank counts the elements of its group that are larger, or equal and at a lower index.
    shape = scores.shape
    axis = dim + 1  # the position within the group, after splitting ``dim`` into (groups, M)
    magnitude = scores.detach().abs().reshape(*shape[:dim], shape[dim] // m, m, *shape[dim + 1:])
    # a NaN ranks first, as in the sort: NaN -> inf, while a real inf becomes the largest finite value
    magnitude = torch.nan_to_num(magnitude, nan=float("inf"))
    mine, other = magnitude.unsqueeze(axis + 1), magnitude.unsqueeze(axis)  # [..., i, j, ...]: element i vs j
    lower_index = torch.ones(m, m, dtype=torch.bool, device=scores.device).tril(-1)  # [i, j]: j < i
    lower_index = lower_index.reshape(m, m, *([1] * (len(shape) - dim - 1)))
    beaten_by = (other > mine) | ((other == mine) & lower_index)
    rank = beaten_by.sum(axis + 1, dtype=torch.uint8)
    return (rank < n).reshape(shape)


_RANK_BY_COMPARISON_MAX_M = 8  # its temporaries hold M bytes per element; beyond this, sort


def _nm_mask_by_sort(scores: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """`nm_mask` by a stable descending sort of each group (large M; and the reference its tests compare with)."""
    moved = scores.detach().abs().movedim(dim, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    # Stable descending sort: equal magnitudes keep their original order, so the lower index wins a tie.
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(moved.shape).movedim(-1, dim)


def row_mask(weight: torch.Tensor, n: int, m: int, *, name: str = "weight") -> torch.Tensor:
    """Forward mask of a (d_out, d_in) weight: N:M along d_in."""
    return nm_mask(weight, n, m, dim=1, name=name)


def double_prune_mask(weight: torch.Tensor, n: int, m: int, forward_mask: torch.Tensor | None = None,
                      *, name: str = "weight") -> torch.Tensor:
    """Mask of W_RC: prune W row-wise (N:M along d_in), then the result column-wise (N:M along d_out).

    ``forward_mask`` is W_R's mask if already known (SLoPe fixes it at prune time); else it is derived from |W|.
    The result is a subset of the forward mask: a column group of W_R with fewer than N non-zeros keeps only those.
    """
    if forward_mask is None:
        forward_mask = row_mask(weight, n, m, name=name)
    pruned = weight.detach() * forward_mask
    return forward_mask & nm_mask(pruned, n, m, dim=0, name=name)


def is_nm_sparse(tensor: torch.Tensor, n: int, m: int, dim: int = -1) -> bool:
    """True if every group of M consecutive elements along ``dim`` has at most N non-zeros."""
    dim = dim % tensor.dim()
    if tensor.shape[dim] % m:
        return False
    moved = (tensor != 0).movedim(dim, -1)
    counts = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m).sum(-1)
    return bool((counts <= n).all())


def assert_nm_sparse(tensor: torch.Tensor, n: int, m: int, dim: int = -1, *, name: str = "tensor") -> None:
    """Raise ``AssertionError`` naming ``name`` if ``tensor`` is not N:M sparse along ``dim``."""
    if not is_nm_sparse(tensor, n, m, dim):
        raise AssertionError(f"{name} is not {n}:{m} sparse along dim {dim}")


def double_pruned_density(n: int, m: int) -> float:
    """Expected density of W_RC for a matrix with i.i.d. continuous entries (the paper's lemma).

    After row pruning each column group of M entries holds j non-zeros with probability C(M,j) s^j (1-s)^(M-j),
    s = N/M; column pruning then drops max(j - N, 0) of them.
    """
    s = n / m
    extra_zeros = sum(comb(m, j) * s**j * (1 - s) ** (m - j) * (j - n) / m for j in range(n + 1, m + 1))
    return s - extra_zeros


@lru_cache(maxsize=None)
def _transposable_patterns(n: int, m: int) -> torch.Tensor:
    """All M×M 0/1 patterns with exactly N ones in every row and every column, as (P, M*M) float."""
    rows = [tuple(1.0 if i in keep else 0.0 for i in range(m)) for keep in combinations(range(m), n)]
    patterns = [block for block in product(rows, repeat=m) if all(sum(col) == n for col in zip(*block))]
    return torch.tensor(patterns).reshape(len(patterns), m * m)


def transposable_nm_mask(weight: torch.Tensor, n: int, m: int, *, name: str = "weight") -> torch.Tensor:
    """A mask that is N:M along both dims of a (d_out, d_in) weight, maximising the kept |W| per M×M block.

    Used by the FST-style baseline: one mask serves FWD (rows) and BWD-2 (columns). The best pattern of each
    block is found by scoring every transposable pattern (90 at 2:4), which is exact but limited to M <= 4.
    """
    if m > 4:
        raise ValueError(f"{name}: transposable masks are searched exhaustively per M×M block and support M <= 4; "
                         f"got {n}:{m}. Use 2:4 for the FST baseline.")
    check_divisible(weight.shape, m, (0, 1), name=name)
    d_out, d_in = weight.shape
    blocks = weight.detach().abs().float().reshape(d_out // m, m, d_in // m, m).permute(0, 2, 1, 3)
    patterns = _transposable_patterns(n, m).to(blocks.device)
    best = (blocks.reshape(-1, m * m) @ patterns.t()).argmax(dim=1)
    chosen = patterns[best].reshape(d_out // m, d_in // m, m, m).permute(0, 2, 1, 3)
    return chosen.reshape(d_out, d_in) > 0
