"""Adai / AdaiW (docs/algorithms.md#adai): its test vector, an independent float64 reference, validation."""

from __future__ import annotations

import inspect

import pytest
import torch

from hf_adasam.optim.adai import Adai

SPEC_GRADS = [(1.0, 2.0), (1.0, 0.0), (-1.0, 1.0)]
SPEC_X = [(-1.0, -2.0), (-2.0, -3.0205778), (-2.1228446, -4.0340783)]


def _spec_params(layout: str) -> tuple[list[torch.Tensor], list]:
    """The test vector's two scalars as one 2-element tensor, two params in one group, or two groups."""
    if layout == "one_tensor":
        p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        return [p], [p]
    ps = [torch.zeros(1, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    return ps, (ps if layout == "two_params" else [{"params": [ps[0]]}, {"params": [ps[1]]}])


def _set_spec_grad(params: list[torch.Tensor], g: tuple[float, float]) -> None:
    if len(params) == 1:
        params[0].grad = torch.tensor(g, dtype=torch.float64)
    else:
        for p, gi in zip(params, g, strict=True):
            p.grad = torch.tensor([gi], dtype=torch.float64)


@pytest.mark.parametrize("layout", ["one_tensor", "two_params", "two_groups"])
@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_matches_spec_vector_float64(impl: str, layout: str) -> None:
    # from step 2 on the vector depends on v_bar being the mean over *all* params of *all* groups
    params, spec = _spec_params(layout)
    opt = Adai(spec, lr=1.0, impl=impl)
    for g, want in zip(SPEC_GRADS, SPEC_X, strict=True):
        _set_spec_grad(params, g)
        opt.step()
        got = torch.cat([p.detach().reshape(-1) for p in params])
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_beta1_at_first_step_matches_spec(impl: str) -> None:
    params, spec = _spec_params("two_groups")
    opt = Adai(spec, lr=1.0, impl=impl)
    _set_spec_grad(params, SPEC_GRADS[0])
    opt.step()
    beta1 = 1 - torch.cat([opt.state[p]["bias_correction1"] for p in params])  # 1 - P_1 = 1 - beta1 at t=1
    torch.testing.assert_close(beta1, torch.tensor([0.96, 0.84], dtype=torch.float64), rtol=1e-12, atol=0)


def _reference_adai(
    xs: list[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    group_of: list[int],
    groups: list[dict],
    beta0: float,
    beta2: float,
    eps: float,
    decoupled: bool,
) -> list[torch.Tensor]:
    """docs/algorithms.md#adai written out per parameter, one step at a time; None = no gradient that step."""
    xs = [x.clone() for x in xs]
    state: dict[int, dict] = {}
    for step_grads in grads:
        live = [i for i, g in enumerate(step_grads) if g is not None]
        decayed = {}
        vhat_sum, count = 0.0, 0
        for i in live:
            lr, wd = groups[group_of[i]]["lr"], groups[group_of[i]]["weight_decay"]
            g = step_grads[i] if decoupled else step_grads[i] + wd * xs[i]
            decayed[i] = g
            s = state.setdefault(i, {"t": 0, "m": torch.zeros_like(g), "v": torch.zeros_like(g),
                                     "P": torch.ones_like(g)})
            s["t"] += 1
            s["v"] = beta2 * s["v"] + (1 - beta2) * g**2
            vhat_sum += float((s["v"] / (1 - beta2 ** s["t"])).sum())
            count += g.numel()
        vbar = vhat_sum / count
        for i in live:
            lr, wd = groups[group_of[i]]["lr"], groups[group_of[i]]["weight_decay"]
            s = state[i]
            vhat = s["v"] / (1 - beta2 ** s["t"])
            beta1 = torch.clamp(1 - beta0 * vhat / vbar, 0.0, 1 - eps)
            s["P"] = s["P"] * beta1
            s["m"] = beta1 * s["m"] + (1 - beta1) * decayed[i]
            if decoupled:
                xs[i] = xs[i] * (1 - lr * wd)
            xs[i] = xs[i] - lr * s["m"] / (1 - s["P"])
    return xs


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_matches_independent_float64_reference(impl: str, decoupled: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (4,), (2, 2, 2)]
    x0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    groups = [{"lr": 0.5, "weight_decay": 0.1}, {"lr": 0.2, "weight_decay": 0.0}]
    group_of = [0, 1, 0]
    steps = 6
    grads: list[list[torch.Tensor | None]] = [
        [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)
    ]
    grads[2][1] = None  # a param that skips a step has its own step count (bias correction) from then on
    grads[4][0] = None
    want = _reference_adai(x0, grads, group_of, groups, beta0=0.3, beta2=0.9, eps=0.05, decoupled=decoupled)

    params = [x.clone().requires_grad_() for x in x0]
    spec = [{"params": [p for p, k in zip(params, group_of, strict=True) if k == j], **groups[j]} for j in range(2)]
    opt = Adai(spec, lr=1.0, betas=(0.3, 0.9), eps=0.05, decoupled=decoupled, impl=impl)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g
        opt.step()
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
    assert opt.state[params[0]]["step"] == steps - 1 and opt.state[params[2]]["step"] == steps


def test_lr_is_required() -> None:
    assert inspect.signature(Adai).parameters["lr"].default is inspect.Parameter.empty


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -1e-2}, "weight_decay"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"betas": (-0.1, 0.99)}, r"betas\[0\]"),
        ({"betas": (0.1, 1.0)}, r"betas\[1\]"),
        ({"betas": (0.1,)}, "betas"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(kwargs: dict, match: str) -> None:
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        Adai([torch.zeros(2, requires_grad=True)], **kwargs)
