"""Properties every hf-adasam optimizer must have, whatever its algorithm."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_adasam.optim import AdaSAM
from hf_adasam.registry import create_optimizer, variants

# Every variant of every registered optimizer (the registry's knob settings, at the entry's lr), with weight decay
# on: the property tests run each.
VARIANTS = variants()


def make(name: str, params: list, **kw) -> torch.optim.Optimizer:
    entry, variant = VARIANTS[name]
    return create_optimizer(entry.name, params, **{"lr": entry.lr, "weight_decay": 0.1, **variant.knobs, **kw})


SHAPES = [(3, 4), (5,), (2, 3, 2), (1,), (7, 1)]


def _params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]


def _groups(params: list[torch.Tensor]) -> list[dict]:
    # three groups with their own lr / weight decay, as Trainer's decay and no-decay groups are
    return [
        {"params": params[:2]},
        {"params": params[2:4], "lr": 3e-3, "weight_decay": 0.0},
        {"params": params[4:], "weight_decay": 0.05},
    ]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        opt.step()


@pytest.mark.parametrize("name", VARIANTS)
def test_foreach_matches_single_tensor_on_three_groups_mixed_shapes(name: str) -> None:
    results = {}
    for impl in ("single", "foreach"):
        params = _params()
        _run(make(name, _groups(params), impl=impl), params, steps=7)
        results[impl] = params
    for a, b in zip(results["single"], results["foreach"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(results["foreach"][0], _params()[0]), "the optimizer never moved the params"


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_round_trip_resumes_bit_identically(name: str) -> None:
    params = _params()
    opt = make(name, _groups(params))
    _run(opt, params, steps=4)
    saved_params = [p.detach().clone().requires_grad_() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    _run(opt, params, steps=5, seed=7)

    resumed = make(name, _groups(saved_params))
    resumed.load_state_dict(saved_state)
    _run(resumed, saved_params, steps=5, seed=7)
    for a, b in zip(params, saved_params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", VARIANTS)
def test_runs_in_param_dtype(name: str, dtype: torch.dtype) -> None:
    params = _params(dtype)
    before = [p.detach().clone() for p in params]
    opt = make(name, _groups(params))
    _run(opt, params, steps=6)
    for p in params:
        assert p.dtype == dtype and torch.isfinite(p).all()
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0:
                assert v.dtype == dtype


@pytest.mark.parametrize("name", VARIANTS)
def test_sparse_gradients_are_rejected(name: str) -> None:
    p = torch.zeros(4, requires_grad=True)
    opt = make(name, [p])
    p.grad = torch.sparse_coo_tensor([[0]], [1.0], (4,))
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("name", VARIANTS)
def test_params_without_grad_are_untouched_and_closure_loss_returned(name: str) -> None:
    params = _params()
    frozen = params[1].detach().clone()
    opt = make(name, [{"params": params}])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = sum((p.float() ** 2).sum() for i, p in enumerate(params) if i != 1)
        loss.backward()
        return loss

    for _ in range(4):
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert torch.equal(params[1], frozen)
    assert params[1] not in opt.state or not opt.state[params[1]]


@pytest.mark.parametrize("name", VARIANTS)
def test_compiled_kernel_matches_foreach(name: str) -> None:
    torch._dynamo.reset()
    results = {}
    for impl in ("foreach", "compiled"):
        params = _params()
        opt = make(name, _groups(params), impl=impl)
        assert opt.impl == impl
        g = torch.Generator().manual_seed(3)
        for step in range(6):
            for group in opt.param_groups:  # a scheduled lr must not recompile or be baked in
                group["lr"] = group["lr"] * 0.9
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).float()
            opt.step()
            del step
        results[impl] = params
    for a, b in zip(results["foreach"], results["compiled"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_impl_is_rejected() -> None:
    with pytest.raises(ValueError, match="impl"):
        AdaSAM([torch.zeros(1, requires_grad=True)], impl="fast")
