"""Generic Adam (docs/algorithms.md#generic-adam, docs/theory.md): the optimizer, the sufficient-condition checker
and Reddi's counterexample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_adasam.generic_adam_theory import (
    check_sufficient_condition,
    generic_adam_schedules,
    polynomial_rate,
    reddi_counterexample,
)
from hf_adasam.optim.generic_adam import GenericAdam, alpha_schedule, theta_schedule

IMPLS = ["single", "foreach"]
SHAPES = [(3, 2), (4,), (1,)]


# ----------------------------------------------------------------------------------------------
# the optimizer
# ----------------------------------------------------------------------------------------------
def _problem(seed: int = 0, steps: int = 6) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    x0 = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]
    return x0, grads


def _run_library(x0: list[np.ndarray], grads: list[list[np.ndarray]], **kw) -> list[np.ndarray]:
    params = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in x0]
    opt = GenericAdam(params, **kw)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return [p.detach().numpy() for p in params]


def _reference(x0, grads, *, lr, beta, theta, theta_power=0.0, lr_power=0.0, eps=1e-8, weight_decay=0.0):
    """docs/algorithms.md#generic-adam written out in float64 numpy, with beta/theta constants or callables of t."""
    xs = [x.copy() for x in x0]
    ms = [np.zeros_like(x) for x in x0]
    vs = [np.full_like(x, eps) for x in x0]
    for t, gs in enumerate(grads, start=1):
        a_t = lr / t**lr_power
        th_t = theta(t) if callable(theta) else 1 - (1 - theta) / t**theta_power
        b_t = beta(t) if callable(beta) else beta
        for i, g in enumerate(gs):
            vs[i] = th_t * vs[i] + (1 - th_t) * g**2
            ms[i] = b_t * ms[i] + (1 - b_t) * g
            xs[i] = xs[i] * (1 - a_t * weight_decay) - a_t * ms[i] / np.sqrt(vs[i])
    return xs


def _assert_close(a: list[np.ndarray], b: list[np.ndarray], rtol: float = 1e-10) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_first_reddi_adam_step_matches_spec_vector_float64(impl: str) -> None:
    # docs/theory.md#tests: x_1 = 0, g = C = 3, beta1 = 0, beta2 = 0.1, alpha_1 = 0.5 -> x = -0.527046
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = GenericAdam([x], lr=0.5, beta=0.0, theta=0.1, lr_power=0.5, impl=impl)
    x.grad = torch.tensor([3.0], dtype=torch.float64)
    opt.step()
    assert x.item() == pytest.approx(-0.527046, rel=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_constant_beta_theta_is_adam_without_bias_correction_eps_seeded_in_v(impl: str) -> None:
    x0, grads = _problem()
    got = _run_library(x0, grads, lr=0.01, beta=0.9, theta=0.999, impl=impl)
    # Adam, no bias correction, eps only as v_0, written independently of the schedule formulas
    xs, ms, vs = [x.copy() for x in x0], [np.zeros_like(x) for x in x0], [np.full_like(x, 1e-8) for x in x0]
    for gs in grads:
        for i, g in enumerate(gs):
            ms[i] = 0.9 * ms[i] + 0.1 * g
            vs[i] = 0.999 * vs[i] + 0.001 * g * g
            xs[i] = xs[i] - 0.01 * ms[i] / np.sqrt(vs[i])
    _assert_close(got, xs)


@pytest.mark.parametrize("impl", IMPLS)
def test_adagrad_special_case_is_lr_times_g_over_root_sum_of_squares(impl: str) -> None:
    x0, grads = _problem(seed=1)
    got = _run_library(x0, grads, lr=0.1, beta=0.0, theta=0.0, theta_power=1.0, lr_power=0.5, impl=impl)
    # theta_t = 1 - 1/t makes v_t the mean of g^2, and alpha/sqrt(t) / sqrt(mean) = alpha / sqrt(sum)
    xs, acc = [x.copy() for x in x0], [np.zeros_like(x) for x in x0]
    for gs in grads:
        for i, g in enumerate(gs):
            acc[i] += g * g
            xs[i] = xs[i] - 0.1 * g / np.sqrt(acc[i])
    _assert_close(got, xs)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_reference_with_all_schedules_and_weight_decay(impl: str) -> None:
    x0, grads = _problem(seed=2, steps=8)
    kw = dict(lr=0.05, beta=0.8, theta=0.3, theta_power=0.7, lr_power=0.3, eps=1e-6, weight_decay=0.1)
    _assert_close(_run_library(x0, grads, impl=impl, **kw), _reference(x0, grads, **kw))


@pytest.mark.parametrize("impl", IMPLS)
def test_callable_beta_and_theta_are_evaluated_each_step(impl: str) -> None:
    x0, grads = _problem(seed=3, steps=7)
    kw = dict(lr=0.02, beta=lambda t: 0.9 * (1 - 0.5**t), theta=lambda t: 1 - 1 / (t + 1))
    _assert_close(_run_library(x0, grads, impl=impl, **kw), _reference(x0, grads, **kw))


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_gradient_when_theta_1_is_zero_gives_zero_step_not_nan(impl: str) -> None:
    # AdaGrad's theta_1 = 0 wipes the eps seed: a zero gradient would be 0/0 in the bare formula
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = GenericAdam([x], lr=0.1, beta=0.0, theta=0.0, theta_power=1.0, impl=impl)
    x.grad = torch.tensor([0.0, 4.0], dtype=torch.float64)
    opt.step()
    assert x.tolist() == [1.0, pytest.approx(1.9)]


def test_schedules_follow_spec_formulas() -> None:
    t = np.arange(1, 6, dtype=np.float64)
    np.testing.assert_allclose(theta_schedule(t, 0.0, 1.0), 1 - 1 / t)
    np.testing.assert_allclose(theta_schedule(t, 0.1, 1.0), 1 - 0.9 / t)
    np.testing.assert_allclose(alpha_schedule(t, 0.5, 0.5), 0.5 / np.sqrt(t))
    assert theta_schedule(1, 0.1, 1.0) == 0.1  # theta_1 = theta exactly
    assert theta_schedule(7, 0.3, 0.0) == 0.3  # theta_power = 0: constant theta exactly


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(lr=-1e-3), "lr"),
        (dict(beta=1.0), "beta"),
        (dict(beta=-0.1), "beta"),
        (dict(theta=1.0), "theta"),
        (dict(theta=-0.5), "theta"),
        (dict(theta_power=-1.0), "theta_power"),
        (dict(lr_power=-0.5), "lr_power"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(theta=lambda t: 1 - 1 / t, theta_power=1.0), "theta_power"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        GenericAdam([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(("kwargs", "name"), [(dict(beta=lambda t: 1.0), "beta"), (dict(theta=lambda t: 1.0), "theta")])
def test_callable_schedule_out_of_range_raises_at_step(kwargs: dict, name: str) -> None:
    x = torch.zeros(2, requires_grad=True)
    opt = GenericAdam([x], **kwargs)
    x.grad = torch.ones(2)
    with pytest.raises(ValueError, match=name):
        opt.step()


# ----------------------------------------------------------------------------------------------
# the sufficient-condition checker
# ----------------------------------------------------------------------------------------------
def test_ratio_4_matches_spec_figures_for_sqrt_lr_and_theta_1_minus_0_9_over_t() -> None:
    report = check_sufficient_condition(lambda t: 0.5 / np.sqrt(t), lambda t: 1 - 0.9 / t, 0.9)
    np.testing.assert_allclose(report.step_sum.figures["ratio"], [0.225, 0.093, 0.036], atol=1e-3)
    assert report.step_sum.holds
    assert report.all_hold


def test_constant_theta_ratio_approaches_spec_limit_and_condition_4_fails() -> None:
    report = check_sufficient_condition(lambda t: 0.5 / math.sqrt(t), 0.999, 0.9)  # scalar-only callable
    ratio = report.step_sum.figures["ratio"]
    assert ratio[-1] == pytest.approx(0.0631, abs=1e-4)
    assert ratio[0] < ratio[1] < ratio[2] < 2 * math.sqrt(1e-3)
    assert not report.step_sum.holds
    assert not report.all_hold
    assert report.momentum.holds and report.second_moment.holds and report.chi.holds


def test_condition_4_extrapolation_catches_a_ratio_still_falling_at_the_horizon() -> None:
    # theta_t = 1 - 1/t until it reaches 0.999, then constant: R(T) still falls at 1e5 but tends to 0.0632
    report = check_sufficient_condition(lambda t: 0.5 / np.sqrt(t), lambda t: np.minimum(0.999, 1 - 1 / t), 0.9)
    ratio = report.step_sum.figures["ratio"]
    assert ratio[0] > ratio[1] > ratio[2]
    assert report.step_sum.figures["limit_estimate"] == pytest.approx(2 * math.sqrt(1e-3), rel=1e-2)
    assert not report.step_sum.holds


def test_adagrad_schedules_satisfy_every_condition() -> None:
    alpha, theta = generic_adam_schedules(lr=0.1, theta=0.0, theta_power=1.0, lr_power=0.5)
    report = check_sufficient_condition(alpha, theta, 0.0)
    assert report.all_hold
    assert report.chi.figures["chi_ratio"] == pytest.approx((1.0, 1.0, 1.0))


def test_condition_1_fails_for_momentum_outside_0_1() -> None:
    assert not check_sufficient_condition(0.1, 0.999, lambda t: 1.0 - 1.0 / (t + 1) ** 2).momentum.holds
    assert not check_sufficient_condition(0.1, 0.999, -0.1).momentum.holds
    assert check_sufficient_condition(0.1, 0.999, 0.99).momentum.holds
    assert check_sufficient_condition(0.1, 0.999, lambda t: 0.9 - 0.5 / t).momentum.holds  # sup 0.9, approached


def test_condition_2_fails_for_decreasing_theta_or_beta_squared_above_its_limit() -> None:
    assert not check_sufficient_condition(0.1, lambda t: 0.9 + 0.09 / t, 0.0).second_moment.holds
    report = check_sufficient_condition(0.1, 0.9, 0.99)
    assert report.second_moment.figures["beta_sq"] > report.second_moment.figures["theta_limit"]
    assert not report.second_moment.holds
    assert check_sufficient_condition(0.1, 0.99, 0.9).second_moment.holds


def test_condition_3_fails_when_r_exceeds_2s_and_holds_otherwise() -> None:
    # chi_t = t^(r/2 - s) / sqrt(theta): grows for r > 2s
    grows = check_sufficient_condition(lambda t: t**-0.3, lambda t: 1 - 0.5 / t**0.8, 0.9)
    assert grows.chi.figures["chi_ratio"][-1] == pytest.approx(1e5**0.1, rel=1e-6)
    assert not grows.chi.holds
    assert check_sufficient_condition(lambda t: t**-0.5, lambda t: 1 - 0.5 / t**0.8, 0.9).chi.holds


def test_report_prints_one_row_per_condition() -> None:
    text = str(check_sufficient_condition(lambda t: 0.5 / np.sqrt(t), 0.999, 0.9))
    for tag in ("(1)", "(2)", "(3)", "(4)", "FAILS", "0.0630997"):
        assert tag in text


def test_polynomial_family_rate_and_condition() -> None:
    assert polynomial_rate(0.5, 1.0).holds and polynomial_rate(0.5, 1.0).rate_exponent == 0.5
    assert polynomial_rate(0.9, 1.0).rate_exponent == pytest.approx(0.1)
    assert polynomial_rate(0.5, 0.4).rate_exponent == pytest.approx(0.2)
    assert not polynomial_rate(0.5, 1.5).holds  # r > 2s
    assert not polynomial_rate(0.5, 0.0).holds  # r = 0: constant theta
    assert not polynomial_rate(1.0, 1.0).holds  # 2s = 2
    assert "O(T^-0.5)" in str(polynomial_rate(0.5, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(horizons=(1000, 10000)), "horizons"),
        (dict(horizons=(10, 10, 100)), "horizons"),
        (dict(limit_tol=1.0), "limit_tol"),
    ],
)
def test_checker_rejects_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        check_sufficient_condition(0.1, 0.999, 0.9, **kwargs)


# ----------------------------------------------------------------------------------------------
# Reddi et al.'s counterexample
# ----------------------------------------------------------------------------------------------
def test_reddi_counterexample_matches_spec_figures() -> None:
    result = reddi_counterexample()
    assert result.adam[0] == 0.0 and len(result.adam) == 30_001
    assert result.adam[1] == pytest.approx(-0.527046, rel=1e-5)
    assert result.final["adam"] == 1.0
    assert result.final["amsgrad"] == pytest.approx(-0.998, abs=1e-3)
    assert result.final["generic"] == pytest.approx(-0.997, abs=1e-3)


def test_reddi_python_trajectories_are_the_library_optimizers() -> None:
    fast = reddi_counterexample(steps=300)
    lib = reddi_counterexample(steps=300, backend="torch")
    for name in ("adam", "amsgrad", "generic"):
        np.testing.assert_allclose(getattr(fast, name), getattr(lib, name), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [(dict(steps=0), "steps"), (dict(beta2=1.0), "beta2"), (dict(x0=2.0), "x0"), (dict(backend="jax"), "backend")],
)
def test_reddi_rejects_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        reddi_counterexample(**kwargs)
