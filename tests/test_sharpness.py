"""SAM / ASAM perturbations and the second-pass policies against the hand-computed vectors of
docs/algorithms.md#test-vectors,
through the plain-PyTorch face ``hf_adasam.SAM`` (the same SAMStep that SAMTrainer runs)."""

from __future__ import annotations

import copy

import pytest
import torch

import hf_adasam
from hf_adasam.sharpness import AESAM, EveryK, LookSAM, Perturbation, Policy, SAMConfig

F64 = torch.float64


def _quadratic(w: torch.Tensor, seen: list[torch.Tensor] | None = None):
    def closure() -> torch.Tensor:
        loss = 0.5 * (w[0] ** 2 + 10 * w[1] ** 2)
        loss.backward()
        if seen is not None:
            seen.append(w.grad.detach().clone())
        return loss

    return closure


def _sgd_sam(w0, **sam_kw) -> tuple[torch.Tensor, hf_adasam.SAM]:
    w = torch.tensor(w0, dtype=F64, requires_grad=True)
    return w, hf_adasam.SAM(torch.optim.SGD([w], lr=0.1), **sam_kw)


SAM_SPEC = [  # g, g_sam, w after (docs/algorithms.md#sam-and-asam)
    ((1, 10), (1.0049752, 10.4975186), (0.8995025, -0.0497519)),
    ((0.8995025, -0.4975186), (0.9432558, -0.73952), (0.8051769, 0.0242001)),
    ((0.8051769, 0.2420014), (0.8530609, 0.38592), (0.7198708, -0.0143919)),
]


def test_sam_over_sgd_matches_spec_vector() -> None:
    w, opt = _sgd_sam((1.0, 1.0), rho=0.05)
    seen: list[torch.Tensor] = []
    for g, g_sam, w_after in SAM_SPEC:
        seen.clear()
        opt.zero_grad()
        opt.step(_quadratic(w, seen))
        for got, want in ((seen[0], g), (seen[1], g_sam), (w.detach(), w_after)):
            torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("eta", "trajectory"),
    [(0.01, [(0.8987316, -1.004683), (0.80523, 0.5057212), (0.7147578, -0.2500615)]),
     (0.0, [(0.8987504, -0.9996876), (0.8052551, 0.4982191), (0.7145531, -0.2410214)])],
)
def test_asam_over_sgd_matches_spec_vector(eta, trajectory) -> None:
    w, opt = _sgd_sam((1.0, 2.0), rho=0.5, adaptive=True, eta=eta)
    for want in trajectory:
        opt.zero_grad()
        opt.step(_quadratic(w))
        torch.testing.assert_close(w.detach(), torch.tensor(want, dtype=F64), rtol=1e-5, atol=1e-6)


def test_asam_first_perturbation_matches_spec() -> None:
    w = torch.tensor([1.0, 2.0], dtype=F64)
    pert = Perturbation(rho=0.5, adaptive=True, eta=0.01)
    norm = pert.perturb([w], [torch.tensor([1.0, 20.0], dtype=F64)])
    e = w - torch.tensor([1.0, 2.0], dtype=F64)
    torch.testing.assert_close(e, torch.tensor([0.0126838, 1.004683], dtype=F64), rtol=1e-5, atol=0)
    assert norm == pytest.approx(e.norm().item())


def test_restore_is_bit_exact_and_perturbation_scale_free() -> None:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 3, generator=g), torch.randn(5, generator=g)]
    before = [p.clone() for p in params]
    grads = [torch.randn(p.shape, generator=g) for p in params]
    pert = Perturbation(rho=0.05)
    pert.perturb(params, grads)
    moved = [p.clone() for p in params]
    pert.restore(params)
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))
    # fp16's loss scale multiplies g; e must not change
    pert.perturb(params, [x * 1024 for x in grads])
    for a, b in zip(params, moved, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    pert.restore(params)


AE_SPEC = [  # ‖g‖², μ, σ², c, threshold, SAM?
    (4, 0.4, 1.296, 1, 1.53842, True),
    (1, 0.46, 1.19556, 0.666667, 1.188944, False),
    (9, 1.314, 6.983464, 0.333333, 2.194875, True),
    (1, 1.2826, 6.293104, 0, 1.2826, False),
    (1, 1.25434, 5.670262, -0.333333, 0.460596, True),
    (16, 2.728906, 22.715429, -0.666667, -0.448474, True),
]


def test_ae_sam_decisions_match_spec_vector() -> None:
    policy = Policy.from_config(SAMConfig(policy="ae", ae_delta=0.9, ae_lambdas=(-1, 1)), total_steps=6)
    assert isinstance(policy, AESAM)
    for t, (gsq, mu, var, c, thr, sam) in enumerate(AE_SPEC):
        assert policy.decide(t, float(gsq)) is sam
        assert (policy.mean, policy.var, policy.threshold_coef(t)) == pytest.approx((mu, var, c), rel=1e-5, abs=1e-6)
        assert policy.mean + policy.threshold_coef(t) * policy.var**0.5 == pytest.approx(thr, rel=1e-5, abs=1e-6)


def test_looksam_gv_and_reuse_match_spec() -> None:
    policy = LookSAM(EveryK(5), alpha=0.7)
    g = [torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0], dtype=F64)]
    g_sam = [torch.tensor([2.0, 1.0], dtype=F64), torch.tensor([3.0], dtype=F64)]
    policy.after_sam(g, g_sam)
    torch.testing.assert_close(torch.cat(policy.g_v), torch.tensor([1.0714286, -0.8571429, 0.2142857], dtype=F64),
                               rtol=1e-6, atol=0)
    plain = [torch.tensor([1.0, 1.0], dtype=F64), torch.tensor([1.0], dtype=F64)]
    policy.reuse(plain)
    torch.testing.assert_close(torch.cat(plain), torch.tensor([1.9354144, 0.2516685, 1.1870829], dtype=F64),
                               rtol=1e-6, atol=0)


def test_looksam_k2_trajectory_matches_spec_and_pays_passes_per_policy() -> None:
    w, opt = _sgd_sam((1.0, 1.0), rho=0.05, policy="looksam", looksam_k=2, looksam_alpha=0.7)
    passes = []
    for want in [(0.8995025, -0.0497519), (0.8811499, -0.0071598), (0.7880513, 0.0040494)]:
        seen: list[torch.Tensor] = []
        opt.zero_grad()
        opt.step(_quadratic(w, seen))
        passes.append(len(seen))
        torch.testing.assert_close(w.detach(), torch.tensor(want, dtype=F64), rtol=1e-5, atol=1e-6)
    assert passes == [2, 1, 2]


def test_ae_looksam_without_stored_gv_takes_a_plain_step() -> None:
    policy = Policy.from_config(SAMConfig(policy="ae_looksam"), total_steps=10)
    assert isinstance(policy, LookSAM) and isinstance(policy.trigger, AESAM)
    g = [torch.tensor([1.0, 2.0])]
    policy.reuse(g)
    assert torch.equal(g[0], torch.tensor([1.0, 2.0]))


def test_make_policy_is_a_deprecated_alias_of_policy_from_config() -> None:
    with pytest.warns(DeprecationWarning, match=r"use Policy\.from_config"):
        policy = hf_adasam.sharpness.make_policy("looksam", looksam_k=3, looksam_alpha=0.5)
    assert isinstance(policy, LookSAM) and isinstance(policy.trigger, EveryK)
    assert (policy.trigger.k, policy.alpha) == (3, 0.5)


def test_plain_sam_state_dict_resumes_base_and_policy_identically() -> None:
    def make():
        w = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
        return w, hf_adasam.SAM(hf_adasam.AdaSAM([w], lr=0.01), policy="ae", total_steps=10)

    w, opt = make()
    for _ in range(3):
        opt.zero_grad()
        opt.step(_quadratic(w))
    saved_w, saved = w.detach().clone(), copy.deepcopy(opt.state_dict())
    for _ in range(4):
        opt.zero_grad()
        opt.step(_quadratic(w))
    w2, opt2 = make()
    with torch.no_grad():
        w2.copy_(saved_w)
    opt2.load_state_dict(saved)
    for _ in range(4):
        opt2.zero_grad()
        opt2.step(_quadratic(w2))
    assert torch.equal(w, w2)
    assert opt2.sam.policy.state_dict() == opt.sam.policy.state_dict()


def test_plain_sam_shares_param_groups_with_base_so_schedulers_drive_it() -> None:
    w = torch.zeros(2, requires_grad=True)
    base = torch.optim.SGD([w], lr=1.0)
    opt = hf_adasam.SAM(base)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.zero_grad()
    opt.step(lambda: (w.sum() + 1).backward())
    sched.step()
    assert base.param_groups[0]["lr"] == 0.5


def test_plain_sam_without_closure_says_what_to_do() -> None:
    opt = hf_adasam.SAM(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"rho": -0.1}, "rho"), ({"eta": -1.0}, "eta"), ({"policy": "sometimes"}, "policy"),
     ({"policy": "ae", "ae_delta": 1.0}, "ae_delta"), ({"policy": "looksam", "looksam_k": 0}, "looksam_k"),
     ({"policy": "looksam", "looksam_alpha": -1.0}, "looksam_alpha")],
)
def test_invalid_sam_knobs_raise_value_error_naming_them(kw, name) -> None:
    with pytest.raises(ValueError, match=name):
        hf_adasam.SAM(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), **kw)
