"""AdaShift (docs/algorithms.md#adashift): its test vectors, an independent float64 reference, validation."""

from __future__ import annotations

import copy
from collections import deque

import pytest
import torch

from hf_adasam.optim.adashift import AdaShift

SPEC_GRADS = [(1.0, -2.0), (3.0, 1.0), (-1.0, 1.0), (2.0, 2.0)]
SPEC_X = [(0.0, 0.0), (0.0, 0.0), (-0.0447368, -0.05), (-0.0674428, -0.1098613)]


@pytest.mark.parametrize("impl", ["single", "foreach", "compiled"])
def test_matches_spec_vector_float64(impl: str) -> None:
    # The vector is ONE 2-element tensor with phi="max" (max over (1, 4) = 4 at t=3); two separate
    # scalars would take each coordinate's own g^2 and move x3[0] by 0.0894737 instead.
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = AdaShift([p], lr=0.1, eps=1e-10, n=2, phi="max", impl=impl)
    for g, want in zip(SPEC_GRADS, SPEC_X, strict=True):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-12)


# Test B: TWO scalar tensors; the first one's delayed gradient is zero until t = 5, so it is held still
# (the authors' gate) and its bias correction counts from there
SPEC_B_GRADS = [(0.0, -2.0), (0.0, 1.0), (-1.0, 1.0), (2.0, 2.0), (1.0, -1.0)]
SPEC_B_X = [(0.0, 0.0), (0.0, 0.0), (0.0, -0.05), (0.0, -0.1465472), (-0.1473684, -0.1763275)]


@pytest.mark.parametrize("impl", ["single", "foreach", "compiled"])
def test_matches_spec_test_b_two_scalars_one_held_by_the_gate(impl: str) -> None:
    ps = [torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in range(2)]
    opt = AdaShift(ps, lr=0.1, eps=1e-10, n=2, impl=impl)
    for g, want in zip(SPEC_B_GRADS, SPEC_B_X, strict=True):
        for p, gi in zip(ps, g, strict=True):
            p.grad = torch.tensor(gi, dtype=torch.float64)
        opt.step()
        got = torch.stack([p.detach() for p in ps])
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-12)


def _reference_adashift(
    xs: list[torch.Tensor], grads: list[list[torch.Tensor]], lrs: list[float], wds: list[float],
    beta1: float, beta2: float, eps: float, n: int, phi: str,
) -> list[torch.Tensor]:
    """docs/algorithms.md#adashift with m_t summed directly over the stored window (no running sum)."""
    xs = [x.clone() for x in xs]
    windows = [deque(maxlen=n) for _ in xs]  # newest first
    vs = [torch.zeros((), dtype=x.dtype) if phi != "none" else torch.zeros_like(x) for x in xs]
    weights = [beta1**i / sum(beta1**j for j in range(n)) for i in range(n)]
    for t, step_grads in enumerate(grads, start=1):
        for k, g in enumerate(step_grads):
            if t > n:
                oldest = windows[k][-1]  # g_{t-n}
                sq = oldest**2
                stat = {"max": sq.max(), "mean": sq.mean(), "none": sq}[phi]
                vs[k] = beta2 * vs[k] + (1 - beta2) * stat
            windows[k].appendleft(g)
            if t > n:
                m = sum(w * gi for w, gi in zip(weights, windows[k], strict=True))
                xs[k] = xs[k] * (1 - lrs[k] * wds[k])
                xs[k] = xs[k] - lrs[k] * m / (torch.sqrt(vs[k] / (1 - beta2 ** (t - n))) + eps)
    return xs


@pytest.mark.parametrize("phi", ["max", "mean", "none"])
@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_running_window_sum_matches_direct_window_reference_float64(impl: str, phi: str) -> None:
    n, steps = 3, 9
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (5,), (2, 1, 2)]
    x0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]
    lrs, wds = [0.05, 0.02, 0.05], [0.1, 0.0, 0.1]
    want = _reference_adashift(x0, grads, lrs, wds, beta1=0.8, beta2=0.95, eps=1e-6, n=n, phi=phi)

    params = [x.clone().requires_grad_() for x in x0]
    groups = [{"params": [params[0], params[2]]}, {"params": [params[1]], "lr": 0.02, "weight_decay": 0.0}]
    opt = AdaShift(groups, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, n=n, phi=phi, impl=impl)
    for t, step_grads in enumerate(grads, start=1):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g
        opt.step()
        if t <= n:  # the first n steps only fill the window, weight decay included
            assert all(torch.equal(p.detach(), x) for p, x in zip(params, x0, strict=True))
    for p, w, x in zip(params, want, x0, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
        assert not torch.equal(p.detach(), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "Invalid n:"),
        ({"n": 2.5}, "Invalid n:"),
        ({"n": True}, "Invalid n:"),
        ({"phi": "min"}, "Invalid phi:"),
        ({"lr": -1e-3}, "lr"),
        ({"eps": -1.0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, r"betas\[1\]"),
        ({"betas": (1.2, 0.999)}, r"betas\[0\]"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaShift([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("phi", ["max", "none"])
def test_a_state_saved_before_the_gate_resumes_as_the_run_it_came_from(phi: str) -> None:
    """hf-adasam 0.1.0's AdaShift state had no gate buffer; with gradients that are never zero its run is the
    gated run (the gate opens at n + 1), so dropping the buffer from a saved state must not change what follows."""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(9)]

    def run(p, opt, gs):
        for g in gs:
            p.grad = g.clone()
            opt.step()

    p = x0.clone().requires_grad_()
    opt = AdaShift([p], lr=0.05, n=3, phi=phi, weight_decay=0.1, impl="foreach")
    run(p, opt, grads[:5])
    saved = copy.deepcopy(opt.state_dict())
    for st in saved["state"].values():
        del st["bias_correction2"]
    q = p.detach().clone().requires_grad_()
    resumed = AdaShift([q], lr=0.05, n=3, phi=phi, weight_decay=0.1, impl="foreach")
    resumed.load_state_dict(saved)
    run(p, opt, grads[5:])
    run(q, resumed, grads[5:])
    torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
