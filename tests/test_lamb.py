"""LAMB against a reference step written out by hand in float64, and sparse weights staying sparse."""
import math

import torch

from experiments.lamb import LAMB


def reference_lamb(w, grads, lr, betas, eps, weight_decay):
    """Plain-Python LAMB (You et al. 2019, Algorithm 2, bias-corrected) on a list of floats."""
    w, m, v = list(w), [0.0] * len(w), [0.0] * len(w)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        u = [(mi / (1 - b1 ** t)) / (math.sqrt(vi / (1 - b2 ** t)) + eps) + weight_decay * wi
             for mi, vi, wi in zip(m, v, w)]
        w_norm, u_norm = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in u))
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        w = [wi - lr * trust * ui for wi, ui in zip(w, u)]
    return w


def test_steps_match_the_hand_written_reference():
    torch.manual_seed(0)
    w0 = torch.randn(12, dtype=torch.float64)
    grads = [torch.randn(12, dtype=torch.float64) for _ in range(3)]
    param = torch.nn.Parameter(w0.clone())
    opt = LAMB([param], lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected = reference_lamb(w0.tolist(), [g.tolist() for g in grads], 0.05, (0.9, 0.99), 1e-6, 0.1)
    torch.testing.assert_close(param.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_zero_weights_take_an_adam_step_and_pruned_entries_stay_zero():
    zero = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))  # ‖w‖ = 0: trust ratio 1 (a plain Adam step)
    zero.grad = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    LAMB([zero], lr=0.1, eps=1e-12, weight_decay=0.0).step()
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.1, 0.1, -0.1, 0.0], dtype=torch.float64))
    sparse = torch.nn.Parameter(torch.tensor([[1.0, 0.0, -2.0, 0.0]]))  # 2:4 with a zero gradient where pruned
    opt = LAMB([sparse], lr=0.01, weight_decay=0.01)
    for _ in range(3):
        sparse.grad = torch.tensor([[0.3, 0.0, -0.2, 0.0]])
        opt.step()
    assert sparse[0, 1] == 0 and sparse[0, 3] == 0 and sparse[0, 0] != 1.0
