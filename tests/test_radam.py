"""``optim="radam"``: :class:`hf_adasam.optim.radam.RAdam` is ``torch.optim.RAdam`` with hf-adasam's impls.

Every impl follows ``torch.optim.RAdam`` in float64 over 24 steps (two param groups, one decayed, an lr that
changes every step, decoupled and coupled weight decay): ``single`` and ``foreach`` bit for bit (they are
torch's functions), ``compiled`` (torch's capturable single-tensor function under ``torch.compile``) within
1e-12 of the distance moved. Checkpoints pass between the two classes both ways, the state is torch's, and the
compiled kernel compiles one graph per param group for all steps.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch._dynamo.utils import counters

import hf_adasam
from hf_adasam.optim import _base
from hf_adasam.optim.radam import RAdam

F64 = torch.float64
STEPS = 24
SHAPES = ((3, 4), (), (5,), (2, 3))  # group 0: the first two (weight decay), group 1: the rest


# a compiled test fails if its kernel fell back to foreach (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("compiled_means_compiled")


def _problem(seed: int = 0, steps: int = STEPS) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    x0 = [torch.randn(s, generator=g, dtype=F64) for s in SHAPES]
    grads = [[torch.randn(s, generator=g, dtype=F64) for s in SHAPES] for _ in range(steps)]
    for gs in grads:
        gs[0][0, 0] = 0.0  # a coordinate that never gets a gradient
    return x0, grads


def _groups(params: list[torch.Tensor]) -> list[dict]:
    return [{"params": params[:2], "lr": 1e-2, "weight_decay": 0.05}, {"params": params[2:], "lr": 5e-3}]


def _lr(group: int, t: int) -> float:
    return 1e-2 * (1 + 0.5 * math.cos(t)) * (0.5 if group else 1.0)


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]], first: int = 1):
    for t, gs in enumerate(grads, start=first):
        for k, group in enumerate(opt.param_groups):
            group["lr"] = _lr(k, t)
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()


def _trajectory(make, decoupled: bool, steps: int = STEPS) -> list[torch.Tensor]:
    x0, grads = _problem(steps=steps)
    params = [x.clone().requires_grad_() for x in x0]
    _run(make(_groups(params), decoupled), params, grads)
    return [p.detach() for p in params]


def _torch(foreach: bool):
    return lambda groups, decoupled: torch.optim.RAdam(groups, decoupled_weight_decay=decoupled, foreach=foreach)


def _ours(impl: str):
    return lambda groups, decoupled: RAdam(groups, decoupled_weight_decay=decoupled, impl=impl)


def _relative(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    x0, _ = _problem()
    moved = max((w - x).abs().max().item() for w, x in zip(want, x0, strict=True))
    assert moved > 0
    return max((a - b).abs().max().item() for a, b in zip(got, want, strict=True)) / moved


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize("impl", _base.IMPLS)
def test_every_impl_follows_torch_radam_in_float64(impl: str, decoupled: bool) -> None:
    want = _trajectory(_torch(foreach=False), decoupled)
    got = _trajectory(_ours(impl), decoupled)
    if impl == "single":  # torch's _single_tensor_radam, as torch.optim.RAdam(foreach=False) runs it
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    elif impl == "foreach":  # torch's _multi_tensor_radam, as torch.optim.RAdam(foreach=True) runs it
        torch_foreach = _trajectory(_torch(foreach=True), decoupled)
        assert all(torch.equal(a, b) for a, b in zip(got, torch_foreach, strict=True))
    assert _relative(got, want) <= 1e-12


def test_spec_vector_in_every_impl() -> None:
    """docs/algorithms.md#radam: g = 1, lr 0.1: five steps of 0.1, then 0.0025821 and 0.0032739."""
    for impl in _base.IMPLS:
        x = torch.zeros(1, dtype=F64, requires_grad=True)
        opt = RAdam([x], lr=0.1, decoupled_weight_decay=True, impl=impl)
        moves = []
        for _ in range(7):
            before = x.item()
            x.grad = torch.ones(1, dtype=F64)
            opt.step()
            moves.append(before - x.item())
        assert moves[:5] == pytest.approx([0.1] * 5, rel=1e-12), impl
        assert moves[5:] == pytest.approx([0.0025821, 0.0032739], rel=1e-4), impl


@pytest.mark.parametrize("impl", _base.IMPLS)
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_checkpoints_pass_between_torch_radam_and_ours(direction: str, impl: str) -> None:
    """Half the run in one class, the state_dict loaded into the other, the rest there: torch's whole run."""
    x0, grads = _problem()
    half = STEPS // 2
    first, second = (_torch(foreach=False), _ours(impl))
    if direction == "ours_to_torch":
        first, second = second, first
    params = [x.clone().requires_grad_() for x in x0]
    opt = first(_groups(params), True)
    _run(opt, params, grads[:half])
    saved = copy.deepcopy(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in params]
    opt2 = second(_groups(resumed), True)
    opt2.load_state_dict(saved)
    _run(opt2, resumed, grads[half:], first=half + 1)
    want = _trajectory(_torch(foreach=False), True)
    if impl == "single":
        assert all(torch.equal(a, b) for a, b in zip(resumed, want, strict=True))
    assert _relative([p.detach() for p in resumed], want) <= 1e-12


@pytest.mark.parametrize("impl", _base.IMPLS)
def test_state_dict_is_torch_radams(impl: str) -> None:
    x0, grads = _problem(steps=3)
    dicts = []
    for cls in (torch.optim.RAdam, lambda groups, **kw: RAdam(groups, impl=impl, **kw)):
        params = [x.clone().requires_grad_() for x in x0]
        opt = cls(_groups(params), decoupled_weight_decay=True)
        _run(opt, params, grads)
        dicts.append(opt.state_dict())
    theirs, ours = dicts
    assert [sorted(g) for g in ours["param_groups"]] == [sorted(g) for g in theirs["param_groups"]]
    for g_ours, g_theirs in zip(ours["param_groups"], theirs["param_groups"], strict=True):
        assert {k: v for k, v in g_ours.items() if k != "lr"} == {k: v for k, v in g_theirs.items() if k != "lr"}
    assert ours["state"].keys() == theirs["state"].keys()
    for i, s in ours["state"].items():
        assert s.keys() == theirs["state"][i].keys() == {"step", "exp_avg", "exp_avg_sq"}
        step, their_step = s["step"], theirs["state"][i]["step"]
        assert (step.dtype, step.shape, step.device, step.item()) == (
            their_step.dtype, their_step.shape, their_step.device, their_step.item())
        assert step.item() == 3


def test_compiled_kernel_compiles_once_for_every_step() -> None:
    """One graph serves 20 steps whose lr changes every step (the step's scalars are tensors in the graph)."""
    torch._dynamo.reset()
    counters.clear()
    x0, grads = _problem(seed=1, steps=20)
    params = [x.clone().requires_grad_() for x in x0]
    opt = RAdam([{"params": params, "lr": 1e-2, "weight_decay": 0.01}], decoupled_weight_decay=True,
                impl="compiled")
    _run(opt, params, grads)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert all(opt.state[p]["step"].item() == 20 for p in params)


def test_registry_builds_it_with_decoupled_weight_decay() -> None:
    opt = hf_adasam.create_optimizer("radam", [torch.zeros(2, requires_grad=True)], lr=1e-3)
    assert type(opt) is RAdam and isinstance(opt, torch.optim.RAdam)
    assert opt.defaults["decoupled_weight_decay"] is True


def test_torchs_foreach_argument_picks_the_impl_unless_impl_is_given() -> None:
    p = [torch.zeros(2, requires_grad=True)]
    assert RAdam(p, foreach=False).impl == "single"
    assert RAdam(p, foreach=True).impl == "foreach"
    assert RAdam(p, foreach=True, impl="single").impl == "single"


def test_differentiable_runs_torchs_own_step() -> None:
    x0, grads = _problem(steps=7)
    runs = []
    for cls in (torch.optim.RAdam, RAdam):
        params = [x.clone().requires_grad_().clone() for x in x0]  # non-leaf: the steps stay in the graph
        opt = cls(_groups(params), differentiable=True)
        _run(opt, params, grads)
        runs.append([p.detach() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
