"""Independent reference maths for the tests: loop-based N:M masks and an fp64 masked-dense SLoPe layer.

Written without `slope.masks` on purpose, so a bug there cannot hide in the reference too.
"""
import torch


def ref_nm_mask_rows(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of each group of m consecutive entries in every row; ties -> lower index."""
    rows, cols = w.shape
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    a = w.detach().abs().cpu().tolist()
    for i in range(rows):
        for g in range(0, cols, m):
            group = sorted(range(g, g + m), key=lambda j: (-a[i][j], j))
            for j in group[:n]:
                keep[i, j] = True
    return keep.to(w.device)


def ref_double_pruned(w: torch.Tensor, mask_r: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """W_RC: W⊙M_R, then n:m along d_out (columns) of that, by the row routine on the transpose."""
    w_r = w * mask_r
    return w_r * ref_nm_mask_rows(w_r.t(), n, m).t()


def ref_slope_linear(x, w, b, mask_r, n, m, grad_out, double_prune=True):
    """(y, dx, dw, db) of SLoPe's three GEMMs in fp64, from the definitions in the paper."""
    x, w, grad_out = x.double(), w.double(), grad_out.double()
    w_r = w * mask_r
    y = x @ w_r.t() + (0 if b is None else b.double())
    w_bwd = ref_double_pruned(w, mask_r, n, m) if double_prune else w_r
    dx = grad_out @ w_bwd
    dw = (grad_out.t() @ x) * mask_r
    db = None if b is None else grad_out.sum(0)
    return y, dx, dw, db
