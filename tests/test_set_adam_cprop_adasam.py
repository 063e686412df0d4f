"""AdaSAM's base update, SET-Adam, RAdam, CProp: the vectors of docs/algorithms.md#test-vectors, independent
float64 re-computations of each formula on a random problem, and validation."""

from __future__ import annotations

import math

import pytest
import torch

import hf_adasam
from hf_adasam import AdaSAM, CPropAdam, CPropSGD, SETAdam

F64 = torch.float64
IMPLS = ["single", "foreach"]


def _random_problem(seed: int = 0, shapes=((4, 3), (5,), (2, 2, 2))) -> tuple[list[torch.Tensor], list[list]]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=F64) for s in shapes] for _ in range(6)]
    return xs, grads


def _run(opt_factory, xs, grads) -> list[torch.Tensor]:
    params = [x.clone().requires_grad_() for x in xs]
    opt = opt_factory(params)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


# ----------------------------------------------------------------------------------------------
# AdaSAM base update
# ----------------------------------------------------------------------------------------------
def _reference_adasam(xs, grads, lr, betas, eps, wd, bias_correction):
    xs = [x.clone() for x in xs]
    m = [torch.zeros_like(x) for x in xs]
    v = [torch.zeros_like(x) for x in xs]
    vhat = [torch.full_like(x, eps**2) for x in xs]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            vhat[i] = torch.maximum(vhat[i], v[i])
            mm, vv = m[i], vhat[i]
            if bias_correction:
                mm, vv = mm / (1 - betas[0] ** t), vv / (1 - betas[1] ** t)
            xs[i] = xs[i] * (1 - lr * wd) - lr * mm / vv.sqrt()
    return xs


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_adasam_equals_float64_amsgrad_recomputation(impl, bias_correction) -> None:
    xs, grads = _random_problem()
    got = _run(lambda ps: AdaSAM(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1,
                                 bias_correction=bias_correction, impl=impl), xs, grads)
    want = _reference_adasam(xs, grads, 0.01, (0.8, 0.99), 1e-3, 0.1, bias_correction)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


ADASAM_SPEC = [  # g_sam, m_t, v_t, w after (docs/algorithms.md#adasam)
    ((1.0049752, 10.4975186), (0.1004975, 1.0497519), (0.00101, 0.1101979), (0.9683772, 0.9683772)),
    ((0.9733524, 10.1812908), (0.187783, 1.9629058), (0.0019564, 0.2137464), (0.9259221, 0.9259201)),
    ((0.9308973, 9.7567201), (0.2620944, 2.7422872), (0.002821, 0.3087262), (0.8765756, 0.8765657)),
]


@pytest.mark.parametrize("impl", IMPLS)
def test_adasam_with_sam_perturbation_matches_spec_vector(impl) -> None:
    w = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    base = AdaSAM([w], lr=0.01, impl=impl)
    opt = hf_adasam.SAM(base, rho=0.05)
    seen: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        loss = 0.5 * (w[0] ** 2 + 10 * w[1] ** 2)
        loss.backward()
        seen.append(w.grad.detach().clone())
        return loss

    for g_sam, m, v, w_after in ADASAM_SPEC:
        seen.clear()
        opt.zero_grad()
        opt.step(closure)
        state = base.state[w]
        for got, want in ((seen[1], g_sam), (state["exp_avg"], m), (state["exp_avg_sq"], v), (w, w_after)):
            torch.testing.assert_close(got.detach(), torch.tensor(want, dtype=F64), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# SET-Adam
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_set_adam_matches_spec_vector(impl) -> None:
    # beta1 = beta2 = 0 makes m = g and v = g² with no bias correction at step 1, so
    # x1 = -lr * g / w~ exposes w~ for v = (1e-2, 4e-2, 1e-4)
    g = torch.tensor([1e-2, 4e-2, 1e-4], dtype=F64).sqrt()
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = SETAdam([x], lr=1.0, betas=(0.0, 0.0), eps=1e-8, p=2.0, tau=0.5, impl=impl)
    x.grad = g.clone()
    opt.step()
    w_tilde = -g / x.detach()
    torch.testing.assert_close(w_tilde, torch.tensor([0.06664585, 0.13679964, 0.00350805], dtype=F64),
                               rtol=1e-5, atol=0)


def _reference_set_adam(xs, grads, lr, betas, eps, wd, p, tau):
    """docs/algorithms.md#set-adam as written: the cosine on the bias-corrected v, element-wise min of w."""
    xs = [x.clone() for x in xs]
    m = [torch.zeros_like(x) for x in xs]
    v = [torch.zeros_like(x) for x in xs]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            vhat = v[i] / (1 - betas[1] ** t)
            d = vhat.numel()
            cos = vhat.sum() / (math.sqrt(d) * vhat.norm())
            w = (vhat * cos**p + eps).sqrt()
            w_tilde = w - tau * w.min()
            xs[i] = xs[i] * (1 - lr * wd) - lr / (1 - betas[0] ** t) * m[i] / w_tilde
    return xs


@pytest.mark.parametrize("impl", IMPLS)
def test_set_adam_equals_float64_recomputation_of_the_spec(impl) -> None:
    xs, grads = _random_problem(1)
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-10, weight_decay=0.05, p=1.5, tau=0.3)
    got = _run(lambda ps: SETAdam(ps, impl=impl, **kw), xs, grads)
    want = _reference_set_adam(xs, grads, **{k if k != "weight_decay" else "wd": v for k, v in kw.items()})
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# RAdam is torch's math (hf_adasam.optim.radam runs torch's kernels; tests/test_radam.py)
# ----------------------------------------------------------------------------------------------
def test_radam_name_is_torch_radam_matching_spec_vector() -> None:
    x = torch.zeros(1, dtype=F64, requires_grad=True)
    opt = hf_adasam.create_optimizer("radam", [x], lr=0.1)
    assert type(opt) is hf_adasam.RAdam and isinstance(opt, torch.optim.RAdam)
    assert opt.defaults["decoupled_weight_decay"] is True
    moves = []
    for _ in range(7):
        before = x.item()
        x.grad = torch.ones(1, dtype=F64)
        opt.step()
        moves.append(before - x.item())
    assert moves[:5] == pytest.approx([0.1] * 5, rel=1e-9)
    assert moves[5:] == pytest.approx([0.0025821, 0.0032739], rel=1e-4)


# ----------------------------------------------------------------------------------------------
# CProp
# ----------------------------------------------------------------------------------------------
CPROP_GRADS = [1.0, 0.5, -0.2, 1.0]
CPROP_SCALES = [1.0, 0.9948897, 0.6998647, 0.9244793]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl", IMPLS)
def test_cprop_scale_matches_spec_vector(impl, dtype) -> None:
    # CProp-SGD without momentum and lr 1 moves x by -scale * g: the step exposes the scale. float32
    # too: at t=1 the true variance is 0 over a denominator of eps, where s - mu² would round badly
    x = torch.zeros(1, dtype=dtype, requires_grad=True)
    opt = CPropSGD([x], lr=1.0, cprop_beta=0.9, impl=impl)
    for g, want in zip(CPROP_GRADS, CPROP_SCALES, strict=True):
        before = x.detach().clone()
        x.grad = torch.tensor([g], dtype=dtype)
        opt.step()
        assert ((before - x.detach()) / g).item() == pytest.approx(want, rel=1e-5)


def _reference_cprop_scale(a, b, t, beta, c, eps):
    """docs/algorithms.md#cprop as written (raw EMAs a, b)."""
    bc = 1 - beta**t
    mu, s, n = a / bc, b / bc, bc / (1 - beta)
    se = ((s - mu * mu).clamp(min=0) / (n - 1 + eps)).sqrt() + eps
    return (c * torch.erf(mu.abs() / (math.sqrt(2) * se))).clamp(max=1)


def _reference_cprop(xs, grads, *, kind, lr, wd, beta, c, eps, betas=(0.9, 0.999), adam_eps=1e-8, momentum=0.0):
    xs = [x.clone() for x in xs]
    a = [torch.zeros_like(x) for x in xs]
    b = [torch.zeros_like(x) for x in xs]
    m = [torch.zeros_like(x) for x in xs]
    v = [torch.zeros_like(x) for x in xs]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            # docs/algorithms.md#cprop: CProp-Adam's scale sees g + λx; CProp-SGD's the raw g (authors' cprop_sgd.py),
            # then d = g + λx
            d = g + wd * xs[i]
            g = d if kind == "adam" else g
            a[i] = beta * a[i] + (1 - beta) * g
            b[i] = beta * b[i] + (1 - beta) * g * g
            scale = _reference_cprop_scale(a[i], b[i], t, beta, c, eps)
            g = d
            if kind == "adam":
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
                mhat, vhat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
                xs[i] = xs[i] - lr * scale * mhat / (vhat.sqrt() + adam_eps)
            else:  # torch.optim.SGD's momentum buffer: starts at g
                m[i] = g.clone() if t == 1 else momentum * m[i] + g
                xs[i] = xs[i] - lr * scale * m[i]
    return xs


@pytest.mark.parametrize("impl", IMPLS)
def test_cprop_adam_equals_float64_recomputation_of_the_spec(impl) -> None:
    xs, grads = _random_problem(2)
    got = _run(lambda ps: CPropAdam(ps, lr=0.01, weight_decay=0.1, cprop_beta=0.8, cprop_c=2.0, impl=impl), xs, grads)
    want = _reference_cprop(xs, grads, kind="adam", lr=0.01, wd=0.1, beta=0.8, c=2.0, eps=1e-8)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cprop_sgd_equals_float64_recomputation_of_the_spec(impl) -> None:
    xs, grads = _random_problem(3)
    got = _run(lambda ps: CPropSGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, cprop_beta=0.7, impl=impl), xs, grads)
    want = _reference_cprop(xs, grads, kind="sgd", lr=0.1, wd=0.01, beta=0.7, c=1.0, eps=1e-8, momentum=0.9)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kw", "name"),
    [
        (AdaSAM, {"lr": -1.0}, "lr"),
        (AdaSAM, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
        (AdaSAM, {"eps": -1e-8}, "eps"),
        (AdaSAM, {"weight_decay": -0.1}, "weight_decay"),
        (SETAdam, {"tau": 1.0}, "tau"),
        (SETAdam, {"p": -1.0}, "p"),
        (SETAdam, {"betas": (-0.1, 0.9)}, r"betas\[0\]"),
        (CPropAdam, {"cprop_beta": 1.0}, "cprop_beta"),
        (CPropAdam, {"cprop_c": 0.0}, "cprop_c"),
        (CPropAdam, {"cprop_eps": -1.0}, "cprop_eps"),
        (CPropSGD, {"momentum": -0.5}, "momentum"),
        (CPropSGD, {"nesterov": True}, "nesterov"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_the_argument(cls, kw, name) -> None:
    with pytest.raises(ValueError, match=name):
        cls([torch.zeros(2, requires_grad=True)], **kw)
